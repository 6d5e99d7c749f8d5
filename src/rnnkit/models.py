"""Character-level RNN language models (read top to bottom).

Shapes: T = num_steps, B = batch size, V = vocabulary size, H = hidden units, E = embedding size.
Recurrent layers are time-major: ``layer(inputs, state) -> (outputs (T, B, H), state)`` where
``inputs`` is either token indices ``(T, B)`` (one-hot input, done as a row lookup) or vectors
``(T, B, D)``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.errors import RnnkitError

MODEL_KINDS = ("rnn", "gru", "lstm", "scratch")
ACTIVATIONS = ("tanh", "relu")

MAX_PARAMETERS = 2_000_000_000  # a sanity bound that turns typos like --hidden 1000000 into an error

State = torch.Tensor | tuple[torch.Tensor, ...] | None


class RNNScratch(nn.Module):
    """d2l §9.5's RNN: ``H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)`` with N(0, sigma^2) weights.

    Token indices select rows of ``W_xh + b_h``, which is exactly ``one_hot(X) @ W_xh + b_h``
    without the matmul. The state is ``(B, H)``; a 1-tuple ``(H,)`` is accepted too, as d2l passes it.
    """

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

    def forward(self, inputs: torch.Tensor, state: State = None) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(state, (tuple, list)):
            (state,) = state
        if inputs.dtype in (torch.int64, torch.int32):
            return recurrence(inputs, *self.one_hot_weights(), state=state)
        return recurrence(torch.addmm(self.b_h, inputs.flatten(0, -2), self.W_xh).view(*inputs.shape[:-1], -1),
                          None, self.W_hh, self.activation, state)


def recurrence(inputs: torch.Tensor, table: torch.Tensor | None, W_hh: torch.Tensor, activation: str = "tanh",
               state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        self.register_buffer("identity", torch.eye(num_inputs), persistent=False)

    def one_hot_weights(self) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """For a one-layer ``nn.RNN``: (table (V, H), W (H, H), activation) with
        ``H_t = phi(table[x_t] + H_{t-1} @ W)`` — the same math as nn.RNN on one-hot inputs."""
        rnn = self.rnn
        if self.kind != "rnn" or rnn.num_layers != 1:
            return None
        table = (rnn.weight_ih_l0.t() + (rnn.bias_ih_l0 + rnn.bias_hh_l0)).contiguous()  # row-major: rows are read
        return table, rnn.weight_hh_l0.t(), rnn.nonlinearity

    def forward(self, inputs: torch.Tensor, state: State = None,
                weight_drop: float = 0.0) -> tuple[torch.Tensor, State]:
        """``weight_drop``: DropConnect on the hidden-to-hidden weights, one mask for the whole call
        (the same dropped connections at every time step; Merity et al.'s AWD-LSTM)."""
        one_hot = inputs.dtype in (torch.int64, torch.int32)
        if one_hot and inputs.device.type == "cpu" and (weights := self.one_hot_weights()) is not None:
            # The book's model on the CPU: the one-hot product is a row lookup and BPTT runs in
            # :class:`_Recurrence` (faster here than nn.RNN).
            table, W_hh, activation = weights
            outputs, last = recurrence(inputs, table, F.dropout(W_hh, weight_drop) if weight_drop else W_hh,
                                       activation, None if state is None else state[0])
            return outputs, last.unsqueeze(0)
        if one_hot:  # rows of the identity: the one-hot vectors, without F.one_hot's int64 scatter
            inputs = F.embedding(inputs, self.identity)
        if weight_drop:
            dropped = {name: F.dropout(getattr(self.rnn, name), weight_drop)
                       for name in self.rnn._flat_weights_names if name.startswith("weight_hh")}
            with warnings.catch_warnings():  # cuDNN copies weights outside its flat buffer (dropped ones always
                # are) and would warn at every step
                warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous")
                return torch.func.functional_call(self.rnn, dropped, (inputs, state))
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

    io_dropout = 0.0  # dropout on the learned embedding and on the recurrent outputs, in training only
    weight_drop = 0.0  # DropConnect on the recurrent layer's hidden-to-hidden weights, in training only

    def hidden(self, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        """Recurrent outputs (T, B, H) for tokens X (B, T), and the final state. In training,
        ``io_dropout`` drops out the embedding and the outputs, as in Zaremba et al.'s regularised
        LSTM language model, and ``weight_drop`` the hidden-to-hidden weights (one mask per call),
        as in Merity et al.'s AWD-LSTM."""
        drop = self.io_dropout if self.training else 0.0
        inputs = X.T if self.embedding is None else F.dropout(self.embedding(X.T), drop, True)
        if self.training and self.weight_drop:
            outputs, state = self.rnn(inputs, state, weight_drop=self.weight_drop)
        else:
            outputs, state = self.rnn(inputs, state)
        return (F.dropout(outputs, drop, True) if drop else outputs), state

    def forward(self, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        outputs, state = self.hidden(X, state)
        return self.head(outputs), state

    def loss(self, X: torch.Tensor, Y: torch.Tensor, state: State = None,
             reduction: str = "mean") -> tuple[torch.Tensor, State]:
        """Cross-entropy of predicting ``Y`` (B, T) from ``X`` (B, T); the logits are never kept.

        The book's model on the CPU (a one-layer RNN with one-hot input) runs in rnnkit's
        compiled kernel when it is available (:mod:`rnnkit.kernels`); the same math otherwise."""
        fast = self._cpu_kernel(X)
        if fast is not None:
            kernel, (table, W, activation) = fast
            recurrent = isinstance(self.rnn, Recurrent)  # nn.RNN's state is (1, B, H), RNNScratch's (B, H)
            if isinstance(state, (tuple, list)):
                (state,) = state
            h0 = X.new_zeros(X.shape[0], W.shape[0], dtype=W.dtype) if state is None else (
                state[0] if recurrent else state)
            need_grad = torch.is_grad_enabled() and any(
                t.requires_grad for t in (h0, table, W, self.head.weight, self.head.bias))
            total, last = _FusedRNNLoss.apply(X.long(), Y.long(), h0, table, W, self.head.weight, self.head.bias,
                                              activation == "relu", need_grad, kernel)
            state = last.unsqueeze(0) if recurrent else last
        else:
            outputs, state = self.hidden(X, state)
            total = linear_cross_entropy(outputs.reshape(-1, outputs.shape[-1]), self.head.weight, self.head.bias,
                                         Y.T.reshape(-1))
        return (total / Y.numel() if reduction == "mean" else total), state

    def prepare_kernel(self) -> bool:
        """Load (building it if needed) the compiled kernel now if this model uses it, so that a build
        is not timed as training. Returns whether the kernel applies to this model on its device."""
        probe = torch.zeros(1, 1, dtype=torch.int64, device=self.head.weight.device)
        return self._cpu_kernel(probe) is not None

    def _cpu_kernel(self, X: torch.Tensor) -> tuple[object, tuple[torch.Tensor, torch.Tensor, str]] | None:
        """(rnnkit's compiled kernel, the layer's one-hot weights) if the kernel applies, else None."""
        if (X.device.type != "cpu" or self.embedding is not None or X.dtype not in (torch.int64, torch.int32)
                or (self.training and (self.io_dropout or self.weight_drop))
                or self.head.weight.dtype != torch.float32 or _autocast_on_cpu()
                or not hasattr(self.rnn, "one_hot_weights")):
            return None
        weights = self.rnn.one_hot_weights()
        if weights is None:
            return None
        from rnnkit.kernels import rnn_lm_kernel

        kernel = rnn_lm_kernel()
        return None if kernel is None else (kernel, weights)

    def initial_logits(self) -> torch.Tensor:
        """Logits (V,) from a fresh (all-zero) hidden state: where generation with no prefix starts."""
        return self.head.bias.detach().clone()

    def lean_step(self):
        """Generation's step ``(ids, state) -> (logits (V,), state)`` for the book's model on the CPU
        in evaluation (one-layer RNN or RNNScratch, one-hot input), without the layer's general
        machinery: per token a table row, one ``addmm`` and the activation, then the output layer
        for the last token only: about a fifth of :meth:`forward`'s time per token. The same
        operations as ``forward`` step by step, but its logits can differ in the last bits where
        ``forward`` computes the output layer for several tokens at once (a prefix): ``rnnkit
        generate`` and ``rnnkit serve`` both step with this, so a seed gives the same text in both.
        None where it does not apply."""
        if (self.training or self.embedding is not None or self.head.weight.device.type != "cpu"
                or not hasattr(self.rnn, "one_hot_weights")):
            return None
        weights = self.rnn.one_hot_weights()
        if weights is None:
            return None
        table, W_hh = weights[0].detach(), weights[1].detach()
        activation = torch.tanh_ if weights[2] == "tanh" else torch.relu_
        head_weight_t, head_bias = self.head.weight.detach().t(), self.head.bias.detach()
        layered = not isinstance(self.rnn, RNNScratch)  # nn.RNN's state is (1, 1, H), RNNScratch's (1, H)

        def step(ids, state):
            h = W_hh.new_zeros(1, W_hh.shape[0]) if state is None else (state[0] if layered else state)
            for i in ids:
                h = activation(torch.addmm(table[i:i + 1], h, W_hh))
            return torch.addmm(head_bias, h, head_weight_t)[0], (h.unsqueeze(0) if layered else h)

        return step


def layer_states(model: RNNLM, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """What each recurrent layer holds after each token of one sequence ``ids`` (T,), from a fresh
    state: per layer ``(h (T, H), c (T, H) or None)``, ``c`` being an LSTM's cell state. The last
    layer's ``h`` is :meth:`RNNLM.hidden`'s output (without dropout). For looking inside a model."""
    X = ids.view(1, -1)
    with evaluating(model):
        if isinstance(model.rnn, RNNScratch):
            outputs, _ = model.rnn(X.T)
            return [(outputs[:, 0], None)]
        rnn = model.rnn.rnn
        inputs = model.embedding(ids) if model.embedding is not None else model.rnn.identity[ids]  # (T, input)
        kind = model.rnn.kind
        cell = {"gru": torch.gru_cell, "lstm": torch.lstm_cell,
                "rnn": torch.rnn_relu_cell if getattr(rnn, "nonlinearity", "") == "relu" else torch.rnn_tanh_cell}[kind]
        layers = []
        for layer in range(rnn.num_layers):
            weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = inputs.new_zeros(1, rnn.hidden_size)
            c = inputs.new_zeros(1, rnn.hidden_size) if kind == "lstm" else None
            hs, cs = [], []
            for x in inputs.unsqueeze(1):  # (1, input) per step
                if kind == "lstm":
                    h, c = cell(x, (h, c), *weights)
                    cs.append(c)
                else:
                    h = cell(x, h, *weights)
                hs.append(h)
            inputs = torch.cat(hs)
            layers.append((inputs, torch.cat(cs) if cs else None))
        return layers


class _FusedRNNLoss(torch.autograd.Function):
    """Summed loss of the book's model from the compiled kernel, which computes the gradients of
    every input in the same pass (``need_grad``: grad mode is on and a weight requires grad);
    backward only scales them.

    The final state is differentiable too: where a later computation uses it (a caller who
    backpropagates through several calls, carrying the state), backward recomputes the step with
    the same math as PyTorch operations and autograd, which gives both gradients exactly."""

    @staticmethod
    def forward(ctx, X, Y, h0, table, W, head_weight, head_bias, relu, need_grad, kernel):
        loss, last, *grads = kernel.rnn_lm_loss(X, Y, h0, table, W, head_weight, head_bias, relu, need_grad)
        ctx.set_materialize_grads(False)  # an unused final state gets no gradient: the fast path
        ctx.grads = grads  # table, W, h0, head weight, head bias
        ctx.relu = relu
        ctx.save_for_backward(X, Y, h0, table, W, head_weight, head_bias)
        return loss, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_last):
        if grad_last is None:
            grad_table, grad_W, grad_h0, grad_weight, grad_bias = (g * grad_loss for g in ctx.grads)
        else:
            grad_table, grad_W, grad_h0, grad_weight, grad_bias = _recomputed_gradients(ctx, grad_loss, grad_last)
        return None, None, grad_h0, grad_table, grad_W, grad_weight, grad_bias, None, None, None


def _recomputed_gradients(ctx, grad_loss, grad_last) -> list[torch.Tensor]:
    """Gradients of (loss, final state) for :class:`_FusedRNNLoss`, recomputed with autograd."""
    X, Y, *inputs = ctx.saved_tensors
    h0, table, W, head_weight, head_bias = leaves = [t.detach().requires_grad_() for t in inputs]
    with torch.enable_grad():
        outputs, last = recurrence(X.T, table, W, "relu" if ctx.relu else "tanh", h0)
        loss = linear_cross_entropy(outputs.reshape(-1, outputs.shape[-1]), head_weight, head_bias, Y.T.reshape(-1))
        grad_loss = torch.zeros_like(loss) if grad_loss is None else grad_loss
        grads = torch.autograd.grad((loss, last), leaves, (grad_loss, grad_last), allow_unused=True)
    grad_h0, grad_table, grad_W, grad_weight, grad_bias = (
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=True))
    return [grad_table, grad_W, grad_h0, grad_weight, grad_bias]


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def linear_cross_entropy(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``inputs @ weight.T + bias`` (N, V) against ``targets`` (N,).

    Equal to ``F.cross_entropy(F.linear(inputs, weight, bias), targets, reduction="sum")``; the
    backward pass reuses the saved log-probabilities in place instead of keeping logits around.
    Under autocast (e.g. bf16 recurrent layers) it runs in the weight's precision.
    """
    if inputs.dtype != weight.dtype:
        inputs = inputs.to(weight.dtype)
    with torch.autocast(inputs.device.type, enabled=False):
        return _LinearCrossEntropy.apply(inputs, weight, bias, targets)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, bias, targets):
        log_probs = torch.log_softmax(torch.addmm(bias, inputs, weight.t()), 1)
        flat_targets = torch.arange(len(targets), device=targets.device) * log_probs.shape[1] + targets
        ctx.save_for_backward(inputs, weight, log_probs, flat_targets)
        return -log_probs.view(-1).take(flat_targets).sum()  # take: faster than gather here

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        inputs, weight, log_probs, flat_targets = ctx.saved_tensors
        grad = log_probs.exp_()  # softmax; the saved tensor is not needed again
        flat = grad.view(-1)
        flat.index_put_((flat_targets,), flat.take(flat_targets) - 1)  # softmax - one_hot(targets)
        grad.mul_(grad_loss)
        grad_bias = torch.mv(grad.t(), grad.new_ones(len(grad)))  # faster than grad.sum(0) here
        return grad @ weight, grad.t() @ inputs, grad_bias, None


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Inference mode with the model in eval mode (dropout off), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def state_batch_dim(model: RNNLM) -> int:
    """The batch dimension of the model's state tensors: 0 for :class:`RNNScratch` (B, H), 1 for
    PyTorch's layers (layers, B, H)."""
    return 0 if isinstance(model.rnn, RNNScratch) else 1


def detach_state(state: State) -> State:
    """Cut the graph behind a carried state (truncated backpropagation through time)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def join_states(states: list, batch_dim: int) -> State:
    """One batched state from per-stream states (tensors, or tuples of tensors for an LSTM)."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=batch_dim) for parts in zip(*states, strict=True))
    return torch.cat(states, dim=batch_dim)


def split_state(state: State, batch_dim: int) -> list:
    """Per-stream states (each with a batch of one) from a batched state."""
    if isinstance(state, tuple):
        return list(zip(*(part.split(1, dim=batch_dim) for part in state), strict=True))
    return list(state.split(1, dim=batch_dim))


GATES = {"rnn": 1, "scratch": 1, "gru": 3, "lstm": 4}


def parameter_count(kind: str, vocab_size: int, hidden: int, layers: int = 1, embedding: int = 0) -> int:
    """Parameters of :func:`build_model`'s model, computed without building it."""
    gates, num_inputs = GATES[kind], embedding or vocab_size
    return (gates * hidden * (num_inputs + hidden + 2) + (layers - 1) * gates * hidden * (2 * hidden + 2)
            + hidden * vocab_size + vocab_size + vocab_size * embedding)


def check_parameter_count(kind: str, vocab_size: int, hidden: int, layers: int = 1, embedding: int = 0) -> int:
    """The model's parameter count; an error above :data:`MAX_PARAMETERS` (a typo, not a model)."""
    count = parameter_count(kind, vocab_size, hidden, layers, embedding)
    if count > MAX_PARAMETERS:
        raise RnnkitError(f"model would have {count:,} parameters ({count * 4 / 2**30:.1f} GiB); "
                          f"the limit is {MAX_PARAMETERS:,}: lower --hidden, --layers or --embedding")
    return count


def build_model(kind: str, vocab_size: int, hidden: int, layers: int = 1, dropout: float = 0.0,
                embedding: int = 0, activation: str = "tanh", tie_weights: bool = False) -> RNNLM:
    """The model a run's config describes (``embedding=0`` means one-hot input). ``tie_weights``:
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
    model = RNNLM(rnn, vocab_size, embedding or None)
    if tie_weights:
        if embedding != hidden:
            raise RnnkitError(f"tying weights needs --embedding equal to --hidden (the output layer is "
                              f"{vocab_size}x{hidden}, the embedding {vocab_size}x{embedding or 'one-hot'})")
        model.head.weight = model.embedding.weight
    return model
