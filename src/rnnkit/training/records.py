"""What a training run records: one :class:`EpochStats` per epoch (``metrics.jsonl``), one
:class:`EvalPoint` per validation (``evals.jsonl``), the best weights so far, and the
:class:`TrainingState` that holds them with the counters a resume continues from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class EvalPoint:
    """One line of ``evals.jsonl``: a validation at a training step (at epoch ends, every
    ``eval_every`` steps, at intervals of a time budget, and at its end)."""

    step: int
    epoch: float  # epochs done, fractional
    seconds: float  # wall-clock seconds since training started (evaluations included)
    train_loss: float  # mean training loss since the previous evaluation
    val_loss: float  # nats per token
    val_bpc: float
    lr: float


@dataclass
class EpochStats:
    """One line of ``metrics.jsonl``."""

    epoch: int
    train_loss: float
    train_ppl: float
    val_ppl: float
    val_bpc: float
    seconds: float  # training seconds so far (excludes evaluation)
    tokens_per_s: float


@dataclass
class BestWeights:
    """The weights of the lowest validation loss so far (the moving average's, with ``--ema``)."""

    step: int
    epoch: float
    val_loss: float
    model: dict[str, torch.Tensor]

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "val_loss": self.val_loss, "model": dict(self.model)}


@dataclass
class LossSum:
    """Summed training loss (nats; a float, or a 0-dim tensor summed without a device sync) and the
    tokens it is over."""

    total: Any = 0.0
    tokens: int = 0

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.total += loss.detach().double() * tokens
        self.tokens += tokens


@dataclass
class TrainingState:
    """Where a run is, apart from its weights, optimizer and RNG: what a resume needs to go on exactly."""

    step: int = 0  # optimizer steps taken
    history: list[EpochStats] = field(default_factory=list)
    evals: list[EvalPoint] = field(default_factory=list)
    best: BestWeights | None = None
    finished: str | None = None  # why the run stopped before its epochs: time budget, patience, max steps
    train_seconds: float = 0.0  # training seconds of completed epochs (evaluations excluded)
    wall_seconds: float = 0.0  # wall-clock seconds of training so far, evaluations included
    bad_evals: int = 0  # evaluations since the best one
    since_eval: LossSum = field(default_factory=LossSum)  # training loss since the last evaluation
    last_eval_wall: float = 0.0  # wall_seconds at the last evaluation

    def record(self, point: EvalPoint, weights: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Add a validation: a lower loss than the best so far keeps ``weights()`` as the best; else it
        counts towards patience."""
        self.evals.append(point)
        if self.best is None or point.val_loss < self.best.val_loss:
            self.best = BestWeights(point.step, point.epoch, point.val_loss, weights())
            self.bad_evals = 0
        else:
            self.bad_evals += 1

    def to_dict(self) -> dict[str, Any]:
        """The fields as the training state file stores them (``since_eval`` as ``[sum, count]``)."""
        return {
            "epoch": len(self.history),
            "history": [asdict(h) for h in self.history],
            "train_seconds": self.train_seconds,
            "step": self.step,
            "evals": [asdict(e) for e in self.evals],
            "best": None if self.best is None else self.best.to_dict(),
            "finished": self.finished,
            "wall_seconds": self.wall_seconds,
            "bad_evals": self.bad_evals,
            "last_eval_wall": self.last_eval_wall,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], count_since_eval: bool = True) -> TrainingState:
        """:meth:`to_dict`'s output; ``count_since_eval`` False: start the loss since the last
        evaluation from zero (the other processes of a distributed run: rank 0 holds the sums)."""
        best = state.get("best")
        loss_sum, count = state.get("since_eval", [0.0, 0]) if count_since_eval else (0.0, 0)
        wall = state.get("wall_seconds", 0.0)
        return cls(
            step=state.get("step", 0),
            history=[EpochStats(**h) for h in state["history"]],
            evals=[EvalPoint(**e) for e in state.get("evals", [])],
            best=None if best is None else BestWeights(**best),
            finished=state.get("finished"),
            train_seconds=state["train_seconds"],
            wall_seconds=wall,
            bad_evals=state.get("bad_evals", 0),
            since_eval=LossSum(loss_sum, count),
            last_eval_wall=state.get("last_eval_wall", wall),
        )
