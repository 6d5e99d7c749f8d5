"""Autoregressive time series: §9.1's setting, and §9.6's exercise "implement the autoregressive
model of :numref:`sec_sequence` using an RNN".

§9.1 generates ``x_t = sin(0.01 t) + N(0, 0.2^2)`` for t = 1..1000, regresses each value on the
previous tau = 4 with a linear model trained on the first 600, and shows that 1-step-ahead
predictions are good while k-step-ahead ones (predictions fed back in) decay quickly. Here the
linear AR(tau) model is fitted exactly (least squares, which the book's SGD approximates), and
RNN/GRU/LSTM regressors read one value per step and predict the next, their state carried along
the whole series. Every model is scored on the held-out part (everything after the training
part) by the mean squared error of its k-step-ahead predictions: the prediction of ``x_t`` from
the observations up to ``x_{t-k}`` and the model's own predictions after them.

Values are standardised with the training part's mean and standard deviation for the recurrent
models; errors are reported in the series' own units.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnkit.errors import RnnkitError

D2L_STEPS, D2L_TRAIN, D2L_NOISE, D2L_FREQUENCY = 1000, 600, 0.2, 0.01  # §9.1's constants
KS = (1, 4, 16, 64)  # the book's horizons
SERIES_MODELS = ("linear", "rnn", "gru", "lstm")
MISSING = ("interpolate", "drop", "error")
FORMAT, FORMAT_VERSION = "rnnkit-timeseries", 1
SAVE_EVERY = 50  # epochs between checkpoints within a model's training
NA = {"", "na", "n/a", "nan", "null", "none", "-"}


@dataclass
class Series:
    """A real-valued series (T,) in float64, with where it came from and what was done to it."""

    values: torch.Tensor
    source: str
    notes: list[str] = field(default_factory=list)
    sha1: str | None = None  # of the CSV file it was read from


def synthetic_d2l(seed: int = 0, steps: int = D2L_STEPS) -> Series:
    """§9.1's series: ``x_t = sin(0.01 t) + 0.2 * N(0, 1)``, t = 1..steps, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(1, steps + 1, dtype=torch.float64)
    noise = torch.randn(steps, generator=generator, dtype=torch.float64)
    return Series(torch.sin(D2L_FREQUENCY * time) + D2L_NOISE * noise, f"synthetic d2l (seed {seed})")


def _parse_time(text: str):
    try:
        return float(text)
    except ValueError:
        pass
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, "%d-%b-%y")):
        try:
            return parse(text.strip()).timestamp()
        except ValueError:
            continue
    return None


