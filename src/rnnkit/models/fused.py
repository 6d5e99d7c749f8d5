"""The fused-kernel path: the book's model's loss and every gradient from one compiled call.

Applies to a one-layer simple RNN (``RNNScratch`` or a one-layer ``nn.RNN``) with one-hot input,
float32 on the CPU, without dropout (:func:`rnnkit.models.paths.choose_path` decides); the
kernel is :mod:`rnnkit.kernels`. It computes ``H_t = phi(table[x_t] + H_{t-1} W)``, the logits
``H_t W_q^T + b_q`` and the summed cross-entropy, with backpropagation through time, in one pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rnnkit import kernels
from rnnkit.models.layers import Recurrent, recurrence
from rnnkit.models.losses import linear_cross_entropy
from rnnkit.models.state import State

if TYPE_CHECKING:
    from rnnkit.models.lm import RNNLM


def fused_loss(model: RNNLM, X: torch.Tensor, Y: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
    """Summed loss of predicting ``Y`` (B, T) from ``X`` (B, T), and the final state (the layer's
    format: (1, B, H) for ``nn.RNN``, (B, H) for ``RNNScratch``), by the compiled kernel."""
    kernel = kernels.rnn_lm_kernel()
    table, W, activation = model.rnn.one_hot_weights()
    recurrent = isinstance(model.rnn, Recurrent)  # nn.RNN's state is (1, B, H), RNNScratch's (B, H)
    if isinstance(state, (tuple, list)):
        (state,) = state
    h0 = X.new_zeros(X.shape[0], W.shape[0], dtype=W.dtype) if state is None else (state[0] if recurrent else state)
    head = model.head
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (h0, table, W, head.weight, head.bias))
    total, last = _FusedRNNLoss.apply(
        X.long(), Y.long(), h0, table, W, head.weight, head.bias, activation == "relu", need_grad, kernel
    )
    return total, (last.unsqueeze(0) if recurrent else last)


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
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=True)
    )
    return [grad_table, grad_W, grad_h0, grad_weight, grad_bias]
