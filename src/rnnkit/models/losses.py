"""The output layer's loss without keeping logits: ``linear_cross_entropy``."""

from __future__ import annotations

import torch


def linear_cross_entropy(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
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
