"""A run's options, each declared once: its default, its help, its choices, its group, and the rules
it takes part in.

:class:`TrainConfig` holds what defines the model and its training (saved in a run's
``config.json``); :class:`RunOptions` how a run is carried out: where it is written, how often it is
saved, what it prints. Every field is an :func:`option`, whose metadata the rest of rnnkit reads:

- ``rnnkit train``'s parser is derived from them (:func:`rnnkit.cli.add_options`): one flag per
  field, in its ``group``, with its ``help`` and ``choices``;
- ``resumable`` options may change when a run is resumed; the others come from the run;
- ``sizing`` options describe the model or its optimisation: giving any of them turns the time
  budget's automatic sizing off (you chose the model yourself).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from rnnkit.data import SPLITS, check_sizes
from rnnkit.errors import RnnkitError
from rnnkit.models import ACTIVATIONS, MODEL_KINDS
from rnnkit.text import PREPROCESS_MODES, has_unknown_token
from rnnkit.tokens import TOKEN_KINDS

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
CUDA_GRAPHS = ("auto", "on", "off")
GROUPS = ("data", "model", "optimisation", "schedule and budget", "device and processes", "checkpoints", "output")


def option(
    default: Any,
    help: str,
    group: str,
    *,
    choices: tuple | None = None,
    resumable: bool = False,
    sizing: bool = False,
    metavar: str | None = None,
    parse: Any = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its command-line description in ``metadata``: ``help``, ``group`` (one
    of :data:`GROUPS`), ``choices``, whether it may change on resume (``resumable``) and whether giving
    it turns automatic sizing off (``sizing``); ``parse`` converts the flag's text (default: the
    field's type), ``flag`` names the flag where it is not the field's name in kebab case."""
    assert group in GROUPS, group
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "resumable": resumable,
        "sizing": sizing,
        "metavar": metavar,
        "parse": parse,
        "flag": flag,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def duration(text: str) -> float:
    """Seconds of a duration such as ``90``, ``90s``, ``3m``, ``1.5h``, ``1h30m``, ``2m30s``."""
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    number, term = r"([0-9]*\.?[0-9]+)", r"([0-9]*\.?[0-9]+)\s*(sec|min|s|m|h)\s*"
    if plain := re.fullmatch(rf"\s*{number}\s*", text):
        return float(plain.group(1))
    parts = re.findall(term, text) if re.fullmatch(rf"\s*(?:{term})+", text) else []
    if not parts or len({units[unit] for _, unit in parts}) < len(parts):  # none, or a unit twice (3m3m)
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 3m, 1h, 1h30m)")
    return sum(float(value) * units[unit] for value, unit in parts)


