"""``--tensorboard DIR``: a run's curves as TensorBoard event files (``tensorboard --logdir DIR``).

Written through ``torch.utils.tensorboard`` (it needs the ``tensorboard`` package: the
``tensorboard`` extra). Scalars, against the optimizer step: ``train/loss`` (the mean training loss
since the previous validation) and ``train/lr`` at every validation, ``val/loss`` (nats per
token), ``val/ppl`` and ``val/bpc`` with them; per epoch ``epoch/train_loss``, ``epoch/val_ppl``,
``epoch/val_bpc`` and ``epoch/tokens_per_s``. Nothing is read per step, so logging costs no
device sync.
"""

from __future__ import annotations

import math
from pathlib import Path

from rnnkit.errors import RnnkitError
from rnnkit.training import Callback, EpochStats, EvalPoint, Trainer


class TensorBoardLogger(Callback):
    """Logs a run's numbers into ``log_dir`` (module doc); the main process only."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RnnkitError(
                "--tensorboard needs the tensorboard package: pip install 'rnnkit[tensorboard]'"
            ) from None
        try:
            self.writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as exc:
            raise RnnkitError(f"--tensorboard {log_dir}: cannot write there ({exc.strerror or exc})") from None

    def on_eval(self, trainer: Trainer, point: EvalPoint) -> None:
        scalars = {
            "train/loss": point.train_loss,
            "train/lr": point.lr,
            "val/loss": point.val_loss,
            "val/ppl": math.exp(min(point.val_loss, 700.0)),
            "val/bpc": point.val_bpc,
        }
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, point.step)

    def on_epoch_end(self, trainer: Trainer, stats: EpochStats) -> None:
        scalars = {
            "epoch/train_loss": stats.train_loss,
            "epoch/val_ppl": stats.val_ppl,
            "epoch/val_bpc": stats.val_bpc,
            "epoch/tokens_per_s": stats.tokens_per_s,
        }
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, trainer.step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
