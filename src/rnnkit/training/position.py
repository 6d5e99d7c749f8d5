"""Where in its epochs a run is: the epoch in progress, the batches it has read, the sums so far and
the state carried into the next batch. Saved mid-epoch, it lets a resumed run read exactly the
batches an uninterrupted one would have read next."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rnnkit.data import part_rows
from rnnkit.distributed import World
from rnnkit.models import State


@dataclass
class EpochRun:
    """The epoch in progress: batches read, this process's loss sum (a float64 0-dim tensor) and
    token count, and when it started (on the trainer's clock, less the seconds of a restored part)."""

    epoch: int
    batch: int
    loss: torch.Tensor
    count: int
    t0: float


class EpochPosition:
    """The epoch in progress (:attr:`run`), the state carried into its next batch (:attr:`carry`), and
    a restored position waiting for its epoch to continue. ``state_dim``: the batch dimension of the
    model's state; ``sums``: (loss sum, count) over every process (a collective under torchrun)."""

    def __init__(self, device: torch.device, world: World, state_dim: int, sums: Callable[[float, int], list]) -> None:
        self.device, self.world, self.state_dim, self.sums = device, world, state_dim, sums
        self.run: EpochRun | None = None
        self.carry: State = None
        self.restored: dict | None = None

    def begin(self, epoch: int, now: float) -> EpochRun:
        """Start epoch ``epoch`` (0-based), continuing a restored position of it if there is one."""
        position, self.restored = self.restored, None
        start, seconds, self.carry = 0, 0.0, None
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        if position is not None and position["epoch"] == epoch:
            start, seconds = position["batch"], position["seconds"]
            self.carry = self._carried_rows(position["carry"])
            if self.world.is_main:  # the sums are of all processes: counted once
                total += position["loss_sum"]
                count = position["count"]
        self.run = EpochRun(epoch, start, total, count, now - seconds)
        return self.run

    def end(self) -> None:
        self.run, self.carry = None, None

    def state(self, now: float, eval_seconds: float) -> dict | None:
        """The position to save (None at an epoch's end): the batches read, the loss and token sums
        so far, the epoch's training seconds and the carried state (all processes' lanes)."""
        run = self.run
        if run is None:
            return self.restored  # restored but not yet continued
        loss_sum, count = self.sums(float(run.loss), run.count)
        carry = self.carry
        if carry is not None:
            tensors = list(carry) if isinstance(carry, tuple) else [carry]
            if self.world.started:
                from rnnkit import distributed

                tensors = [distributed.gather_rows(t, self.state_dim, self.world) for t in tensors]
            carry = {"tensors": [t.detach().clone() for t in tensors], "tuple": isinstance(self.carry, tuple)}
        return {
            "epoch": run.epoch,
            "batch": run.batch,
            "loss_sum": loss_sum,
            "count": count,
            "seconds": now - run.t0 - eval_seconds,
            "carry": carry,
        }

    def restore(self, position: dict | None) -> None:
        self.restored, self.run = position, None

    def _carried_rows(self, carry: dict | None) -> State:
        """This process's lanes of a saved carried state."""
        if carry is None:
            return None
        tensors = [t.to(self.device) for t in carry["tensors"]]
        if self.world.started:
            rows = part_rows(tensors[0].shape[self.state_dim], self.world.part)
            tensors = [t[(slice(None),) * self.state_dim + (rows,)] for t in tensors]
        return tuple(tensors) if carry["tuple"] else tensors[0]