def seconds(value: float | int | str) -> float:
    """A duration given as seconds or as text (``"3m"``): what the Python API accepts for a time budget."""
    if isinstance(value, str):
        try:
            return duration(value)
        except ValueError as exc:
            raise RnnkitError(str(exc)) from None
    return value


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the book's configuration (d2l §9.5/§9.6)."""

    # data
    corpus: str = option("timemachine", "built-in corpus name (rnnkit corpora) or a text file", "data")
    data: str = option(
        "",
        "train from a prepared directory (rnnkit prepare) through memory maps, instead of --corpus",
        "data",
        metavar="DATA_DIR",
    )
    val_tokens: int = option(0, "validate on the first N held-out tokens only (0: all)", "data")
    encoding: str = option("utf-8", "text encoding of the corpus file", "data")
    strip_gutenberg: bool = option(
        False, "drop a Project Gutenberg header and footer (always done for built-in books)", "data"
    )
    preprocess: str = option(
        "d2l",
        "d2l: letters only, lower case (the book); raw: every character a token",
        "data",
        choices=PREPROCESS_MODES,
    )
    tokens: str = option(
        "char",
        "model characters (the book) or words (whitespace-separated, §9.2); bytes come from a prepared directory",
        "data",
        choices=("char", "word"),
    )
    min_freq: int = option(0, "word models: words seen fewer times are read as <unk>", "data")
    split: str = option(
        "d2l", "how the corpus becomes training and held-out data (rnnkit.data)", "data", choices=SPLITS
    )
    num_train: int = option(10000, "d2l split: training windows", "data")
    num_val: int = option(5000, "d2l split: validation windows", "data")
    val_fraction: float = option(0.1, "other splits: held-out tail", "data")
    # model
    model: str = option(
        "rnn", "the recurrent layer (scratch: the book's RNNScratch)", "model", choices=MODEL_KINDS, sizing=True
    )
    hidden: int = option(32, "hidden units per layer", "model", sizing=True)
    layers: int = option(1, "recurrent layers", "model", sizing=True)
    dropout: float = option(0.0, "dropout between recurrent layers", "model", sizing=True)
    io_dropout: float = option(
        0.0,
        "dropout on the learned embedding and on the recurrent outputs (any number of layers)",
        "model",
        sizing=True,
    )
    weight_drop: float = option(
        0.0,
        "DropConnect on the recurrent layers' hidden-to-hidden weights, one mask per step (rnn, gru, lstm; AWD-LSTM)",
        "model",
        sizing=True,
        metavar="P",
    )
    tie_weights: bool = option(
        False,
        "the output layer shares the embedding's weight (needs --embedding equal to --hidden)",
        "model",
        sizing=True,
    )
    embedding: int = option(
        0, "learned embedding size (0: one-hot input, as the book)", "model", sizing=True, metavar="DIM"
    )
    activation: str = option(
        "tanh", "the recurrence's nonlinearity (rnn and scratch)", "model", choices=ACTIVATIONS, sizing=True
    )
    # optimisation
    batch_size: int = option(1024, "windows per training step", "optimisation", sizing=True)
    num_steps: int = option(
        32, "time steps per window (truncated backpropagation through time)", "optimisation", sizing=True
    )
    optimizer: str = option(
        "sgd",
        "sgd and adam as the book; adamw decays weight matrices only",
        "optimisation",
        choices=OPTIMIZERS,
        sizing=True,
    )
    lr: float = option(1.0, "learning rate", "optimisation", sizing=True)
    weight_decay: float = option(0.0, "weight decay", "optimisation", sizing=True)
    clip: float = option(1.0, "max global gradient norm (0: off)", "optimisation", sizing=True)
    ema: float = option(
        0.0,
        "validate and keep as best a moving average of the weights (0.998: ~the last 500 steps; 0: off)",
        "optimisation",
        sizing=True,
        metavar="DECAY",
    )
    seed: int = option(0, "seed of the initialisation, the batches and dropout", "optimisation")
    # device and processes
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps", "device and processes", resumable=True)
    cuda_graphs: str = option(
        "auto",
        "on a CUDA device, replay each training step as a captured CUDA graph (auto: "
        "whenever the run allows it: not --split sequential, no dropout)",
        "device and processes",
        choices=CUDA_GRAPHS,
        resumable=True,
    )
    # schedule and budget
    epochs: int = option(100, "passes over the training data", "schedule and budget", resumable=True)
    time_budget: float = option(
        0.0,
        "train for this wall-clock time (e.g. 90s, 3m, 1h, 1h30m; evaluations included) instead of --epochs; 0: off",
        "schedule and budget",
        metavar="DURATION",
        parse=duration,
    )
    schedule: str = option(
        "constant",
        "learning rate over the run (after --warmup): constant, or cosine/linear decay to --min-lr-ratio x --lr",
        "schedule and budget",
        choices=SCHEDULES,
        sizing=True,
    )
    warmup: float = option(0.0, "fraction of the run with a linear lr warmup", "schedule and budget", sizing=True)
    min_lr_ratio: float = option(0.1, "where the lr decay ends, x --lr", "schedule and budget", sizing=True)
    eval_every: int = option(
        0,
        "validate every N training steps (0: at each epoch's end; with --time-budget about ten times per budget)",
        "schedule and budget",
        metavar="STEPS",
    )
    patience: int = option(
        0, "stop after this many evaluations without a better validation loss (0: never)", "schedule and budget"
    )
    max_steps: int = option(
        0,
        "stop after this many training steps, whatever --epochs says (0: no limit); with "
        "--resume, a larger count continues a run that stopped there",
        "schedule and budget",
        metavar="STEPS",
        resumable=True,
    )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a parsed ``config.json`` (every field's type checked)."""
        if not isinstance(values, dict):
            raise RnnkitError(f"config must be a JSON object, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise RnnkitError(f"config has unknown keys: {sorted(unknown)}")
        config = cls(**values)
        config.check_types()
        return config

    def check_types(self) -> None:
        """Every field has its declared type (an int is accepted for a float; a bool is not a number)."""
        check_types(self)

    def validate(self) -> None:
        """Types, choices and ranges of every field, and the combinations that cannot work."""
        self.check_types()
        check_sizes(self.batch_size, self.num_steps)
        for f in fields(self):
            allowed = f.metadata["choices"]
            if f.name == "tokens":
                allowed = TOKEN_KINDS  # bytes: set from a prepared directory, not by a flag
            if allowed and getattr(self, f.name) not in allowed:
                raise RnnkitError(f"{f.name} must be one of {', '.join(allowed)}, got {getattr(self, f.name)!r}")
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        counts = {  # name: (low, high, what)
            "epochs": (0, 10**9, "an epoch count"),
            "num_train": (1, 10**12, "a window count"),
            "num_val": (0, 10**12, "a window count"),
            "seed": (0, (1 << 63) - 1, "an integer"),
            "hidden": (1, 1_000_000, "a size"),
            "layers": (1, 1000, "a layer count"),
            "embedding": (0, 1_000_000, "a size (0: one-hot)"),
            "eval_every": (0, 10**12, "a step count"),
            "patience": (0, 10**9, "an evaluation count"),
            "min_freq": (0, 10**12, "a count"),
            "val_tokens": (0, 10**15, "a token count"),
            "max_steps": (0, 10**15, "a step count"),
        }
        for name, (low, high, what) in counts.items():
            if not low <= getattr(self, name) <= high:
                raise RnnkitError(f"{name} must be {what} between {low} and {high}, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RnnkitError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise RnnkitError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise RnnkitError(f"clip must be >= 0 (0 = off), got {self.clip}")
        for name in ("dropout", "io_dropout", "weight_drop", "val_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise RnnkitError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (0 <= self.time_budget <= 10 * 365 * 86400):
            raise RnnkitError(f"time_budget must be between 0 (off) and ten years of seconds, got {self.time_budget}")
        if not 0 <= self.warmup < 1:
            raise RnnkitError(f"warmup must be a fraction of the run in [0, 1), got {self.warmup}")
        if not 0 <= self.ema < 1:
            raise RnnkitError(f"ema must be a decay in [0, 1) (0: off; 0.998 averages ~500 steps), got {self.ema}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise RnnkitError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def _check_combinations(self) -> None:
        if self.data and (self.tokens == "word" or self.split != "sample" or self.preprocess != "raw"):
            raise RnnkitError(
                "a prepared --data directory is read as its prepared tokens, raw, with --split sample "
                "(random windows: memory that does not grow with the corpus)"
            )
        if self.tokens == "bytes" and not self.data:
            raise RnnkitError("byte tokens come from a prepared directory: rnnkit prepare --tokens bytes, then --data")
        if self.tie_weights and self.embedding != self.hidden:
            raise RnnkitError(
                f"tie_weights needs --embedding equal to --hidden ({self.hidden}), got {self.embedding or 'one-hot'}"
            )
        if self.min_freq and not has_unknown_token(self.preprocess, self.tokens):
            raise RnnkitError(
                "min_freq needs a vocabulary with <unk> to read rare tokens as: --tokens word, or --preprocess d2l"
            )
        if self.weight_drop and self.model == "scratch":
            raise RnnkitError("--weight-drop applies to --model rnn, gru and lstm, not scratch")
        if self.dropout and self.layers < 2:
            raise RnnkitError(
                "dropout acts between recurrent layers: it needs --layers 2 or more "
                f"(got --layers {self.layers} --dropout {self.dropout})"
            )
        if self.cuda_graphs == "on" and not self.graphs_possible():
            raise RnnkitError("--cuda-graphs on needs a split without carried state (not sequential) and no dropout")

    def graphs_possible(self) -> bool:
        """Whether training steps can be captured: no state carried between batches, no dropout."""
        return self.split != "sequential" and not self.dropout and not self.io_dropout and not self.weight_drop


SAMPLE_PREFIXES = ["traveller", "time traveller"]  # d2l 0.x notebook's


@dataclass
class RunOptions:
    """How a run is carried out: where it is written, when it is saved, what it shows. Not part of
    the model: none of these changes the weights a run ends with."""

    out: str = option("runs/tm", "run directory to write", "output")
    force: bool = option(False, "overwrite a run already in --out", "output")
    save_every: int = option(10, "checkpoint every N epochs (0: at the end only)", "checkpoints", resumable=True)
    save_minutes: float = option(
        10.0,
        "also checkpoint after any step that finds the last save at least this many minutes old (0: off)",
        "checkpoints",
        resumable=True,
    )
    save_steps: int = option(
        0,
        "also checkpoint every N training steps, mid-epoch (0: off); a resumed run continues from the exact batch",
        "checkpoints",
        resumable=True,
        metavar="STEPS",
    )
    dist_timeout: float = option(
        600.0,
        "under torchrun: how long a process waits for the others (to start, in a "
        "step, while rank 0 validates or saves) before giving up",
        "device and processes",
        resumable=True,
        metavar="SECONDS",
    )
    sample_every: int = option(10, "print samples every N epochs (0: never)", "output", resumable=True)
    sample_prefixes: list = option(
        [],
        f"prefix for the periodic samples (repeatable; default: {SAMPLE_PREFIXES} for "
        "the book, the opening words of the training text for any other)",
        "output",
        resumable=True,
        metavar="TEXT",
        flag="--sample-prefix",
    )
    sample_chars: int = option(50, "length of the periodic samples", "output", resumable=True)
    tensorboard: str = option(
        "",
        "also log training and validation curves for TensorBoard into this directory",
        "output",
        resumable=True,
        metavar="DIR",
    )
    quiet: bool = option(False, "no progress bar, no per-epoch lines", "output", resumable=True)

    def validate(self) -> None:
        check_types(self)
        for name in ("save_every", "save_steps", "sample_every", "sample_chars"):
            if getattr(self, name) < 0:
                raise RnnkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.save_minutes >= 0 and math.isfinite(self.save_minutes)):
            raise RnnkitError(f"--save-minutes must be >= 0, got {self.save_minutes}")
        if not (self.dist_timeout > 0 and math.isfinite(self.dist_timeout)):
            raise RnnkitError(f"--dist-timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.tensorboard and os.path.exists(self.tensorboard) and not os.path.isdir(self.tensorboard):
            raise RnnkitError(f"--tensorboard {self.tensorboard}: exists and is not a directory")


def check_types(options: Any) -> None:
    """Every field of a dataclass has its declared type (an int is accepted for a float; a bool is not
    a number)."""
    for f in fields(options):
        value, kind = getattr(options, f.name), f.type
        if kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "list":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, {"str": str, "bool": bool}[kind])
        if not ok:
            raise RnnkitError(f"config field {f.name} must be of type {kind}, got {value!r}")


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of an option: its ``flag``, or ``--`` and its name in kebab case."""
    return f.metadata["flag"] or f"--{f.name.replace('_', '-')}"


def option_fields() -> list[dataclasses.Field]:
    """Every option of a run: :class:`TrainConfig`'s fields, then :class:`RunOptions`'."""
    return [*fields(TrainConfig), *fields(RunOptions)]


RESUMABLE = frozenset(f.name for f in option_fields() if f.metadata["resumable"])
SIZING = frozenset(f.name for f in option_fields() if f.metadata["sizing"])


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options as (:class:`TrainConfig`'s, :class:`RunOptions`'); an unknown name is refused,
    a path may be given as a ``Path`` and a time budget as text (``"3m"``)."""
    config_names = {f.name for f in fields(TrainConfig)}
    run_names = {f.name for f in fields(RunOptions)}
    unknown = sorted(set(options) - config_names - run_names)
    if unknown:
        raise RnnkitError(f"unknown option(s): {', '.join(unknown)} (see rnnkit train --help)")
    options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
    if "time_budget" in options:
        options["time_budget"] = seconds(options["time_budget"])
    return (
        {k: v for k, v in options.items() if k in config_names},
        {k: v for k, v in options.items() if k in run_names},
    )
