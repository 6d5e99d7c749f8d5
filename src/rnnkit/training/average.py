"""The weights' exponential moving average (``--ema``): what validation and the best checkpoint use.

Near the end of a run the average of the last few hundred steps' weights sits nearer a minimum than
the last noisy step; training itself goes on with the weights as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class WeightAverage:
    """``average <- decay * average + (1 - decay) * weights`` after every step, the decay ramped up
    over the first steps (``(1 + t) / (10 + t)`` after t steps, capped at ``decay``) so that the
    start's weights fade fast. One tensor per parameter, in ``model.parameters()`` order."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.tensors = [p.detach().clone() for p in model.parameters()]
        self.swapped_in = False

    def __iter__(self):
        return iter(self.tensors)

    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (counted from 0 before the first)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.tensors, [p.detach() for p in self.model.parameters()], 1 - decay)

    @contextlib.contextmanager
    def in_model(self) -> Iterator[None]:
        """Within the block the model holds the average; the training weights are put back after it
        (nested uses swap once)."""
        if self.swapped_in:
            yield
            return
        parameters = [p.detach() for p in self.model.parameters()]
        training = [p.clone() for p in parameters]
        with torch.no_grad():
            torch._foreach_copy_(parameters, self.tensors)
        self.swapped_in = True
        try:
            yield
        finally:
            self.swapped_in = False
            with torch.no_grad():
                torch._foreach_copy_(parameters, training)

    def state(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self.tensors]

    def load(self, saved: Sequence[torch.Tensor] | None) -> None:
        """Restore :meth:`state`'s output; a run saved without an average starts it from the weights."""
        for kept, value in zip(self.tensors, saved or list(self.model.parameters()), strict=True):
            kept.copy_(value)
