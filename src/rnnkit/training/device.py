"""Where a run trains: choosing the device, and checking that the run fits in its memory."""

from __future__ import annotations

import ctypes
import os

import torch

from rnnkit.config import TrainConfig
from rnnkit.errors import RnnkitError
from rnnkit.models import GATES, parameter_count


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a named device must exist here."""
    if name != "auto":
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise RnnkitError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RnnkitError("device cuda requested but CUDA is not available")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise RnnkitError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        elif device.type == "mps":
            if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
                raise RnnkitError("device mps requested but Apple's MPS is not available here")
        elif device.type != "cpu":
            raise RnnkitError(f"device '{name}' cannot train a model (auto, cpu, cuda, cuda:N or mps)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory instead of returning it to the OS.

    Training allocates and frees the same few multi-megabyte buffers every step; by default glibc
    serves them with fresh ``mmap`` pages and hands them back on ``free``, so every step pays
    thousands of page faults (measured: ~7000 per epoch of the book's model, 10-20% of its time).
    No effect on other platforms or allocators. Process-wide, so rnnkit's command calls it and the
    library does not: call it yourself before training in a process of your own.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocations below 1 GiB come from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not trim the heap top
    except (OSError, AttributeError):
        pass


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needed(config: TrainConfig, vocab_size: int) -> dict[str, int]:
    """Bytes a run needs, roughly, by what for: weights, their gradients, optimizer state and the
    snapshot kept to resume from (float32), and the activations of one training step."""
    params = parameter_count(config.model, vocab_size, config.hidden, config.layers, config.embedding)
    slots = 2 if config.optimizer in ("adam", "adamw") else 0
    gates = GATES[config.model]
    positions = config.batch_size * config.num_steps
    activations = positions * (config.hidden * config.layers * (2 * gates + 2) + 2 * vocab_size) * 4
    return {
        "weights and gradients": 2 * params * 4,
        "optimizer state and snapshot": (1 + 2 * slots) * params * 4,
        "activations of one step": activations,
    }


def check_memory(config: TrainConfig, vocab_size: int, device: torch.device) -> None:
    """Refuse a run that cannot fit in this machine's free memory, before allocating anything."""
    available = available_memory(device)
    needed = memory_needed(config, vocab_size)
    if available is not None and sum(needed.values()) > available:
        parts = ", ".join(f"{what} {size / 2**30:.1f} GiB" for what, size in needed.items())
        raise RnnkitError(
            f"this run needs about {sum(needed.values()) / 2**30:.1f} GiB ({parts}) but {device} has "
            f"{available / 2**30:.1f} GiB free; lower --hidden, --layers, --batch-size or --num-steps"
        )
