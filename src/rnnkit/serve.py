"""``rnnkit serve``: an HTTP API and a playground page for trained runs.

The API (FastAPI, served by uvicorn; the ``serve`` extra) answers JSON, streams generation as
server-sent events, and serves the page in ``rnnkit/static/`` under a ``default-src 'self'``
content security policy. Each run is loaded once, at start-up, from a consistent checkpoint
(a save that lands meanwhile is retried); restart the server to serve newer weights.

Model calls run in worker threads, never on the event loop. Limits (prompt and text length,
characters per stream, concurrent streams, body size) keep one client from taking the machine;
every bad request is a 4xx with ``{"error": ...}``.
"""

import asyncio
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit.errors import RnnkitError
from rnnkit.generate import Sampling, check_seed
from rnnkit.models import RNNLM, join_states, layer_states, split_state, state_batch_dim
from rnnkit.text import Vocab, preprocess, tokenize
from rnnkit.evaluate import bits_per_token, characters_predicted, perplexity, stream_nll
from rnnkit.train import TrainConfig

STATIC = Path(__file__).with_name("static")
TOP = 5  # alternatives reported per character
LOAD_TRIES = 5  # a save landing while a run loads is retried this often
FLUSH_S = 0.005  # generated characters reach their streams at least this often


@dataclass
class Limits:
    """What one request may ask for."""

    max_chars: int = 2000  # characters per generation stream
    max_text: int = 20000  # characters of a prefix, a scored text or an activations text
    max_streams: int = 16  # generation streams at once
    max_body: int = 1 << 20  # bytes of a request body


@dataclass
class ServedRun:
    """One run as served: its model, vocabulary and what the page shows about it."""

    name: str
    run_dir: Path
    model: RNNLM
    vocab: Vocab
    config: TrainConfig
    checkpoint: str  # best or last
    info: dict

    def encode(self, text: str, what: str) -> tuple[str, list[str], list[int], list[str]]:
        """(text as training read it, its tokens, their ids, tokens read as ``<unk>``); refuses
        characters the vocabulary cannot read at all. A word model's text comes back as its words
        joined by spaces."""
        text = preprocess(text, self.config.preprocess)
        tokens = tokenize(text, self.config.tokens)
        if self.config.tokens == "word":
            text = " ".join(tokens)
        unknown = self.vocab.unknown(tokens)
        if unknown and self.vocab.unk_token is None:
            raise RnnkitError(f"{what} has characters run {self.name!r} cannot read: "
                              f"{''.join(repr(t) for t in unknown[:20])}")
        return text, tokens, [self.vocab[t] for t in tokens], unknown

    def shown(self, index: int, first: bool = False) -> str:
        """The text a generated token adds: a character as it is, a word with the space before it."""
        return self.piece(self.vocab.idx_to_token[index], first)

    def piece(self, token: str, first: bool = False) -> str:
        """A word with the space before it (none first); a character or a byte as it is (a byte
        token is shown as the character of its code: bytes of UTF-8 characters appear one by one)."""
        return " " + token if self.config.tokens == "word" and not first else token

    def pieces(self, tokens: list[str]) -> list[str]:
        """The text of each of an encoded text's ``tokens``, as written (a word read as ``<unk>``
        keeps its spelling); joined, they give the text."""
        return [self.piece(t, i == 0) for i, t in enumerate(tokens)]


