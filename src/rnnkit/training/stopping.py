"""When a run stops before its epochs: its time budget is spent, its steps are done, or validation
stopped improving. (A signal stops it too: :meth:`Trainer.request_stop`.)"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from rnnkit.config import TrainConfig
from rnnkit.errors import RnnkitError
from rnnkit.training import clock
from rnnkit.training.records import TrainingState

MIN_BUDGET_S = 5.0  # a time budget shorter than this leaves no room to train
VALIDATIONS_PER_BUDGET = 20  # a budget must hold at least this many validations' time


def stop_reason(config: TrainConfig, state: TrainingState, budget_spent: bool) -> str | None:
    """Why the run stops after the step just taken (None: it goes on). ``budget_spent`` is agreed by
    every process of a distributed run (the clock is read once per step, in its flags)."""
    if budget_spent:
        return f"time budget of {config.time_budget:g} s spent"
    if config.max_steps and state.step >= config.max_steps:
        return f"{config.max_steps} steps done"
    if config.patience and state.bad_evals >= config.patience:
        return f"no better validation loss in {config.patience} evaluations"
    return state.finished


def check_budget_room(budget_s: float, validation_s: float, spent_s: float = 0.0) -> None:
    """Refuse a time budget that cannot hold training and about ten validations (it must be at least
    :data:`VALIDATIONS_PER_BUDGET` times one validation's ``validation_s``, and
    :data:`MIN_BUDGET_S`). ``spent_s``: seconds already taken out of the user's budget (sizing)."""
    minimum = max(MIN_BUDGET_S, VALIDATIONS_PER_BUDGET * validation_s)
    if budget_s < minimum:
        sizing = f"{spent_s:.1f} s went to sizing the model and " if spent_s else ""
        raise RnnkitError(
            f"a time budget of {budget_s + spent_s:g} s is too short for this run: "
            f"{sizing}one validation takes {validation_s:.2f} s here, so give at least "
            f"{math.ceil(minimum + spent_s)} s"
        )


class StopRules:
    """A run's clock and when it stops: the wall-clock seconds of training so far (across resumes),
    how far the run is (of its budget, or of its steps), whether the budget is spent or a validation
    due by the clock, and a stop requested by a signal (honoured after the step in progress, while
    :meth:`accepting` is on)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.t0 = 0.0
        self.requested = 0  # a signal's number: stop after the step in progress
        self.accepts = False  # True while training steps run: a request waits for the step in progress

    def start(self, wall_seconds: float) -> None:
        """Count from ``wall_seconds`` of training already done (a resumed run's)."""
        self.t0 = clock.now() - wall_seconds

    def elapsed(self) -> float:
        """Wall-clock seconds of training so far, across resumes."""
        return clock.now() - self.t0

    def progress(self, step: int, steps_per_epoch: int) -> float:
        """How far the run is, in [0, 1]: of its time budget, or of all its steps."""
        if self.config.time_budget:
            return self.elapsed() / self.config.time_budget
        if self.config.max_steps:
            return step / self.config.max_steps
        return step / max(self.config.epochs * steps_per_epoch, 1)

    def flags(self, last_eval_wall: float, save_due: bool) -> list[float]:
        """What this process says after a step: [signal number or 0, time budget spent, validation due
        by the clock (about ten per budget), save due]; under torchrun these are summed over processes."""
        budget = self.config.time_budget
        elapsed = self.elapsed() if budget else 0.0
        return [
            float(self.requested),
            float(bool(budget) and elapsed >= budget),
            float(bool(budget) and elapsed - last_eval_wall >= budget / 10),
            float(save_due),
        ]

    def request(self, signum: int) -> bool:
        """Stop after the step in progress; False where no training step runs (stop at once instead)."""
        if not self.accepts:
            return False
        self.requested = self.requested or signum
        return True

    @contextlib.contextmanager
    def accepting(self) -> Iterator[None]:
        self.accepts = True
        try:
            yield
        finally:
            self.accepts = False