def read_csv_series(path: str | os.PathLike, column: str, time_column: str | None = None,
                    missing: str = "interpolate") -> Series:
    """One numeric column of a CSV file (lines starting with ``#`` before the header are skipped).

    Empty cells and NA/NaN/null are missing values: ``interpolate`` fills gaps inside the series
    linearly and drops missing values at either end, ``drop`` removes every row that lacks one,
    ``error`` refuses the file; what was done is said in ``notes``. With ``time_column`` the rows
    are put in time order (numbers, ISO dates or ``19-Sep-03``); repeated times are refused."""
    from rnnkit.text import read_text

    if missing not in MISSING:
        raise RnnkitError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    text = read_text(path)
    lines = text.splitlines()
    skipped = 0
    while skipped < len(lines) and lines[skipped].lstrip().startswith("#"):
        skipped += 1
    table = list(csv.reader(io.StringIO("\n".join(lines[skipped:]))))
    header = [name.strip() for name in table[0]] if table else []
    for name in (column, time_column):
        if name is not None and name not in header:
            raise RnnkitError(f"{path}: no column {name!r} (columns: {', '.join(header) or 'none'})")
    # a blank line is a row whose cells are all missing (in a one-column file: a missing value)
    rows = [dict(zip(header, row, strict=False)) for row in table[1:]]
    notes = []
    if time_column is not None:
        times = [_parse_time(row[time_column] or "") for row in rows]
        bad = next((i for i, t in enumerate(times) if t is None), None)
        if bad is not None:
            raise RnnkitError(f"{path}: line {skipped + bad + 2}: cannot read time {rows[bad][time_column]!r} "
                              f"(numbers, ISO dates such as 2003-09-19, or 19-Sep-03)")
        if len(set(times)) != len(times):
            raise RnnkitError(f"{path}: repeated times in column {time_column!r}")
        order = sorted(range(len(rows)), key=times.__getitem__)
        if order != list(range(len(rows))):
            rows = [rows[i] for i in order]
            notes.append(f"rows put in time order by {time_column!r}")
    values: list[float | None] = []
    for number, row in enumerate(rows):
        cell = (row.get(column) or "").strip()
        if cell.lower() in NA:
            values.append(None)
            continue
        try:
            value = float(cell)
        except ValueError:
            raise RnnkitError(f"{path}: column {column!r} is not numeric ({cell!r} in data row {number + 1})") from None
        if not math.isfinite(value):
            raise RnnkitError(f"{path}: column {column!r} holds {cell!r} in data row {number + 1}")
        values.append(value)
    gaps = sum(v is None for v in values)
    if gaps and missing == "error":
        raise RnnkitError(f"{path}: column {column!r} has {gaps} missing values (--missing interpolate or drop)")
    if gaps and missing == "drop":
        values = [v for v in values if v is not None]
        notes.append(f"{gaps} rows without a value dropped")
    elif gaps:
        known = [i for i, v in enumerate(values) if v is not None]
        if not known:
            raise RnnkitError(f"{path}: column {column!r} has no values")
        first, last = known[0], known[-1]
        ends = first + (len(values) - 1 - last)
        inner = gaps - ends
        filled = torch.tensor([math.nan if v is None else v for v in values[first:last + 1]], dtype=torch.float64)
        where = torch.arange(len(filled), dtype=torch.float64)
        have = ~torch.isnan(filled)
        filled[~have] = torch.from_numpy(np.interp(where[~have].numpy(), where[have].numpy(), filled[have].numpy()))
        values = filled.tolist()
        if ends:
            notes.append(f"{ends} missing values at the ends dropped")
        if inner:
            notes.append(f"{inner} missing values inside the series linearly interpolated")
    sha1 = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return Series(torch.tensor(values, dtype=torch.float64), f"{path} column {column}", notes, sha1)


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
            (len(self.models) > 0 and all(m in SERIES_MODELS for m in self.models),
             f"--models must be among {', '.join(SERIES_MODELS)}"),
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
    if config.csv is None:
        return synthetic_d2l(config.seed)
    return read_csv_series(config.csv, config.column, config.time_column, config.missing)


def split_point(config: SeriesConfig, length: int) -> int:
    """Values used for training (the first ones); checks that the held-out part can be scored at
    every horizon."""
    num_train = round(config.train * length)
    needed = config.tau + max(config.ks) + 2
    if num_train < needed or length - num_train < 1:
        raise RnnkitError(f"series too short: {length} values, {num_train} of them for training; training needs at "
                          f"least tau + the longest horizon + 2 = {needed} (and something must be held out)")
    return num_train


class LinearAR(nn.Module):
    """§9.1's linear model: ``x_t = w . (x_{t-tau}, ..., x_{t-1}) + b``."""

    def __init__(self, tau: int) -> None:
        super().__init__()
        self.tau = tau
        self.linear = nn.Linear(tau, 1, dtype=torch.float64)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Predictions (N,) from windows (N, tau), oldest value first."""
        return self.linear(windows).squeeze(-1)

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window of ``x`` (N, tau) and the value that follows each (N,)."""
        return x.unfold(0, self.tau, 1)[:-1], x[self.tau:]

    def fit(self, x: torch.Tensor) -> None:
        """Least squares on every window of ``x`` (the training part): the minimum of the squared
        error that the book's SGD approaches."""
        windows, targets = self.pairs(x)
        design = torch.cat([windows, torch.ones(len(windows), 1, dtype=x.dtype)], dim=1)
        # gelsd (SVD), not the default gelsy: on the CPU gelsy's result depends on the memory it is
        # given (about 1 call in 25 differed in the last bits here; pytorch/pytorch#71222, #187411)
        solution = torch.linalg.lstsq(design, targets.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        with torch.no_grad():
            self.linear.weight.copy_(solution[:-1].unsqueeze(0))
            self.linear.bias.copy_(solution[-1:])


class RecurrentAR(nn.Module):
    """One value per step in, the next value out: ``nn.RNN``/``GRU``/``LSTM`` and a linear head."""

    def __init__(self, kind: str, hidden: int, layers: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](1, hidden, layers)
        self.head = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor, state=None):
        """Predictions (T, B) of the next value after each value of ``z`` (T, B), and the state."""
        outputs, state = self.rnn(z.unsqueeze(-1), state)
        return self.head(outputs).squeeze(-1), state


