"""Recurrent layers, time-major: ``layer(inputs, state) -> (outputs (T, B, H), state)``.

``inputs`` are token indices ``(T, B)`` (one-hot input, done as a row lookup) or vectors
``(T, B, D)``. Shapes: T steps, B sequences, V vocabulary, D input size, H hidden units.

Two layers: :class:`RNNScratch` (d2l §9.5, one bias, N(0, sigma^2) weights) and
:class:`Recurrent` (PyTorch's ``nn.RNN``/``nn.GRU``/``nn.LSTM``). Both can run :func:`recurrence`,
rnnkit's simple-RNN loop with hand-written backpropagation through time, which is faster on the
CPU than ``nn.RNN`` for the book's model; :class:`Recurrent` otherwise runs its PyTorch module.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.models.state import State

ACTIVATIONS = ("tanh", "relu")


def is_token_ids(inputs: torch.Tensor) -> bool:
    """Whether ``inputs`` are token indices (one-hot input) rather than vectors."""
    return inputs.dtype in (torch.int64, torch.int32)


class RNNScratch(nn.Module):
    """d2l §9.5's RNN: ``H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)`` with N(0, sigma^2) weights.

    Token indices select rows of ``W_xh + b_h``, which is exactly ``one_hot(X) @ W_xh + b_h``
    without the matmul. The state is ``(B, H)``; a 1-tuple ``(H,)`` is accepted too, as d2l passes it.
    It always runs :func:`recurrence` (its math is that recurrence), on every device.
    """

    one_hot_recurrence = True  # one_hot_weights() gives its whole math for one-hot input

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise RnnkitError(f"unknown activation '{activation}' (choose tanh or relu)")
        self.num_inputs, self.num_hiddens, self.sigma, self.activation = num_inputs, num_hiddens, sigma, activation
        self.W_xh = nn.Parameter(torch.randn(num_inputs, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))

    def one_hot_weights(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(table (V, H), W (H, H), activation) with ``H_t = phi(table[x_t] + H_{t-1} @ W)``."""
        return self.W_xh + self.b_h, self.W_hh, self.activation

    def runs_recurrence(self, one_hot: bool, device: torch.device) -> bool:
        """Always: this layer is :func:`recurrence`, for ids and vectors on every device."""
        return True

    def forward(self, inputs: torch.Tensor, state: State = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(state, (tuple, list)):
            (state,) = state
        if inputs.dtype in (torch.int64, torch.int32):
            return recurrence(inputs, *self.one_hot_weights(), state=state)
        return recurrence(
            torch.addmm(self.b_h, inputs.flatten(0, -2), self.W_xh).view(*inputs.shape[:-1], -1),
            None,
            self.W_hh,
            self.activation,
            state,
        )

    def run_recurrence(
        self, inputs: torch.Tensor, state: State = None, weight_drop: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`; the scratch model has no DropConnect (``weight_drop`` must be 0)."""
        if weight_drop:
            raise RnnkitError("weight drop applies to --model rnn, gru and lstm, not scratch")
        return self(inputs, state)


def recurrence(
    inputs: torch.Tensor,
    table: torch.Tensor | None,
    W_hh: torch.Tensor,
    activation: str = "tanh",
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``H_t = phi(P_t + H_{t-1} @ W_hh)`` for t = 1..T; returns (outputs (T, B, H), H_T).

    ``P`` is ``table[inputs]`` for token indices ``inputs`` (T, B) and a table (V, H) — the one-hot
    product as a row lookup — or ``inputs`` (T, B, H) itself when ``table`` is None. The step loop
    builds no autograd graph: :class:`_Recurrence` does backpropagation through time by hand, with
    the weight gradients as single GEMMs over all steps (equal to autograd's, see the tests).
    """
    if state is None:
        state = W_hh.new_zeros(inputs.shape[1], W_hh.shape[0])
    outputs = _Recurrence.apply(inputs, table, state, W_hh, activation)
    return outputs, outputs[-1]


class _Recurrence(torch.autograd.Function):
    """Forward and backward-through-time of the simple RNN recurrence (see :func:`recurrence`)."""

    @staticmethod
    def forward(ctx, inputs, table, state, W_hh, activation):
        if table is None:
            outputs = inputs.clone(memory_format=torch.contiguous_format)
        else:
            outputs = table.new_empty(*inputs.shape, table.shape[1])
            torch.index_select(table, 0, inputs.reshape(-1), out=outputs.view(-1, table.shape[1]))
        act_ = torch.tanh_ if activation == "tanh" else torch.relu_
        h = state
        for t in range(outputs.shape[0]):
            h = act_(outputs[t].addmm_(h, W_hh))
        ctx.activation, ctx.num_rows = activation, None if table is None else table.shape[0]
        ctx.save_for_backward(inputs if table is not None else None, outputs, state, W_hh)
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs):
        ids, outputs, state, W_hh = ctx.saved_tensors
        T, _, H = outputs.shape
        grad_pre = grad_outputs.clone(memory_format=torch.contiguous_format)  # becomes dL/d(pre-activation)
        W_hh_T = W_hh.t()
        for t in range(T - 1, -1, -1):
            if t < T - 1:  # dL/dH_t = grad_outputs_t + dL/dpre_{t+1} @ W_hh^T
                grad_pre[t].addmm_(grad_pre[t + 1], W_hh_T)
            if ctx.activation == "tanh":
                torch.ops.aten.tanh_backward.grad_input(grad_pre[t], outputs[t], grad_input=grad_pre[t])
            else:
                torch.ops.aten.threshold_backward.grad_input(grad_pre[t], outputs[t], 0, grad_input=grad_pre[t])
        grad_h = grad_pre[0] @ W_hh_T
        grad_W = state.t() @ grad_pre[0]
        if T > 1:
            grad_W.addmm_(outputs[:-1].reshape(-1, H).t(), grad_pre[1:].reshape(-1, H))
        if ctx.num_rows is None:
            return grad_pre, None, grad_h, grad_W, None
        grad_table = grad_pre.new_zeros(ctx.num_rows, H).index_add_(0, ids.reshape(-1), grad_pre.view(-1, H))
        return None, grad_table, grad_h, grad_W, None


class Recurrent(nn.Module):
    """PyTorch's ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (layers, dropout, tanh or relu), time-major.

    The state is ``(L, B, H)``, an LSTM's ``(h, c)``. :meth:`forward` runs :meth:`run_recurrence`
    where :meth:`runs_recurrence` says so (a one-layer ``nn.RNN`` fed token ids on the CPU: the
    same math, faster there), else :meth:`run_module`, the PyTorch module (cuDNN on CUDA).
    """

    def __init__(
        self,
        kind: str,
        num_inputs: int,
        num_hiddens: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        activation: str = "tanh",
    ) -> None:
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
        self.register_buffer("identity", torch.eye(num_inputs), persistent=False)
        # one simple recurrence (a one-layer nn.RNN): one_hot_weights() gives its whole math for one-hot input
        self.one_hot_recurrence = kind == "rnn" and num_layers == 1

    def one_hot_weights(self) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """For a one-layer ``nn.RNN``: (table (V, H), W (H, H), activation) with
        ``H_t = phi(table[x_t] + H_{t-1} @ W)`` — the same math as nn.RNN on one-hot inputs."""
        if not self.one_hot_recurrence:
            return None
        rnn = self.rnn
        table = (rnn.weight_ih_l0.t() + (rnn.bias_ih_l0 + rnn.bias_hh_l0)).contiguous()  # row-major: rows are read
        return table, rnn.weight_hh_l0.t(), rnn.nonlinearity

    def runs_recurrence(self, one_hot: bool, device: torch.device) -> bool:
        """Whether inputs of this kind (token ids or not) on ``device`` run :func:`recurrence`: a
        one-layer ``nn.RNN`` fed token ids on the CPU, where the one-hot product is a row lookup
        and the hand-written BPTT is faster than ``nn.RNN``'s."""
        return one_hot and device.type == "cpu" and self.one_hot_recurrence

    def forward(
        self, inputs: torch.Tensor, state: State = None, weight_drop: float = 0.0
    ) -> tuple[torch.Tensor, State]:
        """``weight_drop``: DropConnect on the hidden-to-hidden weights, one mask for the whole call
        (the same dropped connections at every time step; Merity et al.'s AWD-LSTM)."""
        if self.runs_recurrence(is_token_ids(inputs), inputs.device):
            return self.run_recurrence(inputs, state, weight_drop)
        return self.run_module(inputs, state, weight_drop)

    def run_recurrence(
        self, ids: torch.Tensor, state: State = None, weight_drop: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A one-layer ``nn.RNN`` on token ids (T, B) as :func:`recurrence`; state (1, B, H).
        DropConnect drops entries of ``W_hh`` (one mask for the call)."""
        table, W_hh, activation = self.one_hot_weights()
        outputs, last = recurrence(
            ids,
            table,
            F.dropout(W_hh, weight_drop) if weight_drop else W_hh,
            activation,
            None if state is None else state[0],
        )
        return outputs, last.unsqueeze(0)

    def run_module(
        self, inputs: torch.Tensor, state: State = None, weight_drop: float = 0.0
    ) -> tuple[torch.Tensor, State]:
        """The PyTorch module; token ids become one-hot rows of the identity (without F.one_hot's
        int64 scatter). DropConnect swaps in dropped copies of the ``weight_hh_l*`` through
        ``torch.func.functional_call`` (masks drawn layer by layer)."""
        if is_token_ids(inputs):
            inputs = F.embedding(inputs, self.identity)
        if weight_drop:
            dropped = {
                name: F.dropout(getattr(self.rnn, name), weight_drop)
                for name in self.rnn._flat_weights_names
                if name.startswith("weight_hh")
            }
            with warnings.catch_warnings():  # cuDNN copies weights outside its flat buffer (dropped ones always
                # are) and would warn at every step
                warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous")
                return torch.func.functional_call(self.rnn, dropped, (inputs, state))
        return self.rnn(inputs, state)
