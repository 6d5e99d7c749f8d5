"""What training validates on: the held-out windows (the book's ``d2l`` split) or the held-out text."""

from __future__ import annotations

from rnnkit.data import DataSplit
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