def load_served_run(run_dir: str | Path, checkpoint: str | None, name: str) -> ServedRun:
    """Load a run for serving (the best checkpoint where kept, unless ``checkpoint`` says).

    A save in progress can replace the files between reading ``config.json`` and the weights; the
    load then refuses the mixture, and is tried again (the directory's commit point guarantees a
    consistent checkpoint at every instant)."""
    from rnnkit.checkpoint import load_run, read_config

    run_dir = Path(run_dir)
    for attempt in range(LOAD_TRIES):
        meta = read_config(run_dir)
        choice = checkpoint or ("best" if meta.get("best") else "last")
        try:
            model, vocab, config, meta = load_run(run_dir, checkpoint=choice)
            break
        except RnnkitError:
            if attempt == LOAD_TRIES - 1 or read_config(run_dir).get("checkpoint") == meta.get("checkpoint"):
                raise  # not a save landing meanwhile: a real problem
            time.sleep(0.1)
    model.requires_grad_(False)
    best = meta.get("best")
    if choice == "best":
        val_loss = best["val_loss"]
    else:
        val_loss = last_val_loss(run_dir)
    info = {
        "name": name, "run_dir": str(run_dir), "checkpoint": choice, "checkpoint_id": meta.get("checkpoint"),
        "corpus": str(config.corpus), "model": config.model, "hidden": config.hidden, "layers": config.layers,
        "embedding": config.embedding, "activation": config.activation, "preprocess": config.preprocess,
        "tokens": config.tokens,
        "parameters": sum(p.numel() for p in model.parameters()), "epoch": meta.get("epoch"),
        "val_ppl": None if val_loss is None else perplexity(val_loss, 1),
        "val_bpc": None if val_loss is None else bits_per_token(val_loss, 1),
        "vocab": vocab.idx_to_token, "unk_token": vocab.unk_token,
    }
    return ServedRun(name, run_dir, model, vocab, config, choice, info)


def last_val_loss(run_dir: Path) -> float | None:
    """Validation loss (nats per token) of the last epoch in ``metrics.jsonl``, if any."""
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        ppl = rows[-1].get("val_ppl") if rows and isinstance(rows[-1], dict) else None
        return math.log(ppl) if isinstance(ppl, (int, float)) and ppl > 0 else None
    except (OSError, ValueError):
        return None


def load_runs(run_dirs: list[str], checkpoint: str | None = None) -> dict[str, ServedRun]:
    """Runs by name (the directory's name; a repeated name gets ``-2``, ``-3``...)."""
    runs: dict[str, ServedRun] = {}
    for run_dir in run_dirs:
        base = Path(run_dir).resolve().name or "run"
        name = base
        for i in itertools.count(2):
            if name not in runs:
                break
            name = f"{base}-{i}"
        runs[name] = load_served_run(run_dir, checkpoint, name)
    return runs