def k_step_predictions(model: nn.Module, z: torch.Tensor, targets: torch.Tensor, k: int,
                       states: list | None = None) -> torch.Tensor:
    """The prediction of ``z[t]`` for each ``t`` of ``targets`` from ``z[:t-k+1]`` (what was
    observed up to ``t - k``) and the model's own predictions after that (k - 1 of them fed back).
    ``z``: the series (T,) on the model's scale; returns (len(targets),). ``states``: a recurrent
    model's :func:`observed_states` of ``z``, if already computed."""
    starts = targets - k  # the last observed index of each prediction
    if int(starts.min()) < 0:
        raise RnnkitError(f"a {k}-step prediction of index {int(targets.min())} needs earlier values")
    with torch.no_grad():
        if isinstance(model, LinearAR):
            if int(starts.min()) < model.tau - 1:
                raise RnnkitError(f"a {k}-step prediction needs {model.tau} observed values before it")
            offsets = torch.arange(-model.tau + 1, 1)
            window = z[starts.unsqueeze(1) + offsets]  # (N, tau) observed
            for _ in range(k):
                prediction = model(window)
                window = torch.cat([window[:, 1:], prediction.unsqueeze(1)], dim=1)
            return prediction
        if states is None or len(states) <= int(starts.max()):
            states = observed_states(model, z, int(starts.max()) + 1)
        state = gather_states(states, starts)
        prediction = model.head(state_output(state)).squeeze(-1)
        for _ in range(k - 1):
            prediction, state = model(prediction.unsqueeze(0).float(), state)
            prediction = prediction[0]
        return prediction.double()


def observed_states(model: RecurrentAR, z: torch.Tensor, length: int) -> list:
    """The state after reading ``z[0..s]``, for s < length (one pass, one step at a time)."""
    states, state = [], None
    inputs = z[:length].float().view(-1, 1, 1)
    for x in inputs:
        _, state = model.rnn(x.unsqueeze(0), state)
        states.append(state)
    return states


def gather_states(states: list, indices: torch.Tensor):
    """The states at ``indices`` stacked along the batch dimension (dimension 1)."""
    chosen = [states[i] for i in indices.tolist()]
    if isinstance(chosen[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*chosen, strict=True))
    return torch.cat(chosen, dim=1)


def state_output(state) -> torch.Tensor:
    """The last layer's hidden state (B, H): what the head reads."""
    return (state[0] if isinstance(state, tuple) else state)[-1]


