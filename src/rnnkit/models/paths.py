"""Which execution path a model's call takes, and why: :func:`choose_path`.

An :class:`~rnnkit.models.RNNLM` computes what :mod:`rnnkit.models.reference` writes out in plain
PyTorch; for speed a call runs one of these paths instead (each held to the reference by
``tests/test_model_paths.py``: loss, final state and every gradient):

- ``kernel``: rnnkit's compiled CPU kernel (:mod:`rnnkit.models.fused`): the book's model, loss
  and gradients in one pass. Loss only.
- ``recurrence``: :func:`~rnnkit.models.layers.recurrence`, a simple-RNN loop with hand-written
  BPTT: the scratch model everywhere, a one-layer ``nn.RNN`` fed token ids on the CPU.
- ``torch``: PyTorch's ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (cuDNN on CUDA, ATen on the CPU), with
  DropConnect through ``torch.func.functional_call``.
- ``module``: the forward of a recurrent layer of the caller's own (neither of rnnkit's).
- ``lean-step``: generation's per-token step for the book's model on the CPU (:meth:`RNNLM.lean_step`).
- ``reference``: the reference itself: for per-layer states (introspection), and everywhere
  when ``RNNKIT_REFERENCE=1`` (to tell a fast path's bug from the model's behaviour).

The choice runs at every call, so it only reads settings; the words (``label``, ``reason``) are
put together when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rnnkit import kernels
from rnnkit.models.layers import Recurrent, RNNScratch

if TYPE_CHECKING:
    from rnnkit.models.lm import RNNLM

KERNEL, RECURRENCE, TORCH, MODULE, LEAN_STEP, REFERENCE = (
    "kernel",
    "recurrence",
    "torch",
    "module",
    "lean-step",
    "reference",
)
PURPOSES = ("loss", "forward", "step", "layers")
BACKENDS = {"cuda": "cuDNN", "cpu": "ATen"}


@dataclass(slots=True)
class ExecutionPath:
    """The path a call takes (``name``: KERNEL, RECURRENCE, TORCH, MODULE, LEAN_STEP or REFERENCE)
    and what decided it; :attr:`label` says what runs and :attr:`reason` why (from the model's
    settings when asked), ``str()`` both."""

    name: str
    model: RNNLM = field(repr=False)
    purpose: str  # loss, forward, step or layers (see choose_path)
    device: torch.device
    one_hot: bool  # token ids in, no embedding
    training: bool
    refusal: str | None = None  # why not the purpose's own fast path: the fused kernel (loss), the lean step

    @property
    def label(self) -> str:
        """What runs, e.g. ``fused CPU kernel``, ``nn.LSTM (cuDNN)``."""
        if self.name == TORCH:
            return f"nn.{type(self.model.rnn.rnn).__name__} ({BACKENDS.get(self.device.type, self.device.type)})"
        if self.name == MODULE:
            return f"{type(self.model.rnn).__name__}.forward"
        return {
            KERNEL: "fused CPU kernel",
            RECURRENCE: "rnnkit recurrence (hand-written BPTT)",
            LEAN_STEP: "lean generation step",
            REFERENCE: "reference (plain PyTorch)",
        }[self.name]

    @property
    def reason(self) -> str:
        """Why, e.g. ``2-layer lstm, one-hot input, on cpu, weight drop needs torch.func.functional_call``."""
        if self.name == REFERENCE:
            return "per-layer states, which only it keeps" if self.purpose == "layers" else "RNNKIT_REFERENCE is set"
        model, drop = self.model, self.training and self.model.weight_drop
        inputs = "one-hot" if self.one_hot else "embedding" if model.embedding is not None else "vector"
        words = [_layer_name(model), f"{inputs} input", f"on {self.device.type}"]
        if self.name == KERNEL:
            words[2] = "float32 on the CPU" + (", no dropout" if self.training else "")
        elif self.name == LEAN_STEP:
            words.append("in evaluation")
        elif self.name == RECURRENCE and isinstance(model.rnn, Recurrent):
            words[2] = "on the CPU, faster there than nn.RNN" + (", weight drop on W_hh" if drop else "")
        elif self.name == TORCH and drop:
            words.append("weight drop needs torch.func.functional_call")
        if self.refusal:
            words[-1] += f" ({'no lean step' if self.purpose == 'step' else 'not the fused kernel'}: {self.refusal})"
        return ", ".join(words)

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


def choose_path(
    model: RNNLM,
    X: torch.Tensor | None = None,
    *,
    purpose: str = "loss",
    training: bool | None = None,
    device: torch.device | str | None = None,
) -> ExecutionPath:
    """The path a call of ``model`` takes, decided from the model's settings (layer, input, dtype,
    dropout), the inputs' device (``X`` (B, T), else ``device``, else the model's), training or
    evaluation (``training``, else the model's mode), CPU autocast and the compiled kernel.

    ``purpose``: ``loss`` (:meth:`RNNLM.loss`: the kernel may apply), ``forward`` (:meth:`RNNLM.forward`
    and :meth:`RNNLM.hidden`), ``step`` (generation: the lean step may apply) or ``layers``
    (introspection: the reference). Asking for the kernel loads it (building it the first time)."""
    training = model.training if training is None else training
    device = X.device if X is not None else torch.device(device) if device is not None else model.head.weight.device
    one_hot = model.embedding is None and (X is None or X.dtype in (torch.int64, torch.int32))
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if purpose == "layers" or os.environ.get("RNNKIT_REFERENCE", "") not in ("", "0"):
        return ExecutionPath(REFERENCE, model, purpose, device, one_hot, training)
    rnn, refusal = model.rnn, None
    if purpose == "step":
        refusal = _lean_step_refusal(rnn, one_hot, training, device)
        if refusal is None:
            return ExecutionPath(LEAN_STEP, model, purpose, device, one_hot, training)
    elif purpose == "loss" and getattr(rnn, "one_hot_recurrence", False):  # the book's model
        refusal = _kernel_refusal(model, one_hot, training, device)
        if refusal is None:
            return ExecutionPath(KERNEL, model, purpose, device, one_hot, training)
    if isinstance(rnn, RNNScratch):
        name = RECURRENCE
    elif isinstance(rnn, Recurrent):
        name = RECURRENCE if rnn.runs_recurrence(one_hot, device) else TORCH
    else:
        name = MODULE
    return ExecutionPath(name, model, purpose, device, one_hot, training, refusal)


def describe_training_path(model: RNNLM, device: torch.device | str | None = None) -> str:
    """The path of a training step's loss (``model.loss`` in training mode) on ``device`` (default:
    the model's), and evaluation's where another path runs: one line, for the start of a run."""
    train = choose_path(model, purpose="loss", training=True, device=device)
    evaluation = choose_path(model, purpose="loss", training=False, device=device)
    if (evaluation.name, evaluation.label) == (train.name, train.label):
        return str(train)
    return f"{train}; evaluation: {evaluation}"


def _kernel_refusal(model: RNNLM, one_hot: bool, training: bool, device: torch.device) -> str | None:
    """Why the fused kernel does not compute this loss of the book's model (a one-layer simple RNN;
    None: it does). Loads the kernel last, where nothing else stands in the way."""
    if device.type != "cpu":
        return "not on the CPU"
    if not one_hot:
        return "a learned embedding" if model.embedding is not None else "inputs are not token ids"
    if training and (model.io_dropout or model.weight_drop):
        return "io dropout in training" if model.io_dropout else "weight drop in training"
    if model.head.weight.dtype != torch.float32:
        return "weights not float32"
    if autocast_on_cpu():
        return "CPU autocast is on"
    if kernels.rnn_lm_kernel() is None:
        return f"the kernel is {kernels.unavailable_reason()}"
    return None


def _lean_step_refusal(rnn, one_hot: bool, training: bool, device: torch.device) -> str | None:
    """Why generation does not use :meth:`RNNLM.lean_step` (None: it does)."""
    if training:
        return "in training"
    if not one_hot:
        return "a learned embedding"
    if device.type != "cpu":
        return "not on the CPU"
    if not getattr(rnn, "one_hot_recurrence", False):
        return "not the book's model"
    return None


def _layer_name(model: RNNLM) -> str:
    """E.g. ``one-layer rnn (tanh)``, ``2-layer lstm``, ``scratch model (relu)``."""
    rnn = model.rnn
    if isinstance(rnn, RNNScratch):
        return f"scratch model ({rnn.activation})"
    if not isinstance(rnn, Recurrent):
        return type(rnn).__name__
    layers = rnn.rnn.num_layers
    activation = f" ({rnn.rnn.nonlinearity})" if rnn.kind == "rnn" else ""
    return f"{'one' if layers == 1 else layers}-layer {rnn.kind}{activation}"


def autocast_on_cpu() -> bool:
    """Whether CPU autocast is on (the kernel runs float32 only)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