class GenerationJob:
    """One generation stream inside a :class:`StreamBatcher`: its sampling settings, random
    generator, model state and the logits its next character is chosen from. The event loop reads
    its server-sent events (bytes) from ``queue``; ``None`` ends them."""

    def __init__(self, prefix_ids: list[int], n: int, sampling: Sampling, seed: int | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.prefix_ids, self.n, self.sampling, self.seed = prefix_ids, n, sampling, seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.loop, self.queue = loop, asyncio.Queue()
        self.state, self.logits, self.next_token, self.produced, self.cancelled = None, None, 0, 0, False


class StreamBatcher:
    """Generates every stream of one run in one worker thread, one character per stream per round.

    Streams with a seed are stepped one by one (batch 1), exactly as ``rnnkit generate`` steps
    them, so that a seed gives the same text. Streams without a seed are stepped together as one
    batch ``(B, 1)``: one forward pass for all of them, which is what lets a 2-core machine serve
    many streams (a step of the book's model costs about the same for 16 rows as for one). Batched
    rows can differ from a batch of one in the last bits of their logits; only seeded streams
    promise a reproducible text, and they are never batched."""

    def __init__(self, run: ServedRun) -> None:
        from fastapi.sse import format_sse_event

        self.run, self.sse = run, format_sse_event
        self.batch_dim = state_batch_dim(run.model)
        self.lean_step = run.model.lean_step()  # the book's model: rnnkit generate's step
        self.new: list[GenerationJob] = []
        self.active: list[GenerationJob] = []
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, job: GenerationJob) -> None:
        with self.wake:
            self.new.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name=f"rnnkit-generate-{self.run.name}", daemon=True)
                self.thread.start()
            self.wake.notify()

    def _work(self) -> None:
        """Rounds while there are streams. Events are handed over every ``FLUSH_S`` seconds (a stream's
        first character and its end at once): one wake-up of a stream per few characters, not per
        character, is what keeps the event loop's share of the CPU small."""
        out, flushed = [], time.perf_counter()
        with torch.inference_mode():
            while True:
                with self.wake:
                    if not self.new and not self.active:
                        deliver(out)
                        out = []
                        while not self.new and not self.active:
                            self.wake.wait()
                    new, self.new = self.new, []
                for job in new:  # read the prefix: the same call as rnnkit generate's
                    job.logits, job.state = (self._step([job.prefix_ids], [None]) if job.prefix_ids
                                             else ([self.run.model.initial_logits()], [None]))
                    job.logits, job.state = job.logits[0], job.state[0]
                self.active += new
                ended = self._round(out)
                if new or ended or time.perf_counter() - flushed >= FLUSH_S:
                    deliver(out)
                    out, flushed = [], time.perf_counter()

    def _step(self, ids: list[list[int]], states: list) -> tuple[list[torch.Tensor], list]:
        """Feed ``ids`` (one list per stream) from ``states``; logits (V,) and state per stream."""
        if len(ids) == 1:  # as rnnkit generate steps: the same numbers, so a seed gives the same text
            if self.lean_step is not None:
                logits, state = self.lean_step(ids[0], states[0])
                return [logits], [state]
            logits, state = self.run.model(torch.tensor(ids, dtype=torch.int64), states[0])
            return [logits[-1, 0]], [state]
        X = torch.tensor(ids, dtype=torch.int64)
        logits, state = self.run.model(X, join_states(states, self.batch_dim))
        return list(logits[-1]), split_state(state, self.batch_dim)

    def _round(self, out: list) -> bool:
        """Each active stream gets its next character (appended to ``out`` as ``(job, event bytes)``,
        ``(job, None)`` at its end); then the unfinished ones step once. Returns whether one ended."""
        vocab, ended = self.run.vocab, False
        live = [job for job in self.active if not job.cancelled]
        if not live:
            self.active = []
            return False
        logits = torch.stack([job.logits for job in live])  # (B, V)
        tokens: dict[int, int | RnnkitError] = {}
        groups: dict[tuple, list[int]] = {}
        for row, job in enumerate(live):
            if job.seed is not None:  # its own generator, one row: as rnnkit generate draws
                try:
                    tokens[row] = job.sampling.choose(job.logits, job.generator)
                except RnnkitError as exc:
                    tokens[row] = exc
            else:
                groups.setdefault(job.sampling.key(), []).append(row)
        for rows in groups.values():  # streams without a seed and with equal settings: one draw
            try:
                tokens.update(zip(rows, live[rows[0]].sampling.choose_rows(logits[rows]), strict=True))
            except RnnkitError as exc:
                tokens.update((row, exc) for row in rows)
        probs = torch.softmax(logits.double(), dim=-1)  # the model's own distribution, for the client
        top_p, top_i = (t.tolist() for t in torch.topk(probs, min(TOP, probs.shape[1]), dim=1))
        chosen = [t if isinstance(t, int) else 0 for t in (tokens[row] for row in range(len(live)))]
        chosen_p = probs[torch.arange(len(live)), torch.tensor(chosen)].tolist()
        stepping = []
        for row, job in enumerate(live):
            token = tokens[row]
            if isinstance(token, RnnkitError):
                out.append((job, self.sse(event="error", data_str=json.dumps({"error": str(token)}))))
                out.append((job, None))
                job.cancelled = ended = True
                continue
            job.produced += 1
            top = alternatives(vocab.idx_to_token, top_p[row], top_i[row])
            event = {"char": self.run.shown(token), "p": round(chosen_p[row], 6), "top": top}
            out.append((job, self.sse(data_str=json.dumps(event, ensure_ascii=False))))
            if job.produced == job.n:
                out.append((job, None))
                job.cancelled = ended = True
            else:
                job.next_token = token
                stepping.append(job)
        self.active = stepping
        seeded = [job for job in stepping if job.seed is not None]
        batched = [job for job in stepping if job.seed is None]
        for group in [[job] for job in seeded] + ([batched] if batched else []):
            logits, states = self._step([[job.next_token] for job in group], [job.state for job in group])
            for job, row_logits, row_state in zip(group, logits, states, strict=True):
                job.logits, job.state = row_logits, row_state
        return ended


