"""The optimisation half of a training step: gradients, clipping, optimizers, learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from rnnkit import distributed
from rnnkit.config import TrainConfig
from rnnkit.models import RNNLM, State


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """d2l's ``clip_gradients``: if the global L2 norm of all gradients exceeds ``max_norm``,
    scale every gradient by ``max_norm / norm``. Returns the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / norm, max=1.0)  # = 1 when norm <= max_norm: no change
    torch._foreach_mul_(grads, scale)
    return norm


def compute_gradients(
    model: RNNLM, X: torch.Tensor, Y: torch.Tensor, clip: float, state: State = None
) -> tuple[torch.Tensor, State]:
    """The gradient half of a training step: the mean loss of predicting ``Y`` from ``X``, its
    gradients in the parameters' ``.grad`` (replacing earlier ones), clipped to global norm ``clip``
    (0: no clipping). Returns the detached loss and the final state; the optimizer step is the caller's."""
    loss, state = model.loss(X, Y, state)
    model.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        clip_gradients(model.parameters(), clip)
    return loss.detach(), state


def compute_shared_gradients(
    model: RNNLM, X: torch.Tensor, Y: torch.Tensor, clip: float, state: State, flags: list[float]
) -> tuple[torch.Tensor, State, list[float]]:
    """:func:`compute_gradients` for one process of a distributed run: ``X``/``Y`` are this process's
    rows of the batch (possibly none); the gradients become those of the whole batch's mean loss
    (:func:`rnnkit.distributed.all_reduce_step`) before clipping. Returns this part's mean loss, the
    state, and ``flags`` summed over the processes."""
    model.zero_grad(set_to_none=True)
    if Y.numel():
        total, state = model.loss(X, Y, state, reduction="sum")
        total.backward()
    else:
        total = torch.zeros((), device=Y.device)
    _, flags = distributed.all_reduce_step(model.parameters(), Y.numel(), flags)
    if clip > 0:
        clip_gradients(model.parameters(), clip)
    return total.detach() / max(Y.numel(), 1), state, flags


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD and Adam as the book (weight decay on every parameter); AdamW decays the weight matrices
    only, not biases (as nanoGPT and most character-model recipes do)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def lr_factor(config: TrainConfig, progress: float) -> float:
    """The learning rate's multiplier at ``progress`` in [0, 1] of the run: a linear warmup over the
    first ``warmup`` of it, then constant, or a cosine or linear decay to ``min_lr_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if config.warmup and progress < config.warmup:
        return (progress + 1e-3) / (config.warmup + 1e-3)
    if config.schedule == "constant":
        return 1.0
    rest = (progress - config.warmup) / (1 - config.warmup)
    shape = 0.5 * (1 + math.cos(math.pi * rest)) if config.schedule == "cosine" else 1 - rest
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape
