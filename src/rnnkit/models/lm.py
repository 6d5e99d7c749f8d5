"""The language model: input encoding -> recurrent layers -> linear output layer; and its builder.

``RNNLM.forward(X (B, T) int64, state) -> (logits (T, B, V), state)``. What it computes is written
out in plain PyTorch in :mod:`rnnkit.models.reference`; each call runs the path
:func:`~rnnkit.models.paths.choose_path` picks for it (a compiled kernel, rnnkit's recurrence,
PyTorch's layers...), held to the reference by the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.models.fused import fused_loss
from rnnkit.models.layers import Recurrent, RNNScratch
from rnnkit.models.losses import linear_cross_entropy
from rnnkit.models.paths import KERNEL, LEAN_STEP, RECURRENCE, REFERENCE, TORCH, ExecutionPath, choose_path
from rnnkit.models.reference import reference_hidden, reference_loss
from rnnkit.models.state import State

MODEL_KINDS = ("rnn", "gru", "lstm", "scratch")
GATES = {"rnn": 1, "scratch": 1, "gru": 3, "lstm": 4}
MAX_PARAMETERS = 2_000_000_000  # a sanity bound that turns typos like --hidden 1000000 into an error

StepFn = Callable[[Sequence[int], State], tuple[torch.Tensor, State]]


class RNNLM(nn.Module):
    """Language model: input encoding -> recurrent layer -> linear output layer.

    ``forward(X (B, T) int64, state) -> (logits (T, B, V), state)``; logits are time-major so that
    the output layer is one GEMM over all T*B positions. With ``embedding_dim`` the input is a
    learned ``nn.Embedding`` (the §9.5 exercise); without, one-hot, as the book.

    Regularisation, in training only: ``io_dropout`` drops out the embedding and the recurrent
    outputs (Zaremba et al.'s regularised LSTM language model); ``weight_drop`` is DropConnect on
    the hidden-to-hidden weights, one mask per call, the same at every step (Merity et al.'s
    AWD-LSTM; not for RNNScratch). Both are probabilities in [0, 1).
    """

    def __init__(
        self,
        rnn: nn.Module,
        vocab_size: int,
        embedding_dim: int | None = None,
        io_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        self.head = nn.Linear(rnn.num_hiddens, vocab_size)
        if isinstance(rnn, RNNScratch):  # d2l's W_hq ~ N(0, sigma^2), b_q = 0
            nn.init.normal_(self.head.weight, std=rnn.sigma)
            nn.init.zeros_(self.head.bias)
        self.io_dropout, self.weight_drop = io_dropout, weight_drop

    @property
    def io_dropout(self) -> float:
        """Dropout probability of the learned embedding and of the recurrent outputs, in training."""
        return self._io_dropout

    @io_dropout.setter
    def io_dropout(self, p: float) -> None:
        self._io_dropout = _probability("io_dropout", p)

    @property
    def weight_drop(self) -> float:
        """DropConnect probability of the hidden-to-hidden weights, in training."""
        return self._weight_drop

    @weight_drop.setter
    def weight_drop(self, p: float) -> None:
        if p and isinstance(self.rnn, RNNScratch):
            raise RnnkitError("weight_drop applies to --model rnn, gru and lstm, not scratch")
        self._weight_drop = _probability("weight_drop", p)

    def forward(self, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        outputs, state = self.hidden(X, state)
        return self.head(outputs), state

    def hidden(self, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Recurrent outputs (T, B, H) for tokens X (B, T), and the final state."""
        return self._hidden(choose_path(self, X, purpose="forward"), X, state)

    def loss(
        self, X: torch.Tensor, Y: torch.Tensor, state: State = None, reduction: str = "mean"
    ) -> tuple[torch.Tensor, State]:
        """Cross-entropy of predicting ``Y`` (B, T) from ``X`` (B, T), mean or sum, and the final
        state; the logits are never kept (:func:`linear_cross_entropy`, or the fused kernel)."""
        path = choose_path(self, X, purpose="loss")
        if path.name == REFERENCE:
            return reference_loss(self, X, Y, state, reduction)
        if path.name == KERNEL:
            total, state = fused_loss(self, X, Y, state)
        else:
            outputs, state = self._hidden(path, X, state)
            total = linear_cross_entropy(
                outputs.reshape(-1, outputs.shape[-1]), self.head.weight, self.head.bias, Y.T.reshape(-1)
            )
        return (total / Y.numel() if reduction == "mean" else total), state

    def _hidden(self, path: ExecutionPath, X: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """:meth:`hidden` by ``path``: the dropouts around the recurrent layer, which runs the path's code."""
        if path.name == REFERENCE:
            outputs, state, _ = reference_hidden(self, X, state)
            return outputs, state
        drop = self.io_dropout if self.training else 0.0
        weight_drop = self.weight_drop if self.training else 0.0
        inputs = X.T if self.embedding is None else F.dropout(self.embedding(X.T), drop, True)
        if path.name == RECURRENCE:
            outputs, state = self.rnn.run_recurrence(inputs, state, weight_drop)
        elif path.name == TORCH:
            outputs, state = self.rnn.run_module(inputs, state, weight_drop)
        elif weight_drop:  # MODULE: a layer of the caller's own
            outputs, state = self.rnn(inputs, state, weight_drop=weight_drop)
        else:
            outputs, state = self.rnn(inputs, state)
        return (F.dropout(outputs, drop, True) if drop else outputs), state

    def prepare_kernel(self) -> bool:
        """Load (building it if needed) the compiled kernel now if this model's loss uses it, so that
        a build is not timed as training. Returns whether the kernel applies on the model's device."""
        return choose_path(self, purpose="loss").name == KERNEL

    def _cpu_kernel(self, X: torch.Tensor) -> tuple[object, tuple[torch.Tensor, torch.Tensor, str]] | None:
        """(the compiled kernel, the layer's one-hot weights) where :func:`choose_path` picks the
        kernel for a loss on ``X``, else None. Prefer ``choose_path(model, X).name == "kernel"``."""
        if choose_path(self, X, purpose="loss").name != KERNEL:
            return None
        from rnnkit import kernels

        return kernels.rnn_lm_kernel(), self.rnn.one_hot_weights()

    def initial_logits(self) -> torch.Tensor:
        """Logits (V,) from a fresh (all-zero) hidden state: where generation with no prefix starts."""
        return self.head.bias.detach().clone()

    def lean_step(self) -> StepFn | None:
        """Generation's step ``(ids, state) -> (logits (V,), state)`` for the book's model on the CPU
        in evaluation (one-layer RNN or RNNScratch, one-hot input), without the layer's general
        machinery: per token a table row, one ``addmm`` and the activation, then the output layer
        for the last token only: about a fifth of :meth:`forward`'s time per token. The same
        operations as ``forward`` step by step, but its logits can differ in the last bits where
        ``forward`` computes the output layer for several tokens at once (a prefix): ``rnnkit
        generate`` and ``rnnkit serve`` both step with this, so a seed gives the same text in both.
        None where :func:`choose_path` (``purpose="step"``) picks another path."""
        if choose_path(self, purpose="step").name != LEAN_STEP:
            return None
        table, W_hh, activation = self.rnn.one_hot_weights()
        table, W_hh = table.detach(), W_hh.detach()
        activation_ = torch.tanh_ if activation == "tanh" else torch.relu_
        head_weight_t, head_bias = self.head.weight.detach().t(), self.head.bias.detach()
        layered = not isinstance(self.rnn, RNNScratch)  # nn.RNN's state is (1, 1, H), RNNScratch's (1, H)

        def step(ids: Sequence[int], state: State) -> tuple[torch.Tensor, State]:
            h = W_hh.new_zeros(1, W_hh.shape[0]) if state is None else (state[0] if layered else state)
            for i in ids:
                h = activation_(torch.addmm(table[i : i + 1], h, W_hh))
            return torch.addmm(head_bias, h, head_weight_t)[0], (h.unsqueeze(0) if layered else h)

        return step


def _probability(name: str, p: float) -> float:
    if not 0 <= p < 1:
        raise RnnkitError(f"{name} must be in [0, 1), got {p}")
    return p


def state_batch_dim(model: RNNLM) -> int:
    """The batch dimension of the model's state tensors: 0 for :class:`RNNScratch` (B, H), 1 for
    PyTorch's layers (layers, B, H)."""
    return 0 if isinstance(model.rnn, RNNScratch) else 1


def parameter_count(kind: str, vocab_size: int, hidden: int, layers: int = 1, embedding: int = 0) -> int:
    """Parameters of :func:`build_model`'s model, computed without building it."""
    gates, num_inputs = GATES[kind], embedding or vocab_size
    return (
        gates * hidden * (num_inputs + hidden + 2)
        + (layers - 1) * gates * hidden * (2 * hidden + 2)
        + hidden * vocab_size
        + vocab_size
        + vocab_size * embedding
    )


def check_parameter_count(kind: str, vocab_size: int, hidden: int, layers: int = 1, embedding: int = 0) -> int:
    """The model's parameter count; an error above :data:`MAX_PARAMETERS` (a typo, not a model)."""
    count = parameter_count(kind, vocab_size, hidden, layers, embedding)
    if count > MAX_PARAMETERS:
        raise RnnkitError(
            f"model would have {count:,} parameters ({count * 4 / 2**30:.1f} GiB); "
            f"the limit is {MAX_PARAMETERS:,}: lower --hidden, --layers or --embedding"
        )
    return count


def build_model(
    kind: str,
    vocab_size: int,
    hidden: int,
    layers: int = 1,
    dropout: float = 0.0,
    embedding: int = 0,
    activation: str = "tanh",
    tie_weights: bool = False,
    io_dropout: float = 0.0,
    weight_drop: float = 0.0,
) -> RNNLM:
    """The model a run's config describes (``embedding=0`` means one-hot input). ``dropout``: between
    layers (``nn.RNN``'s); ``io_dropout`` and ``weight_drop``: see :class:`RNNLM`. ``tie_weights``:
    the output layer's weight is the embedding's (Press & Wolf; needs ``embedding == hidden``)."""
    if kind not in MODEL_KINDS:
        raise RnnkitError(f"unknown model '{kind}' (choose from {', '.join(MODEL_KINDS)})")
    for name, value, low in (("hidden", hidden, 1), ("layers", layers, 1), ("embedding", embedding, 0)):
        if not isinstance(value, int) or not low <= value <= 1_000_000:
            raise RnnkitError(f"{name} must be an integer between {low} and 1000000, got {value}")
    if not 0 <= dropout < 1:
        raise RnnkitError(f"dropout must be in [0, 1), got {dropout}")
    num_inputs = embedding or vocab_size
    check_parameter_count(kind, vocab_size, hidden, layers, embedding)
    if kind == "scratch":
        if layers != 1 or dropout:
            raise RnnkitError("--model scratch has one layer and no dropout; use rnn/gru/lstm for more")
        rnn = RNNScratch(num_inputs, hidden, activation=activation)
    else:
        rnn = Recurrent(kind, num_inputs, hidden, layers, dropout, activation)
    model = RNNLM(rnn, vocab_size, embedding or None, io_dropout, weight_drop)
    if tie_weights:
        if embedding != hidden:
            raise RnnkitError(
                f"tying weights needs --embedding equal to --hidden (the output layer is "
                f"{vocab_size}x{hidden}, the embedding {vocab_size}x{embedding or 'one-hot'})"
            )
        model.head.weight = model.embedding.weight
    return model
