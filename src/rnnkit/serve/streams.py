"""Generation streams: one worker thread per run steps every open stream of that run, and each
stream's characters reach its client as server-sent events.

Rules, and why:

- Model calls run in the run's worker thread (:class:`StreamBatcher`), never on the event loop:
  a forward pass would stall every other request.
- A stream with a seed is stepped alone (batch 1), exactly as ``rnnkit generate`` steps it, so a
  seed gives the same text in both. Streams without a seed are stepped together as one batch: one
  forward pass for all of them, which is what lets a 2-core machine serve many streams.
- Events reach the event loop every :data:`FLUSH_S` seconds, not per character: one wake-up of a
  stream per few characters keeps the loop's share of the CPU small.
- A stream holds one of ``Limits.max_streams`` slots (:class:`StreamSlots`) from its request until
  its response ends, however it ends (:class:`Stream`); a client that goes away stops its
  generation at the worker's next round.
"""

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

import torch
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.types import Receive, Scope, Send

from rnnkit.errors import RnnkitError
from rnnkit.generate import Sampling
from rnnkit.models import join_states, split_state, state_batch_dim
from rnnkit.serve.analysis import TOP, alternatives
from rnnkit.serve.runs import ServedRun

FLUSH_S = 0.005  # generated characters reach their streams at least this often


class GenerationJob:
    """One generation stream inside a :class:`StreamBatcher`: its sampling settings, random
    generator, model state and the logits its next character is chosen from. The event loop reads
    its server-sent events (bytes) from ``queue``; ``None`` ends them."""

    def __init__(
        self, prefix_ids: list[int], n: int, sampling: Sampling, seed: int | None, loop: asyncio.AbstractEventLoop
    ) -> None:
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
        self.run = run
        self.batch_dim = state_batch_dim(run.model)
        self.lean_step = run.model.lean_step()  # the book's model: rnnkit generate's step
        self.new: list[GenerationJob] = []
        self.active: list[GenerationJob] = []
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, job: GenerationJob) -> None:
        """Add a stream; the worker thread starts with the first one."""
        with self.wake:
            self.new.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, name=f"rnnkit-generate-{self.run.name}", daemon=True)
                self.thread.start()
            self.wake.notify()

    def _work(self) -> None:
        """Rounds while there are streams. Events are handed over every ``FLUSH_S`` seconds (a stream's
        first character and its end at once)."""
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
                    job.logits, job.state = (
                        self._step([job.prefix_ids], [None])
                        if job.prefix_ids
                        else ([self.run.model.initial_logits()], [None])
                    )
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
        live = [job for job in self.active if not job.cancelled]
        if not live:
            self.active = []
            return False
        logits = torch.stack([job.logits for job in live])  # (B, V)
        tokens = choose_tokens(live, logits)
        probs = torch.softmax(logits.double(), dim=-1)  # the model's own distribution, for the client
        top_p, top_i = (t.tolist() for t in torch.topk(probs, min(TOP, probs.shape[1]), dim=1))
        chosen = [t if isinstance(t, int) else 0 for t in (tokens[row] for row in range(len(live)))]
        chosen_p = probs[torch.arange(len(live)), torch.tensor(chosen)].tolist()
        stepping, ended = [], False
        for row, job in enumerate(live):
            token = tokens[row]
            if isinstance(token, RnnkitError):
                out.append((job, format_sse_event(event="error", data_str=json.dumps({"error": str(token)}))))
                out.append((job, None))
                job.cancelled = ended = True
                continue
            job.produced += 1
            top = alternatives(self.run.vocab.idx_to_token, top_p[row], top_i[row])
            event = {"char": self.run.shown(token), "p": round(chosen_p[row], 6), "top": top}
            out.append((job, format_sse_event(data_str=json.dumps(event, ensure_ascii=False))))
            if job.produced == job.n:
                out.append((job, None))
                job.cancelled = ended = True
            else:
                job.next_token = token
                stepping.append(job)
        self.active = stepping
        self._advance(stepping)
        return ended

    def _advance(self, stepping: list[GenerationJob]) -> None:
        """Feed each stream its chosen token: seeded streams one by one, the others as one batch."""
        seeded = [job for job in stepping if job.seed is not None]
        batched = [job for job in stepping if job.seed is None]
        for group in [[job] for job in seeded] + ([batched] if batched else []):
            logits, states = self._step([[job.next_token] for job in group], [job.state for job in group])
            for job, row_logits, row_state in zip(group, logits, states, strict=True):
                job.logits, job.state = row_logits, row_state


