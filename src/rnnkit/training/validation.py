"""What training validates on: the held-out windows (the book's ``d2l`` split) or the held-out text."""

from __future__ import annotations

import torch

from rnnkit import distributed
from rnnkit.data import DataSplit
from rnnkit.distributed import World
from rnnkit.evaluate import EVAL_BATCH_TOKENS, stream_nll, validation_lanes, window_nll
from rnnkit.models import RNNLM


def held_out_nll(model: RNNLM, data: DataSplit, num_steps: int) -> tuple[float, int]:
    """Summed NLL (nats) and count of the model on ``data``'s held-out part: each window from a
    fresh state (d2l), or the held-out text as a few warmed-up lanes (:func:`validation_lanes`);
    (0, 0) where there is none."""
    if data.val_windows is not None:
        return window_nll(model, data.val_windows.batched(EVAL_BATCH_TOKENS // num_steps))
    if data.val_text is not None:
        return stream_nll(model, data.val_text, lanes=validation_lanes(len(data.val_text)))
    return 0.0, 0


def shared_held_out_nll(
    model: RNNLM, data: DataSplit, num_steps: int, world: World, device: torch.device
) -> tuple[float, int]:
    """:func:`held_out_nll` on rank 0, sent to every process of a distributed run (every process then
    decides alike: the best weights, patience)."""
    if not world.started:
        return held_out_nll(model, data, num_steps)
    result = torch.zeros(2, dtype=torch.float64, device=device)
    if world.is_main:
        result += torch.tensor(held_out_nll(model, data, num_steps), dtype=torch.float64, device=device)
    distributed.broadcast_from_main([result])
    return result[0].item(), int(result[1].item())
