"""How one training step computes its gradients, chosen once per run.

- :class:`EagerStep`: the model's loss and its backward pass, as written (any device);
- :class:`GraphStep`: the same step captured once as a CUDA graph and replayed (a small model on a
  GPU is bound by kernel launches, not arithmetic);
- :class:`SharedStep`: one of torchrun's processes: its rows of the batch, then gradients averaged
  over every process (with the step's flags: stop, budget, validation and save agreed in the same
  all-reduce).

Each returns the mean loss (a 0-dim tensor), the state after the batch (None where nothing is
carried) and the flags agreed with the other processes (None where there are none); the
optimizer step is the trainer's.
"""

from __future__ import annotations

import torch

from rnnkit.config import TrainConfig
from rnnkit.distributed import World
from rnnkit.errors import RnnkitError
from rnnkit.models import RNNLM, State
from rnnkit.training.optim import clip_gradients, compute_gradients, compute_shared_gradients


class EagerStep:
    """Loss, backward and clipping, as written (:func:`compute_gradients`)."""

    name = "eager"
    shares_flags = False  # the flags are this process's own, read after the step

    def __init__(self, model: RNNLM, clip: float) -> None:
        self.model, self.clip = model, clip

    def __call__(
        self, X: torch.Tensor, Y: torch.Tensor, state: State, flags: list[float] | None
    ) -> tuple[torch.Tensor, State, list[float] | None]:
        loss, state = compute_gradients(self.model, X, Y, self.clip, state)
        return loss, state, None


class SharedStep(EagerStep):
    """This process's rows of the batch; gradients and ``flags`` summed over every process."""

    name = "distributed"
    shares_flags = True  # the flags go into the step's all-reduce: read before it

    def __call__(self, X, Y, state, flags):
        return compute_shared_gradients(self.model, X, Y, self.clip, state, flags)


class GraphStep(EagerStep):
    """The eager step captured as CUDA graphs (:class:`CapturedGradients`); carries no state."""

    name = "CUDA graphs"

    def __init__(self, model: RNNLM, clip: float) -> None:
        super().__init__(model, clip)
        self.captured = CapturedGradients(model, clip)

    def __call__(self, X, Y, state, flags):
        return self.captured.step(X, Y), None, None


def choose_step(model: RNNLM, config: TrainConfig, device: torch.device, world: World) -> EagerStep:
    """The step for this run: shared under torchrun; CUDA graphs on a CUDA device where the run
    allows them (:meth:`TrainConfig.graphs_possible`) unless ``--cuda-graphs off``; else eager."""
    if config.cuda_graphs == "on" and device.type != "cuda":
        raise RnnkitError(f"--cuda-graphs on needs a CUDA device, not {device}")
    if config.cuda_graphs == "on" and world.started:
        raise RnnkitError("--cuda-graphs on: a captured step has no all-reduce in it; not under torchrun")
    if world.started:
        return SharedStep(model, config.clip)
    if device.type == "cuda" and config.cuda_graphs != "off" and config.graphs_possible():
        return GraphStep(model, config.clip)
    return EagerStep(model, config.clip)


class CapturedGradients:
    """Loss, backward pass and gradient clipping of a training step, captured as a CUDA graph.

    Small models on a GPU are bound by kernel launches (hundreds per step, microseconds each), not
    arithmetic; replaying a captured graph launches them all at once. One graph per batch shape
    (the last batch of an epoch may be smaller). Gradients live in fixed tensors that every graph
    zeroes and fills; the optimizer step runs outside the graph, so any optimizer works.
    ``step(X, Y)`` fills the gradients and returns the mean loss (a fresh 0-dim tensor).
    """

    def __init__(self, model: RNNLM, clip: float) -> None:
        self.model, self.clip = model, clip
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        for p in self.parameters:
            p.grad = torch.zeros_like(p)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _gradients(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        for p in self.parameters:
            p.grad.zero_()
        loss, _ = self.model.loss(X, Y)
        loss.backward()  # accumulates into the fixed .grad tensors, in place
        if self.clip > 0:
            clip_gradients(self.parameters, self.clip)
        return loss.detach()

    def _capture(self, X: torch.Tensor, Y: torch.Tensor) -> tuple:
        static_X, static_Y = X.clone(), Y.clone()
        side = torch.cuda.Stream(X.device)
        side.wait_stream(torch.cuda.current_stream(X.device))
        with torch.cuda.stream(side):  # warm-up (library handles, workspaces); parameters are not changed
            for _ in range(2):
                self._gradients(static_X, static_Y)
        torch.cuda.current_stream(X.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._gradients(static_X, static_Y)
        return graph, static_X, static_Y, loss

    def step(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        key = (tuple(X.shape), tuple(Y.shape))
        if key not in self.graphs:
            self.graphs[key] = self._capture(X, Y)
        graph, static_X, static_Y, loss = self.graphs[key]
        static_X.copy_(X)
        static_Y.copy_(Y)
        graph.replay()
        return loss.clone()
