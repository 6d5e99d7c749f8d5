"""``rnnkit.train``: train a run, ``rnnkit.train(corpus="my.txt", time_budget="3m", out="runs/mine")``
(:func:`rnnkit.run.train`), and the names training code was imported by before it became the
:mod:`rnnkit.training` package; they keep working (``from rnnkit.train import Trainer``)."""

import sys
import types

from rnnkit.config import CUDA_GRAPHS, OPTIMIZERS, SCHEDULES, TrainConfig
from rnnkit.evaluate import (
    EVAL_BATCH_TOKENS,
    STREAM_WARMUP,
    VALIDATION_LANES,
    bits_per_token,
    characters_predicted,
    perplexity,
    safe_exp,
    stream_nll,
    validation_lanes,
    window_nll,
)
from rnnkit.training.device import available_memory, check_memory, keep_freed_memory, memory_needed, select_device
from rnnkit.training.optim import clip_gradients, compute_gradients, compute_shared_gradients, lr_factor, make_optimizer
from rnnkit.training.records import EpochStats, EvalPoint
from rnnkit.training.steps import CapturedGradients
from rnnkit.training.trainer import Trainer

__all__ = [
    "CUDA_GRAPHS",
    "EVAL_BATCH_TOKENS",
    "OPTIMIZERS",
    "SCHEDULES",
    "STREAM_WARMUP",
    "VALIDATION_LANES",
    "CapturedGradients",
    "EpochStats",
    "EvalPoint",
    "TrainConfig",
    "Trainer",
    "available_memory",
    "bits_per_token",
    "characters_predicted",
    "check_memory",
    "clip_gradients",
    "compute_gradients",
    "compute_shared_gradients",
    "keep_freed_memory",
    "lr_factor",
    "make_optimizer",
    "memory_needed",
    "perplexity",
    "safe_exp",
    "select_device",
    "stream_nll",
    "validation_lanes",
    "window_nll",
]


class _CallableModule(types.ModuleType):
    """``rnnkit.train`` is both this module and the function that trains a run: importing the
    module (``from rnnkit.train import Trainer``) sets the package's attribute ``train`` to it, so
    the module itself answers ``rnnkit.train(...)``."""

    def __call__(self, **options):
        from rnnkit.run import train

        return train(**options)


sys.modules[__name__].__class__ = _CallableModule
