"""Training across processes and machines: ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m rnnkit train ...`` starts N processes and gives each its place in
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`world_from_environment` reads them and :func:`start` joins the process group (gloo on the
CPU, NCCL on CUDA). What a process does with its place:

- data: each batch of the global ``--batch-size`` is cut into ``WORLD_SIZE`` parts of consecutive
  rows (:func:`rnnkit.data.part_rows`); process ``RANK`` gathers only its part (from the memory map
  for ``--data``), so that together the processes read exactly the batches of a one-process run;
- gradients: each process back-propagates the *sum* of its part's losses; one all-reduce adds
  them up and the token count with them, and every process divides by the global count
  (:func:`all_reduce_step`), which is the one-process mean whatever the part sizes (an uneven
  last batch included). Clipping and the optimizer step then run identically everywhere, so the
  weights stay equal without being sent. This is data parallelism as DDP does it, with one
  difference: PyTorch's ``DistributedDataParallel`` overlaps bucketed all-reduces with the
  backward pass, but a recurrent network's weights are shared by every time step, so all their
  gradients are complete only at the very end of backpropagation through time: there is nothing
  to overlap, and one flat all-reduce per step is what remains;
- decisions: whether to stop (a signal, the time budget), validate or save are made from the
  all-reduced flags, so every process takes the same branch at the same step; validation runs on
  rank 0 and its result is broadcast;
- writing: only rank 0 writes checkpoints, metrics and plots (atomically, as in one process).

A process that dies closes its connections: the others fail in their next collective, and
torchrun stops the job; a machine that vanishes without closing them is noticed after
``--dist-timeout`` seconds.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rnnkit.errors import RnnkitError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1, not started)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    started: bool = False  # joined a torch.distributed process group

    @property
    def part(self) -> tuple[int, int]:
        return self.rank, self.size

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes checkpoints and validates."""
        return self.rank == 0


ONE_PROCESS = World()


def world_from_environment(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in ``env`` (``os.environ``): none of its variables set means
    one process; some but not all, or values that do not fit together, are an error."""
    env = os.environ if env is None else env
    given = [name for name in TORCHRUN_VARIABLES if env.get(name)]
    if not given:
        return ONE_PROCESS
    missing = [name for name in TORCHRUN_VARIABLES if name not in given]
    if missing:
        raise RnnkitError(
            f"torchrun's environment is half set ({', '.join(given)} set, {', '.join(missing)} not): "
            "start with torchrun --nproc-per-node N -m rnnkit train ..., or unset them"
        )
    try:
        rank, size, local_rank, port = (int(env[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"))
    except ValueError:
        raise RnnkitError(
            "RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers, got "
            + ", ".join(f"{n}={env[n]!r}" for n in TORCHRUN_VARIABLES if n != "MASTER_ADDR")
        ) from None
    if not (size >= 1 and 0 <= rank < size and 0 <= local_rank <= rank and 0 < port < 65536):
        raise RnnkitError(
            f"torchrun's environment does not fit together: RANK={rank}, WORLD_SIZE={size}, "
            f"LOCAL_RANK={local_rank}, MASTER_PORT={port}"
        )
    return World(rank, size, local_rank)


def check_batch(batch_size: int, world: World) -> None:
    """The batch is the processes' batch together: their number must divide it."""
    if batch_size % world.size:
        raise RnnkitError(
            f"--batch-size {batch_size} is the batch of all {world.size} processes together and "
            f"must be a multiple of their number"
        )


def start(world: World, device: torch.device, timeout_s: float) -> World:
    """Join the process group (gloo for the CPU, NCCL for CUDA): waits for every process, at most
    ``timeout_s``, which also bounds every later collective."""
    if world is ONE_PROCESS:
        return world
    if dist.is_initialized():
        return World(world.rank, world.size, world.local_rank, started=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RnnkitError(f"cannot join the other training processes ({backend}): {first_line(exc)}") from None
    return World(world.rank, world.size, world.local_rank, started=True)


def joined() -> bool:
    """Whether this process is in a process group now."""
    return dist.is_initialized()


def first_line(exc: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without a source-file prefix."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", str(exc).strip())
    text = text.splitlines()[0] if text else type(exc).__name__
    return text.split(". ")[0]


class PeerLost(RnnkitError):
    """A collective failed: another training process died, or did not answer within the timeout."""

    exit_status = 4


def collective(function):
    """Run a torch.distributed call; its failure (a peer gone, a timeout) becomes :class:`PeerLost`."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except RuntimeError as exc:
            raise PeerLost(
                f"another training process stopped answering ({first_line(exc)}); torchrun stops the "
                "job: resume it from its last checkpoint with --resume"
            ) from None

    return wrapped


COUNT_BASE = 4096  # the token count travels as two float32 digits in this base: exact below 2**36


@collective
def all_reduce_step(
    parameters: Iterable[torch.nn.Parameter], count: int, flags: list[float]
) -> tuple[int, list[float]]:
    """Sum every process's gradients (of its summed loss), its token ``count`` and its ``flags``
    (small integers) in one all-reduce; divide the gradients by the global count, so that they are
    the gradients of the one-process mean loss. Missing gradients (a process with no rows this
    batch) count as zeros. Returns the global count and the summed flags.

    One all-reduce, not one per tensor: on a small model its latency (about a millisecond with gloo
    between two processes on one machine) is what a step costs beyond its arithmetic."""
    parameters = list(parameters)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    extras = torch.tensor(
        [count // COUNT_BASE, count % COUNT_BASE, *flags], dtype=grads[0].dtype, device=grads[0].device
    )
    flat = torch.cat([*(g.reshape(-1) for g in grads), extras])
    dist.all_reduce(flat)
    size = len(flat) - len(extras)
    high, low, *summed = flat[size:].tolist()
    total = round(high) * COUNT_BASE + round(low)
    flat = flat[:size].div_(max(total, 1))
    offset = 0
    for p in parameters:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return total, summed


@collective
def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of each value over the processes (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@collective
def all_reduce_max(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


@collective
def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` (in place) with rank 0's."""
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


@collective
def barrier() -> None:
    """Wait for every process (e.g. for rank 0's last save, before any exits)."""
    dist.barrier()


@collective
def gather_rows(tensor: torch.Tensor, dim: int, world: World) -> torch.Tensor:
    """Every process's ``tensor`` (equally shaped) concatenated along ``dim`` in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)
