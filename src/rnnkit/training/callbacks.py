"""Callbacks: what happens around training without the trainer knowing about it.

A :class:`Callback` overrides the hooks it needs; :meth:`Trainer.add_callback` registers it (as
minGPT's trainer does). The progress bar, the checkpoints, ``metrics.jsonl``, ``curves.png`` and
TensorBoard are callbacks (:mod:`rnnkit.run`), so a new consumer of a run's numbers needs no change
to the trainer. Hooks are called on every process of a distributed run; write only where
``trainer.world.is_main``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rnnkit.training.records import EpochStats, EvalPoint

if TYPE_CHECKING:
    from rnnkit.training.trainer import Trainer


class Callback:
    """Hooks of a training run, in the order they are called; each does nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of :meth:`Trainer.fit` (after a resume's restore)."""

    def on_batch_end(self, trainer: Trainer, tokens: int, loss: torch.Tensor) -> None:
        """After each optimizer step: ``tokens`` trained on by all processes, ``loss`` this process's
        mean (a 0-dim tensor: reading it syncs a GPU)."""

    def on_eval(self, trainer: Trainer, point: EvalPoint) -> None:
        """After each validation, the best weights already updated (``trainer.best``)."""

    def save_due(self, trainer: Trainer, step: int) -> bool:
        """Whether the state after step ``step`` should be saved now (mid-epoch); under torchrun the
        processes agree on it in the step's all-reduce."""
        return False

    def on_save(self, trainer: Trainer, state: dict) -> None:
        """``state`` (:meth:`Trainer.state_dict`) is due to be saved: mid-epoch, by :meth:`save_due`."""

    def on_epoch_end(self, trainer: Trainer, stats: EpochStats) -> None:
        """After each epoch, its stats appended to ``trainer.history`` and ``trainer.snapshot`` updated."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch (not after a stop or divergence: those raise out of :meth:`Trainer.fit`)."""


class FunctionCallbacks(Callback):
    """:meth:`Trainer.fit`'s ``on_epoch``, ``on_batch`` and ``on_eval`` functions as a callback."""

    def __init__(
        self,
        on_epoch: Callable[[EpochStats], None] | None = None,
        on_batch: Callable[[int, torch.Tensor], None] | None = None,
        on_eval: Callable[[EvalPoint], None] | None = None,
    ) -> None:
        self.epoch, self.batch, self.eval = on_epoch, on_batch, on_eval

    def on_batch_end(self, trainer, tokens, loss):
        if self.batch is not None:
            self.batch(tokens, loss)

    def on_eval(self, trainer, point):
        if self.eval is not None:
            self.eval(point)

    def on_epoch_end(self, trainer, stats):
        if self.epoch is not None:
            self.epoch(stats)