@dataclass
class Standardise:
    """``z = (x - mean) / std`` with the training part's statistics."""

    mean: float
    std: float

    @classmethod
    def of(cls, x: torch.Tensor) -> Standardise:
        std = float(x.std())
        return cls(float(x.mean()), std if std > 0 else 1.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_models(config: SeriesConfig) -> dict[str, nn.Module]:
    """The models of ``config``, initialised from its seed (each from its own position in it)."""
    models = {}
    for index, name in enumerate(config.models):
        torch.manual_seed(config.seed * 1000 + index)
        models[name] = LinearAR(config.tau) if name == "linear" else RecurrentAR(name, config.hidden, config.layers)
    return models


class SeriesTrainer:
    """Fits the linear model, trains the recurrent ones (backpropagation through the whole
    standardised training part, Adam, gradient clipping), and evaluates every model at every
    horizon, carrying their state along the whole series.

    ``state_dict()``/``load_state_dict()`` carry everything a resume needs; ``on_save`` is called
    every :data:`SAVE_EVERY` epochs and after each model."""

    def __init__(self, config: SeriesConfig, series: Series) -> None:
        config.validate()
        self.config, self.series = config, series
        self.num_train = split_point(config, len(series.values))
        self.scale = Standardise.of(series.values[:self.num_train])
        self.z = self.scale(series.values)
        self.models = build_models(config)
        self.optimizers = {name: torch.optim.Adam(model.parameters(), lr=config.lr)
                           for name, model in self.models.items() if name != "linear"}
        self.done: dict[str, int] = {name: 0 for name in self.models}  # epochs done (linear: 1 once fitted)
        self.history: list[dict] = []
        self.on_save: Callable[[], None] | None = None

    def fit(self) -> None:
        z_train = self.z[:self.num_train]
        for name, model in self.models.items():
            if name == "linear":
                if not self.done[name]:
                    model.fit(z_train)
                    self.done[name] = 1
                    with torch.no_grad():
                        windows, targets = model.pairs(z_train)
                        mse = float(((model(windows) - targets) ** 2).mean())
                    self.history.append({"model": name, "epoch": 1, "train_mse": mse * self.scale.std ** 2})
                    self._save()
                continue
            # the whole training part as one sequence: the state is carried along it in training
            # as in evaluation (trained on short windows from a fresh state, a GRU's state drifted
            # over the 1000-step series: held-out 1-step MSE 0.28 instead of 0.06)
            inputs, targets = z_train[:-1].float().unsqueeze(1), z_train[1:].float().unsqueeze(1)
            optimizer = self.optimizers[name]
            while self.done[name] < self.config.epochs:
                prediction, _ = model(inputs)
                loss = ((prediction - targets) ** 2).mean()
                if not torch.isfinite(loss):
                    raise RnnkitError(f"{name}: the training loss is {loss.item()} at epoch {self.done[name] + 1} "
                                      "(try a lower --lr or --clip 1)")
                optimizer.zero_grad()
                loss.backward()
                if self.config.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), self.config.clip)
                optimizer.step()
                self.done[name] += 1
                epoch = self.done[name]
                if epoch % 10 == 0 or epoch == self.config.epochs:
                    self.history.append({"model": name, "epoch": epoch,
                                         "train_mse": loss.item() * self.scale.std ** 2})
                if epoch % SAVE_EVERY == 0 or epoch == self.config.epochs:
                    self._save()

    def _save(self) -> None:
        if self.on_save is not None:
            self.on_save()

    def predictions(self) -> dict[str, dict[int, torch.Tensor]]:
        """Per model and horizon k, the k-step-ahead predictions of every held-out value (in the
        series' units)."""
        targets = torch.arange(self.num_train, len(self.z))
        out = {}
        for name, model in self.models.items():
            model.eval()
            states = None if name == "linear" else observed_states(model, self.z, len(self.z))
            out[name] = {k: k_step_predictions(model, self.z, targets, k, states) * self.scale.std + self.scale.mean
                         for k in self.config.ks}
        return out

    def evaluate(self, predictions: dict | None = None) -> dict[str, dict[str, float]]:
        """MSE (in the series' units) of the k-step-ahead predictions of every held-out value."""
        predictions = predictions or self.predictions()
        held = self.series.values[self.num_train:]
        return {name: {str(k): float(((p - held) ** 2).mean()) for k, p in by_k.items()}
                for name, by_k in predictions.items()}

    def state_dict(self) -> dict:
        return {"models": {name: model.state_dict() for name, model in self.models.items()},
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "done": dict(self.done), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.done = {name: int(state["done"][name]) for name in self.models}
        self.history = list(state["history"])


# ---- run directories ---------------------------------------------------------------------------

def save_series_run(run_dir: Path, trainer: SeriesTrainer) -> None:
    """``config.json`` (the commit point, renamed last) naming ``state-<id>.safetensors`` (weights,
    optimizer states, progress), and ``metrics.jsonl``: committed by :func:`rnnkit.checkpoint.commit_files`,
    as every run directory is."""
    from safetensors.torch import save as save_safetensors

    from rnnkit.checkpoint import commit_files, pack

    checkpoint = f"{sum(trainer.done.values())}-{uuid.uuid4().hex[:12]}"
    tensors, skeleton = pack(trainer.state_dict())
    name = f"state-{checkpoint}.safetensors"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "checkpoint": checkpoint, "files": {"state": name},
            "config": asdict(trainer.config), "series": {"source": trainer.series.source, "sha1": trainer.series.sha1,
                                                         "length": len(trainer.series.values),
                                                         "notes": trainer.series.notes},
            "done": trainer.done}
    data = save_safetensors(tensors, metadata={"format": FORMAT, "checkpoint": checkpoint, "state": skeleton})
    metrics = "".join(json.dumps(r) + "\n" for r in trainer.history).encode()
    commit_files(run_dir, {name: data}, (json.dumps(meta, indent=1) + "\n").encode(), {"metrics.jsonl": metrics},
                 failure="cannot save in {run_dir}: {reason}; the previous checkpoint is unchanged")


