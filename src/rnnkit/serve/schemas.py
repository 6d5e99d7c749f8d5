"""The API's request and response bodies, as pydantic models: ``/openapi.json`` (and the page at
``/docs``) describes every one of them.

Requests refuse unknown fields (a misspelt ``layr`` is an error, not a silently ignored option).
Responses are the dicts :mod:`rnnkit.serve.analysis` and :mod:`rnnkit.serve.runs` build, checked
against these models on the way out; the field order here is the order of the JSON. A generation
stream's events (``text/event-stream``) are described by :data:`GENERATE_RESPONSES`.
"""

from pydantic import BaseModel, ConfigDict, Field

Alternatives = list[tuple[str, float]]  # [[token, probability], ...], most likely first


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong with the request, in one line")


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    text: str


class ActivationsRequest(TextRequest):
    layer: int | None = Field(None, description="0-based; default the last layer")


class RunInfo(BaseModel):
    """A served run: where it comes from, its model, its validation score and its vocabulary."""

    name: str
    run_dir: str
    checkpoint: str = Field(description="best or last")
    checkpoint_id: str | None
    corpus: str
    model: str
    hidden: int
    layers: int
    embedding: int = Field(description="0: one-hot input")
    activation: str
    preprocess: str
    tokens: str = Field(description="char, word or bytes")
    parameters: int
    epoch: int | None
    val_ppl: float | None
    val_bpc: float | None = Field(description="bits per token")
    vocab: list[str]
    unk_token: str | None


class ScoredChar(BaseModel):
    """One token of a scored text; the first has no prediction (its numbers are null)."""

    char: str = Field(description="the text it adds (a word with the space before it)")
    logp: float | None = Field(description="log-probability given the text before it, nats")
    bits: float | None = Field(description="surprisal, bits")
    rank: int | None = Field(description="1: the model's most likely next token")
    top: Alternatives | None


class ScoreResult(BaseModel):
    run: str
    text: str = Field(description="the text as the run reads it (its preprocessing)")
    unknown: list[str] = Field(description="tokens read as <unk>")
    ppl: float
    bpc: float = Field(description="bits per character of the text (per byte for byte tokens)")
    tokens: int = Field(description="tokens predicted: all but the first")
    nll: float = Field(description="summed negative log-likelihood, nats")
    chars: list[ScoredChar]


class UnitStats(BaseModel):
    unit: int
    mean: float
    std: float
    min: float
    max: float
    saturated: float = Field(description="fraction of steps where the unit saturates (see saturation)")


class ActivationsResult(BaseModel):
    run: str
    text: str
    unknown: list[str]
    layer: int
    layers: int
    units: int
    chars: list[str]
    saturation: str = Field(description="what counts as saturated: |h| > 0.9 (tanh) or h = 0 (relu)")
    h: list[list[float]] = Field(description="hidden state after each token, [T x units]")
    c: list[list[float]] | None = Field(description="an LSTM's cell state after each token, [T x units]")
    stats: list[UnitStats]


class StartEvent(BaseModel):
    """``event: start``: the prefix as the run reads it."""

    run: str
    prefix: str
    unknown: list[str]
    n: int
    seed: int | None


class CharEvent(BaseModel):
    """An unnamed event per generated token."""

    char: str
    p: float = Field(description="the probability the model gave it")
    top: Alternatives


class DoneEvent(BaseModel):
    """``event: done``: every token was sent."""

    chars: int
    seconds: float


ERROR_RESPONSES = {
    status: {"model": ErrorBody, "description": what}
    for status, what in (
        (404, "unknown run"),
        (413, "over a limit of this server"),
        (422, "invalid settings or text"),
        (429, "too many streams open"),
    )
}

SSE_EVENT = {  # one server-sent event (OpenAPI 3.2's itemSchema for text/event-stream)
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["start", "done", "error"], "description": "absent for a generated token"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [model.model_json_schema() for model in (StartEvent, CharEvent, DoneEvent, ErrorBody)]
            },
        },
    },
}

GENERATE_RESPONSES = {
    200: {"content": {"text/event-stream": {"itemSchema": SSE_EVENT}}, "description": "server-sent events"},
    **ERROR_RESPONSES,
}
