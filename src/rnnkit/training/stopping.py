"""When a run stops before its epochs: its time budget is spent, its steps are done, or validation
stopped improving. (A signal stops it too: :meth:`Trainer.request_stop`.)"""

from __future__ import annotations

import math

from rnnkit.config import TrainConfig
from rnnkit.errors import RnnkitError
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
        raise RnnkitError(f"a time budget of {budget_s + spent_s:g} s is too short for this run: "
                          f"{sizing}one validation takes {validation_s:.2f} s here, so give at least "
                          f"{math.ceil(minimum + spent_s)} s")
