"""What a training run writes as it goes: checkpoints (:class:`Checkpoints`), ``metrics.jsonl`` and
``evals.jsonl``, and ``curves.png`` (:class:`Curves`). Both are callbacks; only the main process of
a distributed run writes, but every process takes part in deciding when."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from rnnkit.checkpoint import save_run, write_metrics
from rnnkit.config import RunOptions
from rnnkit.errors import RnnkitError
from rnnkit.training import Callback, EpochStats, Trainer


class Checkpoints(Callback):
    """Saves the run into ``run_dir``: every ``save_every`` epochs, every ``save_steps`` steps, after
    any step that finds the last save ``save_minutes`` old, and when asked (:meth:`save`: the end of
    the run, a stop). Between checkpoints, ``metrics.jsonl`` follows every epoch."""

    def __init__(self, run_dir: Path, options: RunOptions, main_process: bool = True) -> None:
        self.run_dir, self.options, self.main = run_dir, options, main_process
        self.last_save = time.monotonic()

    def save(self, trainer: Trainer, state: dict) -> None:
        """Rank 0 writes the checkpoint (the others have taken part in building ``state``)."""
        if self.main:
            save_run(
                self.run_dir, trainer.model, trainer.vocab, trainer.config, state["epoch"], state, trainer.corpus_sha1
            )
        self.last_save = time.monotonic()

    def overdue(self) -> bool:
        minutes = self.options.save_minutes
        return bool(minutes) and time.monotonic() - self.last_save >= 60 * minutes

    def save_due(self, trainer: Trainer, step: int) -> bool:
        return bool(self.options.save_steps and step % self.options.save_steps == 0) or self.overdue()

    def on_save(self, trainer: Trainer, state: dict) -> None:
        self.save(trainer, state)

    def on_epoch_end(self, trainer: Trainer, stats: EpochStats) -> None:
        every = self.options.save_every
        if (every and stats.epoch % every == 0) or self.overdue():
            self.save(trainer, trainer.snapshot)
        elif self.main:
            write_metrics(self.run_dir, [asdict(h) for h in trainer.history], [asdict(e) for e in trainer.evals])


class Curves(Callback):
    """Rewrites ``curves.png`` in the run directory as training goes, and once more at the end.

    Drawing takes about a quarter of a second (matplotlib lays out its text on the CPU that trains),
    so it waits at least :attr:`interval_s` after the start and between drawings, and at least
    :attr:`cost_ratio` times as long as the last drawing took: the curves cost at most ~3% of the
    training time, and a run shorter than the interval draws them once."""

    interval_s = 5.0
    cost_ratio = 30.0

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.last, self.cost = time.monotonic(), 0.0

    def on_epoch_end(self, trainer: Trainer, stats: EpochStats) -> None:
        self.update(trainer.history)

    def update(self, history: list[EpochStats], force: bool = False) -> None:
        wait = max(self.interval_s, self.cost_ratio * self.cost)
        if not (self.enabled and history) or (not force and time.monotonic() - self.last < wait):
            return
        from rnnkit.files import atomic_write
        from rnnkit.plot import render_curves

        started = time.monotonic()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rows = [asdict(h) for h in history]
            atomic_write(self.run_dir / "curves.png", render_curves([(self.run_dir.name, rows)]))
        except RnnkitError as exc:  # matplotlib missing: say so once, keep training
            print(f"rnnkit: note: curves.png not drawn: {exc}", file=sys.stderr)
            self.enabled = False
        except OSError as exc:
            raise RnnkitError(f"cannot write {self.run_dir / 'curves.png'}: {exc.strerror or exc}") from None
        self.last = time.monotonic()
        self.cost = self.last - started
