"""Recurrent state helpers: carrying, cutting, batching and unbatching a model's state.

A state is what a recurrent layer hands from one call to the next: ``None`` (all zeros), a tensor
(``(B, H)`` for :class:`~rnnkit.models.RNNScratch`, ``(L, B, H)`` for PyTorch's layers) or, for an
LSTM, a tuple ``(h, c)`` of two ``(L, B, H)`` tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, ...] | None


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Inference mode with the model in eval mode (dropout off), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def detach_state(state: State) -> State:
    """Cut the graph behind a carried state (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def join_states(states: list, batch_dim: int) -> State:
    """One batched state from per-stream states (tensors, or tuples of tensors for an LSTM)."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=batch_dim) for parts in zip(*states, strict=True))
    return torch.cat(states, dim=batch_dim)


def split_state(state: State, batch_dim: int) -> list:
    """Per-stream states (each with a batch of one) from a batched state."""
    if isinstance(state, tuple):
        return list(zip(*(part.split(1, dim=batch_dim) for part in state), strict=True))
    return list(state.split(1, dim=batch_dim))
