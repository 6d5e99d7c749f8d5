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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit.errors import RnnkitError
from rnnkit.generate import Sampling, check_seed, generate_steps, model_step
from rnnkit.models import RNNLM, layer_states
from rnnkit.text import Vocab, preprocess, tokenize
from rnnkit.train import TrainConfig, bits_per_token, perplexity, stream_nll

STATIC = Path(__file__).with_name("static")
TOP = 5  # alternatives reported per character
LOAD_TRIES = 5  # a save landing while a run loads is retried this often


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

    def encode(self, text: str, what: str) -> tuple[str, list[int], list[str]]:
        """(text as training read it, token ids, characters read as ``<unk>``); refuses characters the
        vocabulary cannot read at all."""
        text = preprocess(text, self.config.preprocess)
        tokens = tokenize(text)
        unknown = self.vocab.unknown(tokens)
        if unknown and self.vocab.unk_token is None:
            raise RnnkitError(f"{what} has characters run {self.name!r} cannot read: "
                              f"{''.join(repr(t) for t in unknown[:20])}")
        return text, [self.vocab[t] for t in tokens], unknown


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


def top_alternatives(vocab: Vocab, probs: torch.Tensor, k: int = TOP) -> list[list]:
    """The ``k`` most likely tokens of ``probs`` (V,) as ``[[token, probability], ...]``."""
    values, indices = torch.topk(probs, min(k, probs.numel()))
    return [[vocab.idx_to_token[i], round(v, 6)] for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def generation_events(run: ServedRun, prefix_ids: list[int], n: int, sampling: Sampling,
                      seed: int | None) -> Iterator[dict]:
    """One dict per generated character: the character, its probability under the model and the
    model's top alternatives. Draws exactly what ``rnnkit generate`` draws for the same seed."""
    step = model_step(run.model, "cpu")
    with torch.inference_mode():
        for token, logits in generate_steps(step, prefix_ids, n, run.model.initial_logits(), sampling, seed):
            probs = torch.softmax(logits.double(), dim=-1)
            yield {"char": run.vocab.idx_to_token[token], "p": round(float(probs[token]), 6),
                   "top": top_alternatives(run.vocab, probs)}


def score(run: ServedRun, text: str) -> dict:
    """Per character: log-probability (nats), surprisal (bits), rank and top alternatives given all
    the text before it; totals equal to ``rnnkit eval`` on the same text (the first character has
    no prediction)."""
    text, ids, unknown = run.encode(text, "text")
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
    idx_to_token = run.vocab.idx_to_token
    chars = [{"char": idx_to_token[ids[0]], "logp": None, "bits": None, "rank": None, "top": None}]
    for lp, rank, tp, ti, target in zip(chosen.tolist(), ranks.tolist(), top_p.tolist(), top_i.tolist(),
                                        targets.tolist(), strict=True):
        chars.append({"char": idx_to_token[target], "logp": round(lp, 6), "bits": round(-lp / math.log(2), 6),
                      "rank": rank, "top": [[idx_to_token[i], round(p, 6)] for p, i in zip(tp, ti, strict=True)]})
    return {"run": run.name, "text": text, "unknown": unknown, "ppl": perplexity(nll, count),
            "bpc": bits_per_token(nll, count), "tokens": count, "nll": nll, "chars": chars}


def rounded(values: torch.Tensor, decimals: int = 4) -> list:
    """Nested lists of ``values`` rounded in double precision (short JSON numbers)."""
    return values.double().round(decimals=decimals).tolist()


def activations(run: ServedRun, text: str, layer: int | None) -> dict:
    """The hidden state (and an LSTM's cell state) of one layer after each character, ``[T x units]``,
    and per unit summary statistics for ranking units."""
    text, ids, unknown = run.encode(text, "text")
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
            "units": h.shape[1], "chars": [run.vocab.idx_to_token[i] for i in ids],
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
                                               "description": "server-sent events"}})
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
        text, prefix_ids, unknown = served_run.encode(bounded_text(prefix, "prefix"), "prefix")
        if streams["open"] >= limits.max_streams:
            raise Failure(429, f"{limits.max_streams} streams are open already (the server's limit); try again")
        streams["open"] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released, streams["open"] = True, streams["open"] - 1

        events = generation_events(served_run, prefix_ids, n, sampling, seed)

        def next_batch(first: bool) -> list[dict]:
            # one event first (time to first character), then up to ~20 ms of characters per thread hop
            batch, started = [], time.perf_counter()
            for event in events:
                batch.append(event)
                if first or len(batch) >= 256 or time.perf_counter() - started > 0.02:
                    break
            return batch

        async def body():
            started, sent = time.perf_counter(), 0
            try:
                yield format_sse_event(event="start", data_str=json.dumps(
                    {"run": run, "prefix": text, "unknown": unknown, "n": n, "seed": seed}))
                while sent < n:
                    try:
                        batch = await run_in_threadpool(next_batch, sent == 0)
                    except RnnkitError as exc:
                        yield format_sse_event(event="error", data_str=json.dumps({"error": str(exc)}))
                        return
                    if not batch:
                        break
                    sent += len(batch)
                    yield b"".join(format_sse_event(data_str=json.dumps(e, ensure_ascii=False)) for e in batch)
                yield format_sse_event(event="done", data_str=json.dumps(
                    {"chars": sent, "seconds": round(time.perf_counter() - started, 4)}))
            finally:
                events.close()

        return Stream(body(), release, headers={"Cache-Control": "no-store"})

    @app.post("/api/score")
    async def score_text(body: TextRequest) -> dict:
        """Per character log-probability, surprisal (bits), rank and top alternatives; total ppl, bpc, tokens."""
        served_run = served(body.run)
        return await run_in_threadpool(score, served_run, bounded_text(body.text, "text"))

    @app.post("/api/activations")
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
        app.get(path, include_in_schema=False)(static_file(name, media_type))
    try:  # the API page's assets (Swagger UI), from the fastapi-offline package
        import importlib.resources

        from fastapi.staticfiles import StaticFiles

        assets = importlib.resources.files("fastapi_offline") / "static"
        app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")
    except (ImportError, RuntimeError):
        pass  # /docs then shows nothing; /openapi.json still describes the API

    return app


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8000, checkpoint: str | None = None,
          limits: Limits | None = None) -> None:
    """Load the runs, bind, say where, and serve until interrupted."""
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