def load_series_run(run_dir: Path) -> tuple[SeriesTrainer, dict]:
    """A trainer restored from a run directory, and its ``config.json``; the series is read again
    and must be the one the run trained on."""
    from rnnkit.checkpoint import read_tensors, unpack

    path = Path(run_dir) / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RnnkitError(f"{run_dir}: not a timeseries run (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RnnkitError(f"{path}: cannot read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RnnkitError(f"{path}: not an rnnkit timeseries run")
    try:
        config = SeriesConfig.from_dict(meta["config"])
        state_file = Path(run_dir) / meta["files"]["state"]
    except (KeyError, TypeError) as exc:
        raise RnnkitError(f"{path}: incomplete ({exc})") from None
    series = load_series(config)
    if series.sha1 != meta.get("series", {}).get("sha1"):
        raise RnnkitError(f"{config.csv}: changed since the run started (sha1 {series.sha1}, the run read "
                          f"{meta['series']['sha1']})")
    trainer = SeriesTrainer(config, series)
    tensors, metadata = read_tensors(state_file, meta.get("checkpoint"))
    try:
        trainer.load_state_dict(unpack(tensors, metadata["state"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RnnkitError(f"{state_file}: does not match config.json ({exc})") from None
    return trainer, meta


def render_predictions(trainer: SeriesTrainer, predictions: dict) -> bytes:
    """PNG: the series with each model's k-step-ahead predictions of the held-out part, one panel
    per model (the book's figure, for every model)."""
    from rnnkit.plot import _pyplot

    plt = _pyplot()
    names = list(predictions)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.3 * len(names)), dpi=100, squeeze=False)
    values = trainer.series.values
    start = max(0, trainer.num_train - 100)
    time = torch.arange(len(values))
    for ax, name in zip(axes[:, 0], names, strict=True):
        ax.plot(time[start:], values[start:], color="0.6", linewidth=1, label="series")
        for i, (k, p) in enumerate(predictions[name].items()):
            ax.plot(time[trainer.num_train:], p, color=f"C{i}", linewidth=1, label=f"{k}-step")
        ax.axvline(trainer.num_train - 0.5, color="0.3", linestyle=":", linewidth=1)
        ax.set(title=f"{name}: k-step-ahead predictions of the held-out part", xlim=(start, len(values)))
        ax.legend(fontsize=7, ncol=len(predictions[name]) + 1, loc="upper left")
    return _png(plt, fig)


def render_mse(results: dict[str, dict[str, float]]) -> bytes:
    """PNG: held-out MSE against the horizon k, one line per model (log scales)."""
    from rnnkit.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, by_k in results.items():
        ks = [int(k) for k in by_k]
        ax.plot(ks, list(by_k.values()), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="k (steps ahead)", ylabel="MSE", title="held-out MSE by horizon")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def _png(plt, fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
