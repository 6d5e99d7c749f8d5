"""Every knob of ``rnnkit timeseries`` (:class:`SeriesConfig`, validated as a whole so that a bad
value is refused before anything is read or trained), the series it names, and where its
training part ends."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from rnnkit.errors import RnnkitError
from rnnkit.timeseries.series import MISSING, Series, read_csv_series, synthetic_d2l

KS = (1, 4, 16, 64)  # the book's horizons
SERIES_MODELS = ("linear", "rnn", "gru", "lstm")


@dataclass
class SeriesConfig:
    """Every knob of ``rnnkit timeseries``."""

    csv: str | None = None  # a CSV file; None: §9.1's synthetic series
    column: str | None = None
    time_column: str | None = None
    missing: str = "interpolate"
    seed: int = 0  # the synthetic series' noise and the models' initialisation
    tau: int = 4  # values the linear model (and the recurrent ones' warm-up) look back on
    train: float = 0.6  # fraction of the series to train on (600 of the book's 1000)
    models: tuple[str, ...] = SERIES_MODELS
    hidden: int = 32
    layers: int = 1
    epochs: int = 300
    lr: float = 0.01
    clip: float = 1.0
    ks: tuple[int, ...] = KS

    def validate(self) -> None:
        checks = [
            (self.csv is None or bool(self.column), "--csv needs --column"),
            (self.missing in MISSING, f"--missing must be one of {', '.join(MISSING)}"),
            (isinstance(self.seed, int) and 0 <= self.seed < 1 << 63, "--seed must be an integer in [0, 2^63)"),
            (1 <= self.tau <= 1000, "--tau must be between 1 and 1000"),
            (0 < self.train < 1, "--train must be a fraction between 0 and 1"),
            (
                len(self.models) > 0 and all(m in SERIES_MODELS for m in self.models),
                f"--models must be among {', '.join(SERIES_MODELS)}",
            ),
            (len(set(self.models)) == len(self.models), "--models names a model twice"),
            (1 <= self.hidden <= 4096 and 1 <= self.layers <= 16, "--hidden must be in [1, 4096], --layers in [1, 16]"),
            (0 <= self.epochs <= 10**6, "--epochs must be between 0 and 1000000"),
            (math.isfinite(self.lr) and self.lr > 0, "--lr must be a positive number"),
            (math.isfinite(self.clip) and self.clip >= 0, "--clip must be >= 0 (0: off)"),
            (len(self.ks) > 0 and all(1 <= k <= 10**5 for k in self.ks), "--ks must be positive integers"),
        ]
        for ok, message in checks:
            if not ok:
                raise RnnkitError(message)

    @classmethod
    def from_dict(cls, data: dict) -> SeriesConfig:
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        config = cls(**values)
        config.validate()
        return config


def load_series(config: SeriesConfig) -> Series:
    """The series ``config`` names: its CSV file's column, or the synthetic one from its seed."""
    if config.csv is None:
        return synthetic_d2l(config.seed)
    return read_csv_series(config.csv, config.column, config.time_column, config.missing)


def split_point(config: SeriesConfig, length: int) -> int:
    """Values used for training (the first ones); checks that the held-out part can be scored at
    every horizon."""
    num_train = round(config.train * length)
    needed = config.tau + max(config.ks) + 2
    if num_train < needed or length - num_train < 1:
        raise RnnkitError(
            f"series too short: {length} values, {num_train} of them for training; training needs at "
            f"least tau + the longest horizon + 2 = {needed} (and something must be held out)"
        )
    return num_train
