"""The API's routes, on one :class:`fastapi.APIRouter`.

Routes are module-level functions: what they serve (the runs, the limits, the stream workers and
slots: :class:`Served`) is kept on ``app.state.served`` by :func:`rnnkit.serve.app.create_app` and
reaches each route through the :func:`served` dependency. Rules:

- checks come before any model work, cheapest first: the run's name (404), the limits (413), the
  settings and the text (422), and last a stream slot (429), taken only when the stream will start;
- model calls run in worker threads, never on the event loop: ``score`` and ``activations`` are
  plain ``def`` routes, which FastAPI runs in its thread pool, together with the check of their
  (large) response against its schema; generation runs in its run's :class:`StreamBatcher`;
- each route declares its response body (:mod:`rnnkit.serve.schemas`) and its error responses, so
  ``/openapi.json`` describes them all.
"""

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from rnnkit.generate import Sampling, check_seed
from rnnkit.serve.analysis import activations, score
from rnnkit.serve.errors import Failure
from rnnkit.serve.limits import Limits
from rnnkit.serve.runs import ServedRun
from rnnkit.serve.schemas import (
    ERROR_RESPONSES,
    GENERATE_RESPONSES,
    ActivationsRequest,
    ActivationsResult,
    RunInfo,
    ScoreResult,
    TextRequest,
)
from rnnkit.serve.streams import GenerationJob, Stream, StreamBatcher, StreamSlots, stream_events

router = APIRouter()


@dataclass
class Served:
    """What the routes serve: the runs by name, the limits, one stream worker per run and the slots
    of the streams open at once."""

    runs: dict[str, ServedRun]
    limits: Limits
    batchers: dict[str, StreamBatcher]
    slots: StreamSlots

    @classmethod
    def of(cls, runs: dict[str, ServedRun], limits: Limits) -> "Served":
        return cls(
            runs, limits, {name: StreamBatcher(run) for name, run in runs.items()}, StreamSlots(limits.max_streams)
        )

    def run(self, name: str) -> ServedRun:
        """The run called ``name``; 404 for another name."""
        if name not in self.runs:
            raise Failure(404, f"unknown run {name!r} (served: {', '.join(self.runs)})")
        return self.runs[name]

    def bounded_text(self, text: str, what: str) -> str:
        """``text``, unless it is longer than the limit (413)."""
        if len(text) > self.limits.max_text:
            raise Failure(413, f"{what} has {len(text)} characters; this server takes at most {self.limits.max_text}")
        return text


async def served(request: Request) -> Served:
    """The dependency that hands each route what the app serves."""
    return request.app.state.served


State = Annotated[Served, Depends(served)]


@router.get("/api/runs", response_model=list[RunInfo])
def list_runs(state: State) -> list[dict]:
    """The served runs: name, corpus, model, parameters, validation ppl/bpc, vocabulary."""
    return [run.info for run in state.runs.values()]


@router.get("/api/generate", responses=GENERATE_RESPONSES)
async def generate_stream(
    state: State,
    run: str,
    prefix: str = "",
    n: int = Query(200, ge=0),
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    alpha: float = 1.0,
    seed: int | None = None,
    greedy: bool = False,
) -> Stream:
    """Server-sent events: ``start`` (the prefix as read), one ``data`` event per generated
    character ``{"char", "p", "top"}``, then ``done`` (or ``error``)."""
    served_run = state.run(run)
    if n > state.limits.max_chars:
        raise Failure(413, f"n={n} exceeds this server's limit of {state.limits.max_chars} characters per stream")
    sampling = Sampling(greedy, temperature, top_k, top_p, alpha)
    sampling.validate()
    check_seed(seed)
    text, _, prefix_ids, unknown = served_run.encode(state.bounded_text(prefix, "prefix"), "prefix")
    slot = state.slots.take()
    if slot is None:
        raise Failure(429, f"{state.limits.max_streams} streams are open already (the server's limit); try again")
    job = GenerationJob(prefix_ids, n, sampling, seed, asyncio.get_running_loop())
    start = {"run": run, "prefix": text, "unknown": unknown, "n": n, "seed": seed}
    return Stream(stream_events(job, state.batchers[run], start), slot, headers={"Cache-Control": "no-store"})


@router.post("/api/score", response_model=ScoreResult, responses=ERROR_RESPONSES)
def score_text(body: TextRequest, state: State) -> dict:
    """Per character log-probability, surprisal (bits), rank and top alternatives; total ppl, bpc, tokens."""
    return score(state.run(body.run), state.bounded_text(body.text, "text"))


@router.post("/api/activations", response_model=ActivationsResult, responses=ERROR_RESPONSES)
def activations_of(body: ActivationsRequest, state: State) -> dict:
    """Hidden (and LSTM cell) state per character of one layer, ``[T x units]``, with per-unit statistics."""
    return activations(state.run(body.run), state.bounded_text(body.text, "text"), body.layer)
