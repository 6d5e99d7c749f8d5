"""Character-level RNN language models (d2l.ai chapter 9).

- :mod:`~rnnkit.models.lm`: :class:`RNNLM` (encoding -> recurrent layers -> output layer) and
  :func:`build_model`, the model a run's config describes.
- :mod:`~rnnkit.models.reference`: what the model computes, in plain PyTorch, top to bottom.
- :mod:`~rnnkit.models.paths`: :func:`choose_path`, which of the faster paths a call takes and why.
- :mod:`~rnnkit.models.layers`: the recurrent layers (:class:`RNNScratch`, :class:`Recurrent`) and
  :func:`recurrence`, the simple RNN with hand-written backpropagation through time.
- :mod:`~rnnkit.models.fused`: the compiled CPU kernel's path for the book's model.
- :mod:`~rnnkit.models.losses`: :func:`linear_cross_entropy`, the output layer's loss.
- :mod:`~rnnkit.models.state`: carrying, cutting and (un)batching recurrent state.
"""

from rnnkit.models.layers import ACTIVATIONS, Recurrent, RNNScratch, recurrence
from rnnkit.models.lm import (
    GATES,
    MAX_PARAMETERS,
    MODEL_KINDS,
    RNNLM,
    StepFn,
    build_model,
    check_parameter_count,
    parameter_count,
    state_batch_dim,
)
from rnnkit.models.losses import linear_cross_entropy
from rnnkit.models.paths import (
    KERNEL,
    LEAN_STEP,
    MODULE,
    RECURRENCE,
    REFERENCE,
    TORCH,
    ExecutionPath,
    choose_path,
    describe_training_path,
)
from rnnkit.models.reference import layer_states, reference_forward, reference_hidden, reference_loss
from rnnkit.models.state import State, detach_state, evaluating, join_states, split_state

__all__ = [
    "ACTIVATIONS",
    "GATES",
    "KERNEL",
    "LEAN_STEP",
    "MAX_PARAMETERS",
    "MODEL_KINDS",
    "MODULE",
    "RECURRENCE",
    "REFERENCE",
    "RNNLM",
    "TORCH",
    "ExecutionPath",
    "RNNScratch",
    "Recurrent",
    "State",
    "StepFn",
    "build_model",
    "check_parameter_count",
    "choose_path",
    "describe_training_path",
    "detach_state",
    "evaluating",
    "join_states",
    "layer_states",
    "linear_cross_entropy",
    "parameter_count",
    "recurrence",
    "reference_forward",
    "reference_hidden",
    "reference_loss",
    "split_state",
    "state_batch_dim",
]
