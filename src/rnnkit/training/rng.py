"""A run's own random number generator: model initialisation, dropout and the batches' order draw
from it, never from the caller's, so that ``Trainer(...)`` and ``fit()`` leave torch's global RNG as
they found it and a resumed run draws exactly what an uninterrupted one would have."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class RunRNG:
    """The RNG states (CPU, and the CUDA device's) of one run, swapped in while it trains."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.saved: dict[str, torch.Tensor] = {}
        self.active = False  # inside use(): the run's RNG is torch's global one

    @contextlib.contextmanager
    def use(self, seed: int | None = None) -> Iterator[None]:
        """Run the block with the run's RNG state as torch's global one (seeded with ``seed`` the
        first time), then give the caller's state back."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self.saved["torch"])
                if "cuda" in self.saved and devices:
                    torch.cuda.set_rng_state(self.saved["cuda"], self.device)
            self.active = True
            try:
                yield
            finally:
                self.active = False
                self.saved = self._global_states()

    def _global_states(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def state(self) -> dict[str, torch.Tensor]:
        """Copies of the states now: torch's global ones inside :meth:`use`, else the saved ones."""
        return {k: v.clone() for k, v in (self._global_states() if self.active else self.saved).items()}

    def load(self, states: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state`'s output (a CUDA state only where the run is on a CUDA device)."""
        self.saved = {"torch": states["torch"].clone()}
        if "cuda" in states and self.device.type == "cuda":
            self.saved["cuda"] = states["cuda"].clone()
