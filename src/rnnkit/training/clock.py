"""The clock a run reads: its time budget, the learning-rate schedule laid over the budget, and the
seconds it records. One function, :func:`now`, so that a test can put a clock of its own in its
place (``monkeypatch.setattr(rnnkit.training.clock, "now", ...)``) and get the same run from the
same settings on any machine, however busy."""

import time


def now() -> float:
    """Seconds on a monotonic clock."""
    return time.perf_counter()
