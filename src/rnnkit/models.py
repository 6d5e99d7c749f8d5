"""Character-level RNN language models (read top to bottom).

Shapes: T = num_steps, B = batch size, V = vocabulary size, H = hidden units, E = embedding size.
Recurrent layers are time-major: ``layer(inputs, state) -> (outputs (T, B, H), state)`` where
``inputs`` is either token indices ``(T, B)`` (one-hot input, done as a row lookup) or vectors
``(T, B, D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.errors import RnnkitError

MODEL_KINDS = ("rnn", "gru", "lstm", "scratch")
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}

State = torch.Tensor | tuple[torch.Tensor, ...] | None


class RNNScratch(nn.Module):
    """d2l §9.5's RNN: ``H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)`` with N(0, sigma^2) weights.

    Token indices select rows of ``W_xh``, which is exactly ``one_hot(X) @ W_xh`` without the
    matmul. The state is ``(B, H)``; a 1-tuple ``(H,)`` is accepted too, as d2l passes it.
    """

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise RnnkitError(f"unknown activation '{activation}' (choose tanh or relu)")
        self.num_inputs, self.num_hiddens, self.sigma, self.activation = num_inputs, num_hiddens, sigma, activation
        self.W_xh = nn.Parameter(torch.randn(num_inputs, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))

    def forward(self, inputs: torch.Tensor, state: State = None) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dtype in (torch.int64, torch.int32):
            projected = F.embedding(inputs, self.W_xh) + self.b_h  # (T, B, H)
        else:
            projected = inputs @ self.W_xh + self.b_h
        if isinstance(state, (tuple, list)):
            (state,) = state
        if state is None:
            state = projected.new_zeros(projected.shape[1:])
        return recurrence(projected, state, self.W_hh, self.activation)


def recurrence(projected: torch.Tensor, state: torch.Tensor, W_hh: torch.Tensor,
               activation: str = "tanh") -> tuple[torch.Tensor, torch.Tensor]:
    """``H_t = phi(projected_t + H_{t-1} @ W_hh)`` for t = 1..T; returns (outputs (T, B, H), H_T)."""
    phi = ACTIVATIONS[activation]
    outputs = []
    for x in projected:
        state = phi(torch.addmm(x, state, W_hh))
        outputs.append(state)
    return torch.stack(outputs), state


class Recurrent(nn.Module):
    """PyTorch's ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (layers, dropout, tanh or relu), time-major."""

    def __init__(self, kind: str, num_inputs: int, num_hiddens: int, num_layers: int = 1,
                 dropout: float = 0.0, activation: str = "tanh") -> None:
        super().__init__()
        self.kind, self.num_inputs, self.num_hiddens = kind, num_inputs, num_hiddens
        if kind == "rnn":
            if activation not in ACTIVATIONS:
                raise RnnkitError(f"unknown activation '{activation}' (choose tanh or relu)")
            self.rnn = nn.RNN(num_inputs, num_hiddens, num_layers, nonlinearity=activation, dropout=dropout)
        elif kind in ("gru", "lstm"):
            if activation != "tanh":
                raise RnnkitError(f"--activation applies to --model rnn and scratch only, not {kind}")
            self.rnn = (nn.GRU if kind == "gru" else nn.LSTM)(num_inputs, num_hiddens, num_layers, dropout=dropout)
        else:
            raise RnnkitError(f"unknown recurrent layer '{kind}'")

    def forward(self, inputs: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        if inputs.dtype in (torch.int64, torch.int32):
            inputs = F.one_hot(inputs, self.num_inputs).to(self.rnn.weight_ih_l0.dtype)
        return self.rnn(inputs, state)


class RNNLM(nn.Module):
    """Language model: input encoding -> recurrent layer -> linear output layer.

    ``forward(X (B, T) int64, state) -> (logits (T, B, V), state)``; logits are time-major so that
    the output layer is one GEMM over all T*B positions. With ``embedding_dim`` the input is a
    learned ``nn.Embedding`` (the §9.5 exercise); without, one-hot, as the book.
    """

    def __init__(self, rnn: nn.Module, vocab_size: int, embedding_dim: int | None = None) -> None:
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        self.head = nn.Linear(rnn.num_hiddens, vocab_size)
        if isinstance(rnn, RNNScratch):  # d2l's W_hq ~ N(0, sigma^2), b_q = 0
            nn.init.normal_(self.head.weight, std=rnn.sigma)
            nn.init.zeros_(self.head.bias)

    def forward(self, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        inputs = X.T if self.embedding is None else self.embedding(X.T)
        outputs, state = self.rnn(inputs, state)
        return self.head(outputs), state

    def initial_logits(self) -> torch.Tensor:
        """Logits (V,) from a fresh (all-zero) hidden state: where generation with no prefix starts."""
        return self.head.bias.detach().clone()


def detach_state(state: State) -> State:
    """Cut the graph behind a carried state (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def build_model(kind: str, vocab_size: int, hidden: int, layers: int = 1, dropout: float = 0.0,
                embedding: int = 0, activation: str = "tanh") -> RNNLM:
    """The model a run's config describes (``embedding=0`` means one-hot input)."""
    if kind not in MODEL_KINDS:
        raise RnnkitError(f"unknown model '{kind}' (choose from {', '.join(MODEL_KINDS)})")
    for name, value, low in (("hidden", hidden, 1), ("layers", layers, 1), ("embedding", embedding, 0)):
        if not isinstance(value, int) or not low <= value <= 1_000_000:
            raise RnnkitError(f"{name} must be an integer between {low} and 1000000, got {value}")
    if not 0 <= dropout < 1:
        raise RnnkitError(f"dropout must be in [0, 1), got {dropout}")
    num_inputs = embedding or vocab_size
    if kind == "scratch":
        if layers != 1 or dropout:
            raise RnnkitError("--model scratch has one layer and no dropout; use rnn/gru/lstm for more")
        rnn = RNNScratch(num_inputs, hidden, activation=activation)
    else:
        rnn = Recurrent(kind, num_inputs, hidden, layers, dropout, activation)
    return RNNLM(rnn, vocab_size, embedding or None)