def choose_tokens(live: list[GenerationJob], logits: torch.Tensor) -> dict[int, int | RnnkitError]:
    """The next token of each row of ``logits`` (B, V), or the error its sampling settings raised.
    A seeded stream draws from its own generator, one row, as ``rnnkit generate`` draws; streams
    without a seed and with equal settings draw together."""
    tokens: dict[int, int | RnnkitError] = {}
    groups: dict[tuple, list[int]] = {}
    for row, job in enumerate(live):
        if job.seed is not None:
            try:
                tokens[row] = job.sampling.choose(job.logits, job.generator)
            except RnnkitError as exc:
                tokens[row] = exc
        else:
            groups.setdefault(job.sampling.key(), []).append(row)
    for rows in groups.values():
        try:
            tokens.update(zip(rows, live[rows[0]].sampling.choose_rows(logits[rows]), strict=True))
        except RnnkitError as exc:
            tokens.update((row, exc) for row in rows)
    return tokens


def deliver(out: list) -> None:
    """Hand each job's events to its event loop (one wake-up per loop)."""
    by_loop: dict = {}
    for job, item in out:
        by_loop.setdefault(job.loop, []).append((job.queue, item))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(put_all, items)
        except RuntimeError:  # the loop has closed: the server is stopping
            pass


def put_all(items: list) -> None:
    """On the event loop: put each ``(queue, item)``."""
    for queue, item in items:
        queue.put_nowait(item)


async def stream_events(job: GenerationJob, batcher: StreamBatcher, start: dict) -> AsyncIterator[bytes]:
    """A stream's response body: the ``start`` event, then the characters as the worker hands them
    over (what is ready goes out in one write), then ``done`` (or the ``error`` event the worker sent)."""
    started, sent, n = time.perf_counter(), 0, job.n
    try:
        yield format_sse_event(event="start", data_str=json.dumps(start))
        if n:
            batcher.submit(job)
        while n:
            item = await job.queue.get()
            if item is None:
                break
            parts = [item]
            while not job.queue.empty() and parts[-1] is not None:  # what is ready, in one write
                parts.append(job.queue.get_nowait())
            finished = parts[-1] is None
            if finished:
                parts.pop()
            sent += len(parts)
            yield b"".join(parts)
            if finished:
                break
        if sent == n:
            yield format_sse_event(
                event="done", data_str=json.dumps({"chars": sent, "seconds": round(time.perf_counter() - started, 4)})
            )
    finally:
        job.cancelled = True  # a client gone away: the worker drops the stream at its next round


class Slot:
    """One open stream's claim on a :class:`StreamSlots`; :meth:`release` frees it once, however
    often it is called."""

    def __init__(self, slots: "StreamSlots") -> None:
        self.slots, self.released = slots, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots.open -= 1


class StreamSlots:
    """Generation streams open at once, at most ``limit``. Only the event loop takes and frees
    slots, so a plain counter needs no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    def take(self) -> Slot | None:
        """A slot, or ``None`` when all are taken."""
        if self.open >= self.limit:
            return None
        self.open += 1
        return Slot(self)


class Stream(EventSourceResponse):
    """An event stream that frees its slot however it ends (also when it never started: a client
    gone before the first byte)."""

    def __init__(self, content: AsyncIterator[bytes], slot: Slot, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