def deliver(out: list) -> None:
    """Hand each job's events to its event loop (one wake-up per loop)."""
    by_loop: dict = {}
    for job, item in out:
        by_loop.setdefault(job.loop, []).append((job.queue, item))

    def put_all(items) -> None:
        for queue, item in items:
            queue.put_nowait(item)

    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(put_all, items)
        except RuntimeError:  # the loop has closed: the server is stopping
            pass


def alternatives(idx_to_token: list[str], probs: list[float], ids: list[int]) -> list[list]:
    """``[[token, probability], ...]`` of a row of top-k probabilities and their token ids."""
    return [[idx_to_token[i], round(p, 6)] for p, i in zip(probs, ids, strict=True)]


def score(run: ServedRun, text: str) -> dict:
    """Per character: log-probability (nats), surprisal (bits), rank and top alternatives given all
    the text before it; totals equal to ``rnnkit eval`` on the same text (the first character has
    no prediction)."""
    text, token_list, ids, unknown = run.encode(text, "text")
    if len(ids) < 2:
        raise RnnkitError("text must have at least 2 characters to score")
    tokens = torch.tensor(ids, dtype=torch.int64)
    nll, count = stream_nll(run.model, tokens)  # the totals exactly as rnnkit eval computes them
    with torch.inference_mode():
        logits, _ = run.model(tokens[:-1].view(1, -1))
        logp = torch.log_softmax(logits[:, 0].double(), dim=-1)  # (T-1, V): prediction of token t+1
    targets = tokens[1:]
    chosen = logp.gather(1, targets.view(-1, 1)).squeeze(1)
    ranks = (logp > chosen.unsqueeze(1)).sum(1) + 1
    top_p, top_i = torch.topk(logp.exp(), min(TOP, logp.shape[1]), dim=1)
    pieces = run.pieces(token_list)
    chars = [{"char": pieces[0], "logp": None, "bits": None, "rank": None, "top": None}]
    for piece, lp, rank, tp, ti in zip(pieces[1:], chosen.tolist(), ranks.tolist(), top_p.tolist(), top_i.tolist(),
                                       strict=True):
        chars.append({"char": piece, "logp": round(lp, 6), "bits": round(-lp / math.log(2), 6),
                      "rank": rank, "top": alternatives(run.vocab.idx_to_token, tp, ti)})
    bpc = bits_per_token(nll, characters_predicted(token_list, run.config.tokens))  # as rnnkit eval
    return {"run": run.name, "text": text, "unknown": unknown, "ppl": perplexity(nll, count),
            "bpc": bpc, "tokens": count, "nll": nll, "chars": chars}


def rounded(values: torch.Tensor, decimals: int = 4) -> list:
    """Nested lists of ``values`` rounded in double precision (short JSON numbers)."""
    return values.double().round(decimals=decimals).tolist()


def activations(run: ServedRun, text: str, layer: int | None) -> dict:
    """The hidden state (and an LSTM's cell state) of one layer after each character, ``[T x units]``,
    and per unit summary statistics for ranking units."""
    text, token_list, ids, unknown = run.encode(text, "text")
    if not ids:
        raise RnnkitError("text is empty")
    layers = run.config.layers if run.config.model != "scratch" else 1
    layer = layers - 1 if layer is None else layer
    if not 0 <= layer < layers:
        raise RnnkitError(f"layer must be between 0 and {layers - 1} for run {run.name!r}, got {layer}")
    h, c = layer_states(run.model, torch.tensor(ids, dtype=torch.int64))[layer]
    saturated = (h.abs() > 0.9).double().mean(0) if run.config.activation == "tanh" else (h == 0).double().mean(0)
    stats = [{"unit": i, "mean": round(m, 5), "std": round(s, 5), "min": round(lo, 5), "max": round(hi, 5),
              "saturated": round(f, 5)}
             for i, (m, s, lo, hi, f) in enumerate(zip(h.mean(0).tolist(), h.std(0, unbiased=False).tolist(),
                                                        h.min(0).values.tolist(), h.max(0).values.tolist(),
                                                        saturated.tolist(), strict=True))]
    return {"run": run.name, "text": text, "unknown": unknown, "layer": layer, "layers": layers,
            "units": h.shape[1], "chars": run.pieces(token_list),
            "saturation": "|h| > 0.9" if run.config.activation == "tanh" else "h = 0",
            "h": rounded(h), "c": None if c is None else rounded(c),
            "stats": stats}


class Guard:
    """ASGI middleware: every response gets ``Content-Security-Policy: default-src 'self'`` (the page
    may load nothing from elsewhere; a stray external request fails loudly) and ``nosniff``. A body
    whose declared length exceeds the limit is refused with 413 before it is read, and one without a
    declared length (chunked) with 411: the API's bodies are small JSON documents."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'"), (b"x-content-type-options", b"nosniff")]
    DOCS_HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:"),  # Swagger UI's icons
                    (b"x-content-type-options", b"nosniff")]

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"0")
        refusal = None
        if b"transfer-encoding" in headers:
            refusal = 411, "a request body must declare its length (Content-Length)"
        elif not declared.isdigit():
            refusal = 400, "malformed Content-Length"
        elif int(declared) > self.max_body:
            refusal = 413, f"request body of {int(declared)} bytes; this server takes at most {self.max_body}"
        if refusal:
            body = json.dumps({"error": refusal[1]}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": refusal[0], "headers": [*headers, *self.HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        headers = self.DOCS_HEADERS if scope["path"] == "/docs" else self.HEADERS

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(runs: dict[str, ServedRun], limits: Limits | None = None):
    """The FastAPI application serving ``runs``."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.sse import EventSourceResponse, format_sse_event
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    batchers = {name: StreamBatcher(run) for name, run in runs.items()}
    app = FastAPI(title="rnnkit", description="Character-level RNN language models: generate, score, look inside.",
                  docs_url=None, redoc_url=None)  # /docs: served below, no CDN
    streams = {"open": 0}

    class Failure(Exception):
        def __init__(self, status: int, message: str) -> None:
            super().__init__(message)
            self.status, self.message = status, message

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Failure)
    async def on_failure(request: Request, exc: Failure):
        return error(exc.status, exc.message)

    @app.exception_handler(RnnkitError)
    async def on_rnnkit_error(request: Request, exc: RnnkitError):
        return error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    app.add_middleware(Guard, max_body=limits.max_body)

    class Stream(EventSourceResponse):
        """An event stream that frees its slot however it ends (also when it never started: a client
        gone before the first byte)."""

        def __init__(self, content, release, **kwargs) -> None:
            super().__init__(content, **kwargs)
            self.release = release

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.release()

    def served(name: str) -> ServedRun:
        if name not in runs:
            raise Failure(404, f"unknown run {name!r} (served: {', '.join(runs)})")
        return runs[name]

    def bounded_text(text: str, what: str) -> str:
        if len(text) > limits.max_text:
            raise Failure(413, f"{what} has {len(text)} characters; this server takes at most {limits.max_text}")
        return text

    class ErrorBody(BaseModel):
        error: str = Field(description="what was wrong with the request, in one line")

    errors = {status: {"model": ErrorBody, "description": what} for status, what in (
        (404, "unknown run"), (413, "over a limit of this server"), (422, "invalid settings or text"),
        (429, "too many streams open"))}

    class TextRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        run: str
        text: str

    class ActivationsRequest(TextRequest):
        layer: int | None = Field(None, description="0-based; default the last layer")

    @app.get("/api/runs")
    def list_runs() -> list[dict]:
        """The served runs: name, corpus, model, parameters, validation ppl/bpc, vocabulary."""
        return [run.info for run in runs.values()]

    @app.get("/api/generate", responses={200: {"content": {"text/event-stream": {}},
                                               "description": "server-sent events"}, **errors})
    async def generate_stream(request: Request, run: str, prefix: str = "", n: int = Query(200, ge=0),
                              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, alpha: float = 1.0,
                              seed: int | None = None, greedy: bool = False):
        """Server-sent events: ``start`` (the prefix as read), one ``data`` event per generated
        character ``{"char", "p", "top"}``, then ``done`` (or ``error``)."""
        served_run = served(run)
        if n > limits.max_chars:
            raise Failure(413, f"n={n} exceeds this server's limit of {limits.max_chars} characters per stream")
        sampling = Sampling(greedy, temperature, top_k, top_p, alpha)
        sampling.validate()
        check_seed(seed)
        text, _, prefix_ids, unknown = served_run.encode(bounded_text(prefix, "prefix"), "prefix")
        if streams["open"] >= limits.max_streams:
            raise Failure(429, f"{limits.max_streams} streams are open already (the server's limit); try again")
        streams["open"] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released, streams["open"] = True, streams["open"] - 1

        job = GenerationJob(prefix_ids, n, sampling, seed, asyncio.get_running_loop())

        async def body():
            started, sent = time.perf_counter(), 0
            try:
                yield format_sse_event(event="start", data_str=json.dumps(
                    {"run": run, "prefix": text, "unknown": unknown, "n": n, "seed": seed}))
                if n:
                    batchers[run].submit(job)
                while n:
                    item = await job.queue.get()
                    if item is None:
                        break
                    parts = [item]
                    while not job.queue.empty() and parts[-1] is not None:  # what is ready, in one write
                        parts.append(job.queue.get_nowait())
                    if parts[-1] is None:
                        parts.pop()
                        sent += len(parts)
                        yield b"".join(parts)
                        break
                    sent += len(parts)
                    yield b"".join(parts)
                if sent == n:
                    yield format_sse_event(event="done", data_str=json.dumps(
                        {"chars": sent, "seconds": round(time.perf_counter() - started, 4)}))
            finally:
                job.cancelled = True  # a client gone away: the worker drops the stream at its next round

        return Stream(body(), release, headers={"Cache-Control": "no-store"})

    @app.post("/api/score", responses=errors)
    async def score_text(body: TextRequest) -> dict:
        """Per character log-probability, surprisal (bits), rank and top alternatives; total ppl, bpc, tokens."""
        served_run = served(body.run)
        return await run_in_threadpool(score, served_run, bounded_text(body.text, "text"))

    @app.post("/api/activations", responses=errors)
    async def activations_of(body: ActivationsRequest) -> dict:
        """Hidden (and LSTM cell) state per character of one layer, ``[T x units]``, with per-unit statistics."""
        served_run = served(body.run)
        return await run_in_threadpool(activations, served_run, bounded_text(body.text, "text"), body.layer)

    def static_file(name: str, media_type: str):
        path = STATIC / name

        async def serve_file():
            return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

        return serve_file

    pages = {"/": "index.html", "/docs": "docs.html"}
    for name, media_type in (("index.html", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css"),
                             ("docs.html", "text/html"), ("docs.js", "text/javascript"),
                             ("favicon.svg", "image/svg+xml")):
        path = next((p for p, n in pages.items() if n == name), f"/{name}")
        app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)(static_file(name, media_type))
    try:  # the API page's assets (Swagger UI), from the fastapi-offline package
        import importlib.resources

        from fastapi.staticfiles import StaticFiles

        assets = importlib.resources.files("fastapi_offline") / "static"
        app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")
    except (ImportError, RuntimeError):
        pass  # /docs then shows nothing; /openapi.json still describes the API

    return app


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8000, checkpoint: str | None = None,
          limits: Limits | None = None, threads: int = 1) -> None:
    """Load the runs, bind, say where, and serve until interrupted.

    ``threads``: PyTorch's intra-op threads for this process. One by default: a server's work is
    many small operations for requests that run side by side, and splitting each operation over
    threads costs more than it gains (measured: with two, 16 streams of the book's model got half
    the characters per second; scoring 20,000 characters with a 2x256 LSTM takes 2.1 s instead of
    1.4 s)."""
    torch.set_num_threads(threads)
    import socket

    try:
        import uvicorn
    except ImportError:
        raise RnnkitError("rnnkit serve needs FastAPI and uvicorn: pip install 'rnnkit[serve]'") from None
    runs = load_runs(run_dirs, checkpoint)
    app = create_app(runs, limits)
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise RnnkitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{r.name} ({r.checkpoint})" for r in runs.values())
    print(f"rnnkit: serving {names} at http://{shown}:{bound}/ (API docs at /docs; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
