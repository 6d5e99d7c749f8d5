"""Training and evaluation: every knob in one dataclass, one :class:`Trainer` that runs it."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from rnnkit import distributed
from rnnkit.data import SPLITS, DataSplit, RandomWindows, check_sizes, part_rows, split_corpus
from rnnkit.distributed import ONE_PROCESS, World
from rnnkit.errors import RnnkitError, Stop, TrainingDiverged
from rnnkit.evaluate import (  # noqa: F401 - their old home
    EVAL_BATCH_TOKENS,
    STREAM_WARMUP,
    VALIDATION_LANES,
    bits_per_token,
    characters_predicted,
    perplexity,
    safe_exp,
    stream_nll,
    validation_lanes,
    window_nll,
)
from rnnkit.models import (
    ACTIVATIONS,
    GATES,
    MODEL_KINDS,
    RNNLM,
    State,
    build_model,
    check_parameter_count,
    detach_state,
    parameter_count,
    state_batch_dim,
)
from rnnkit.text import PREPROCESS_MODES, TOKEN_KINDS, Vocab, build_corpus, has_unknown_token, load_corpus_text

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")
CUDA_GRAPHS = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the book's configuration (d2l §9.5/§9.6)."""

    corpus: str = "timemachine"  # built-in corpus name or a path to a UTF-8 text file
    data: str = ""  # a prepared data directory (rnnkit prepare): trained from a memory map instead of corpus
    val_tokens: int = 0  # validate on the first N held-out tokens only (0: all of them)
    encoding: str = "utf-8"
    strip_gutenberg: bool = False  # drop a Project Gutenberg header/footer (always done for built-in books)
    preprocess: str = "d2l"  # d2l: letters only, lower case; raw: every character a token
    tokens: str = "char"  # char (the book's models) | word (§9.2's word tokens: split on whitespace)
    min_freq: int = 0  # word models: words seen fewer times are read as <unk>
    split: str = "d2l"  # d2l | random | sequential | fraction (see rnnkit.data)
    num_train: int = 10000  # d2l split: training windows
    num_val: int = 5000  # d2l split: validation windows
    val_fraction: float = 0.1  # other splits: held-out tail of the corpus
    model: str = "rnn"  # rnn | gru | lstm | scratch
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0  # between recurrent layers
    io_dropout: float = 0.0  # on the learned embedding and the recurrent outputs (any number of layers)
    weight_drop: float = 0.0  # DropConnect on the hidden-to-hidden weights, one mask per step (rnn, gru, lstm)
    tie_weights: bool = False  # the output layer shares the embedding's weight (needs embedding == hidden)
    embedding: int = 0  # 0: one-hot input (the book); >0: learned embedding of this size
    activation: str = "tanh"  # tanh | relu (rnn and scratch)
    batch_size: int = 1024
    num_steps: int = 32
    epochs: int = 100
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 1.0
    weight_decay: float = 0.0
    clip: float = 1.0  # max global gradient norm; 0 = no clipping
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu
    cuda_graphs: str = "auto"  # on a CUDA device, replay training steps as CUDA graphs: auto | on | off
    time_budget: float = 0.0  # seconds of wall-clock training (evaluations included); 0: train for `epochs`
    schedule: str = "constant"  # learning rate over the run: constant | cosine | linear (after warmup)
    warmup: float = 0.0  # fraction of the run (of the time budget, or of all steps) with a linear warmup
    min_lr_ratio: float = 0.1  # where cosine / linear decay ends, as a fraction of lr
    eval_every: int = 0  # evaluate every N training steps (0: at each epoch's end; time budgets: ~every 5%)
    patience: int = 0  # stop after this many evaluations without a better validation loss (0: never)
    max_steps: int = 0  # stop after this many optimizer steps, whatever --epochs says (0: no limit)
    ema: float = 0.0  # decay of a moving average of the weights that validation and the best checkpoint use (0: off)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a parsed ``config.json`` (every field's type checked)."""
        if not isinstance(values, dict):
            raise RnnkitError(f"config must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RnnkitError(f"config has unknown keys: {sorted(unknown)}")
        config = cls(**values)
        config.check_types()
        return config

    def check_types(self) -> None:
        """Every field has its declared type (an int is accepted for a float; a bool is not a number)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), f.type
            if kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, {"str": str, "bool": bool}[kind])
            if not ok:
                raise RnnkitError(f"config field {f.name} must be of type {kind}, got {value!r}")

    def validate(self) -> None:
        """Types and ranges of every field, and the combinations that cannot work."""
        self.check_types()
        check_sizes(self.batch_size, self.num_steps)
        choices = {"optimizer": OPTIMIZERS, "cuda_graphs": CUDA_GRAPHS, "model": MODEL_KINDS, "split": SPLITS,
                   "activation": ACTIVATIONS, "preprocess": PREPROCESS_MODES, "schedule": SCHEDULES,
                   "tokens": TOKEN_KINDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RnnkitError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        ranges = {  # name: (low, high, what)
            "epochs": (0, 10**9, "an epoch count"), "num_train": (1, 10**12, "a window count"),
            "num_val": (0, 10**12, "a window count"), "seed": (0, (1 << 63) - 1, "an integer"),
            "hidden": (1, 1_000_000, "a size"), "layers": (1, 1000, "a layer count"),
            "embedding": (0, 1_000_000, "a size (0: one-hot)"), "eval_every": (0, 10**12, "a step count"),
            "patience": (0, 10**9, "an evaluation count"), "min_freq": (0, 10**12, "a count"),
            "val_tokens": (0, 10**15, "a token count"), "max_steps": (0, 10**15, "a step count"),
        }
        for name, (low, high, what) in ranges.items():
            if not low <= getattr(self, name) <= high:
                raise RnnkitError(f"{name} must be {what} between {low} and {high}, got {getattr(self, name)}")
        if self.data and (self.tokens == "word" or self.split != "sample" or self.preprocess != "raw"):
            raise RnnkitError("a prepared --data directory is read as its prepared tokens, raw, with --split sample "
                              "(random windows: memory that does not grow with the corpus)")
        if self.tokens == "bytes" and not self.data:
            raise RnnkitError("byte tokens come from a prepared directory: rnnkit prepare --tokens bytes, then --data")
        if self.tie_weights and self.embedding != self.hidden:
            raise RnnkitError(f"tie_weights needs --embedding equal to --hidden ({self.hidden}), got "
                              f"{self.embedding or 'one-hot'}")
        if self.min_freq and not has_unknown_token(self.preprocess, self.tokens):
            raise RnnkitError("min_freq needs a vocabulary with <unk> to read rare tokens as: --tokens word, or "
                              "--preprocess d2l")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RnnkitError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise RnnkitError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise RnnkitError(f"clip must be >= 0 (0 = off), got {self.clip}")
        if not 0 <= self.dropout < 1:
            raise RnnkitError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.io_dropout < 1:
            raise RnnkitError(f"io_dropout must be in [0, 1), got {self.io_dropout}")
        if not 0 <= self.weight_drop < 1:
            raise RnnkitError(f"weight_drop must be in [0, 1), got {self.weight_drop}")
        if self.weight_drop and self.model == "scratch":
            raise RnnkitError("--weight-drop applies to --model rnn, gru and lstm, not scratch")
        if not 0 <= self.val_fraction < 1:
            raise RnnkitError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not (0 <= self.time_budget <= 10 * 365 * 86400):
            raise RnnkitError(f"time_budget must be between 0 (off) and ten years of seconds, got {self.time_budget}")
        if not 0 <= self.warmup < 1:
            raise RnnkitError(f"warmup must be a fraction of the run in [0, 1), got {self.warmup}")
        if not 0 <= self.ema < 1:
            raise RnnkitError(f"ema must be a decay in [0, 1) (0: off; 0.998 averages ~500 steps), got {self.ema}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise RnnkitError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.dropout and self.layers < 2:
            raise RnnkitError("dropout acts between recurrent layers: it needs --layers 2 or more "
                              f"(got --layers {self.layers} --dropout {self.dropout})")
        if self.cuda_graphs == "on" and not self.graphs_possible():
            raise RnnkitError("--cuda-graphs on needs a split without carried state (not sequential) and no dropout")

    def graphs_possible(self) -> bool:
        """Whether training steps can be captured: no state carried between batches, no dropout."""
        return self.split != "sequential" and not self.dropout and not self.io_dropout and not self.weight_drop


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


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """d2l's ``clip_gradients``: if the global L2 norm of all gradients exceeds ``max_norm``,
    scale every gradient by ``max_norm / norm``. Returns the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / norm, max=1.0)  # = 1 when norm <= max_norm: no change
    torch._foreach_mul_(grads, scale)
    return norm


def compute_gradients(model: RNNLM, X: torch.Tensor, Y: torch.Tensor, clip: float,
                      state: State = None) -> tuple[torch.Tensor, State]:
    """The gradient half of a training step: the mean loss of predicting ``Y`` from ``X``, its
    gradients in the parameters' ``.grad`` (replacing earlier ones), clipped to global norm ``clip``
    (0: no clipping). Returns the detached loss and the final state; the optimizer step is the caller's."""
    loss, state = model.loss(X, Y, state)
    model.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        clip_gradients(model.parameters(), clip)
    return loss.detach(), state


def compute_shared_gradients(model: RNNLM, X: torch.Tensor, Y: torch.Tensor, clip: float, state: State,
                             flags: list[float]) -> tuple[torch.Tensor, State, list[float]]:
    """:func:`compute_gradients` for one process of a distributed run: ``X``/``Y`` are this process's
    rows of the batch (possibly none); the gradients become those of the whole batch's mean loss
    (:func:`rnnkit.distributed.all_reduce_step`) before clipping. Returns this part's mean loss, the
    state, and ``flags`` summed over the processes."""
    model.zero_grad(set_to_none=True)
    if Y.numel():
        total, state = model.loss(X, Y, state, reduction="sum")
        total.backward()
    else:
        total = torch.zeros((), device=Y.device)
    _, flags = distributed.all_reduce_step(model.parameters(), Y.numel(), flags)
    if clip > 0:
        clip_gradients(model.parameters(), clip)
    return total.detach() / max(Y.numel(), 1), state, flags


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD and Adam as the book (weight decay on every parameter); AdamW decays the weight matrices
    only, not biases (as nanoGPT and most character-model recipes do)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def lr_factor(config: TrainConfig, progress: float) -> float:
    """The learning rate's multiplier at ``progress`` in [0, 1] of the run: a linear warmup over the
    first ``warmup`` of it, then constant, or a cosine or linear decay to ``min_lr_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if config.warmup and progress < config.warmup:
        return (progress + 1e-3) / (config.warmup + 1e-3)
    if config.schedule == "constant":
        return 1.0
    rest = (progress - config.warmup) / (1 - config.warmup)
    shape = 0.5 * (1 + math.cos(math.pi * rest)) if config.schedule == "cosine" else 1 - rest
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape


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


@dataclass
class EvalPoint:
    """One line of ``evals.jsonl``: a validation at a training step (at epoch ends, every
    ``eval_every`` steps, at intervals of a time budget, and at its end)."""

    step: int
    epoch: float  # epochs done, fractional
    seconds: float  # wall-clock seconds since training started (evaluations included)
    train_loss: float  # mean training loss since the previous evaluation
    val_loss: float  # nats per token
    val_bpc: float
    lr: float


@dataclass
class EpochStats:
    """One line of ``metrics.jsonl``."""

    epoch: int
    train_loss: float
    train_ppl: float
    val_ppl: float
    val_bpc: float
    seconds: float  # training seconds so far (excludes evaluation)
    tokens_per_s: float


class Trainer:
    """Loads the corpus, builds vocabulary, batches and model from a :class:`TrainConfig`, and trains.

    ``fit()`` returns the history (one :class:`EpochStats` per epoch); ``on_epoch`` is called after
    each epoch with the stats (used by the CLI to print, log and save).

    The trainer has a random number generator state of its own (seeded with ``config.seed``): model
    initialisation and dropout draw from it, and the caller's global torch RNG is the same before
    and after ``Trainer(...)`` and ``fit()``.

    Stopping and saving between steps: a signal handler sets :attr:`stop_requested` (the signal's
    number) and the trainer stops after the step in progress, with :attr:`snapshot` holding the
    state there, and raises :class:`Stop`; :attr:`wants_save` ``(step)`` is asked after every step
    and, where it says so, :attr:`on_save` gets the state. That state includes the position in the
    epoch (batch, partial sums, a carried hidden state), so a resumed run reads exactly the batches
    an uninterrupted one would have read next.

    ``world`` (:mod:`rnnkit.distributed`): this process's place in a torchrun job; it trains on its
    part of every batch, and only its rank 0 should write.
    """

    def __init__(self, config: TrainConfig, text: str | None = None, vocab: Vocab | None = None,
                 world: World = ONE_PROCESS) -> None:
        config.validate()
        self.config = config
        self.world = world
        distributed.check_batch(config.batch_size, world)
        self.device = select_device(config.device)
        if world.started and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", world.local_rank)  # one GPU per process on each machine
        self.unknown_tokens = 0  # tokens of the text read as <unk> (word models: words below min_freq)
        if config.data:
            self._open_prepared(vocab)
        else:
            if text is None:
                text = load_corpus_text(config.corpus, config.encoding, config.strip_gutenberg or None)
            self.corpus_sha1 = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()  # of the text read
            ids, self.vocab = build_corpus(text, config.preprocess, config.tokens, vocab=vocab,
                                           min_freq=config.min_freq)
            self.corpus = torch.tensor(ids, dtype=torch.int64, device=self.device)
            if self.vocab.unk_token is not None:
                self.unknown_tokens = ids.count(self.vocab.unk)
            self.data: DataSplit = split_corpus(
                self.corpus, config.split, config.batch_size, config.num_steps, num_train=config.num_train,
                num_val=config.num_val, val_fraction=config.val_fraction, seed=config.seed)
        if config.val_tokens and self.data.val_text is not None:
            self.data.val_text = self.data.val_text[:config.val_tokens + 1]
        check_parameter_count(config.model, len(self.vocab), config.hidden, config.layers, config.embedding)
        check_memory(config, len(self.vocab), self.device)
        with self._rng(seed=config.seed):
            self.model = build_model(config.model, len(self.vocab), config.hidden, config.layers, config.dropout,
                                     config.embedding, config.activation, config.tie_weights).to(self.device)
        self.model.io_dropout, self.model.weight_drop = config.io_dropout, config.weight_drop
        self.optimizer = make_optimizer(config, self.model)
        # --ema: the weights' exponential moving average (a copy of each parameter), see averaged_weights
        self.average = [p.detach().clone() for p in self.model.parameters()] if config.ema else None
        self._averaged_in = False
        self.captured: CapturedGradients | None = None
        if config.cuda_graphs == "on" and self.device.type != "cuda":
            raise RnnkitError(f"--cuda-graphs on needs a CUDA device, not {self.device}")
        if config.cuda_graphs == "on" and world.started:
            raise RnnkitError("--cuda-graphs on: a captured step has no all-reduce in it; not under torchrun")
        if (self.device.type == "cuda" and config.cuda_graphs != "off" and config.graphs_possible()
                and not world.started):
            self.captured = CapturedGradients(self.model, config.clip)
        if world.started:  # every process starts from rank 0's weights, as DDP does
            distributed.broadcast_from_main(p.data for p in self.model.parameters())
        self.history: list[EpochStats] = []
        self.train_seconds = 0.0
        self.snapshot: dict | None = None  # state after the last completed epoch (see fit)
        self.step = 0  # optimizer steps taken
        self.evals: list[EvalPoint] = []
        self.best: dict | None = None  # {"step", "epoch", "val_loss", "model": weights} of the best evaluation
        self.finished: str | None = None  # why a run stopped before its epochs: time budget, patience
        self.wall_seconds = 0.0  # wall-clock seconds of fit() so far, evaluations included
        self._budget_checked = False
        self._since_eval = [0.0, 0]  # training loss sum and tokens since the last evaluation
        self._bad_evals = 0  # evaluations since the best one
        self._last_eval_wall = 0.0
        self._eval_seconds = 0.0  # evaluation time inside the current epoch (not training time)
        self._wall_t0 = 0.0
        self.on_eval: Callable[[EvalPoint], None] | None = None  # set by fit
        self.stop_requested = 0  # a signal's number: stop after the step in progress (see class doc)
        self.accepts_stop = False  # True while fit() is between steps or in one: a stop request is honoured
        self.wants_save: Callable[[int], bool] | None = None
        self.on_save: Callable[[dict], None] | None = None
        self._position: dict | None = None  # a restored mid-epoch position, until its epoch continues
        self._epoch_run: dict | None = None  # the epoch in progress: epoch, batch, loss, count, t0
        self._carry: State = None  # the state carried into the next batch (sequential split)
        self._rng_active = False  # inside _rng(): the trainer's RNG is torch's global one

    @contextlib.contextmanager
    def _rng(self, seed: int | None = None):
        """Run the block with the trainer's own RNG state as torch's global one (seeded with ``seed``
        the first time), then give the caller's state back."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self._rng_states["torch"])
                if "cuda" in self._rng_states and devices:
                    torch.cuda.set_rng_state(self._rng_states["cuda"], self.device)
            self._rng_active = True
            try:
                yield
            finally:
                self._rng_active = False
                self._rng_states = self._global_rng_states()

    def _global_rng_states(self) -> dict[str, torch.Tensor]:
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where training is: weights, optimizer, RNG
        states, completed epochs and their history. Tensors are copies."""
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": {k: v.clone() for k, v in (self._global_rng_states() if self._rng_active
                                               else self._rng_states).items()},
            "epoch": len(self.history),
            "history": [asdict(h) for h in self.history],
            "train_seconds": self.train_seconds,
            "step": self.step,
            "evals": [asdict(e) for e in self.evals],
            "best": None if self.best is None else {**self.best, "model": dict(self.best["model"])},
            "finished": self.finished,
            "wall_seconds": self.wall_seconds,
            "bad_evals": self._bad_evals,
            "since_eval": self._global_sums(float(self._since_eval[0]), self._since_eval[1]),
            "last_eval_wall": self._last_eval_wall,
            "position": self._position_state(),
            "average": None if self.average is None else [t.detach().clone() for t in self.average],
        }
        return state

    def _global_sums(self, loss_sum: float, count: int) -> list:
        """(loss sum, token count) over all processes (a collective under torchrun)."""
        if self.world.started:
            loss_sum, count = distributed.all_reduce_sum([loss_sum, count], self.device)
        return [loss_sum, int(count)]

    def _position_state(self) -> dict | None:
        """Where in an epoch training is (None at an epoch's end): the batches read, the loss and
        token sums so far, the epoch's training seconds and the state carried into the next batch
        (all processes' lanes)."""
        run = self._epoch_run
        if run is None:
            return self._position  # restored but not yet continued
        loss_sum, count = self._global_sums(float(run["loss"]), run["count"])
        carry = self._carry
        if carry is not None:
            carry = list(carry) if isinstance(carry, tuple) else [carry]
            if self.world.started:
                carry = [distributed.gather_rows(t, state_batch_dim(self.model), self.world) for t in carry]
            carry = {"tensors": [t.detach().clone() for t in carry], "tuple": isinstance(self._carry, tuple)}
        return {"epoch": run["epoch"], "batch": run["batch"], "loss_sum": loss_sum, "count": count,
                "seconds": time.perf_counter() - run["t0"] - self._eval_seconds, "carry": carry}

    def _carried_rows(self, carry: dict | None) -> State:
        """This process's lanes of a saved carried state."""
        if carry is None:
            return None
        dim = state_batch_dim(self.model)
        tensors = [t.to(self.device) for t in carry["tensors"]]
        if self.world.started:
            tensors = [t[(slice(None),) * dim + (part_rows(t.shape[dim], self.world.part),)] for t in tensors]
        return tuple(tensors) if carry["tuple"] else tensors[0]

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the next :meth:`fit` continues from there)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._rng_states = {"torch": state["rng"]["torch"].clone()}
        if "cuda" in state["rng"] and self.device.type == "cuda":
            self._rng_states["cuda"] = state["rng"]["cuda"].clone()
        self.history = [EpochStats(**h) for h in state["history"]]
        self.train_seconds = state["train_seconds"]
        self.step = state.get("step", 0)
        self.evals = [EvalPoint(**e) for e in state.get("evals", [])]
        self.best = state.get("best")
        self.finished = state.get("finished")
        self.wall_seconds = state.get("wall_seconds", 0.0)
        self._bad_evals = state.get("bad_evals", 0)
        loss_sum, count = state.get("since_eval", [0.0, 0])
        self._since_eval = [loss_sum, count] if self.world.is_main else [0.0, 0]  # sums: counted once
        self._last_eval_wall = state.get("last_eval_wall", self.wall_seconds)
        self._position = state.get("position")
        self._epoch_run = None
        if self.average is not None:  # a run saved without one starts its average from the weights
            for kept, saved in zip(self.average, state.get("average") or self.model.parameters(), strict=True):
                kept.copy_(saved)

    def train_epoch(self, epoch: int, on_batch: Callable[[int, torch.Tensor], None] | None = None
                    ) -> tuple[float, int]:
        """One pass over the training batches (from a restored mid-epoch position, if any; cut short
        when the run must stop: time budget, patience, max steps); returns (summed loss in nats,
        token count) of this process's part. ``on_batch(tokens, loss)`` is called after each step
        (e.g. to move a progress bar). Evaluations and saves due within the epoch run here."""
        model, clip, world, config = self.model, self.config.clip, self.world, self.config
        model.train()
        start, seconds, state = 0, 0.0, None
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        position, self._position = self._position, None
        if position is not None and position["epoch"] == epoch:
            start, seconds, state = position["batch"], position["seconds"], self._carried_rows(position["carry"])
            if world.is_main:  # the sums are of all processes: counted once
                total += position["loss_sum"]
                count = position["count"]
        run = self._epoch_run = {"epoch": epoch, "batch": start, "loss": total, "count": count,
                                 "t0": time.perf_counter() - seconds}
        self._carry = state
        num_batches = max(len(self.data.train), 1)
        stateful = self.data.train.stateful
        for k, (X, Y) in enumerate(self.data.train.epoch(epoch, start, world.part), start=start):
            self._set_lr()
            carried = detach_state(state) if stateful else None  # truncated BPTT where batches continue
            if world.started:  # the flags are agreed in the step's all-reduce
                loss, state, flags = compute_shared_gradients(model, X, Y, clip, carried,
                                                              self._local_flags(self.step + 1))
            elif self.captured is not None:
                loss = self.captured.step(X, Y)
            else:
                loss, state = compute_gradients(model, X, Y, clip, carried)
            self.optimizer.step()
            self.step += 1
            if self.average is not None:
                self._update_average()
            total += loss * Y.numel()
            count += Y.numel()
            run["batch"], run["count"] = k + 1, count
            self._carry = state if stateful else None
            self._since_eval[0] += loss.detach().double() * Y.numel()  # a tensor: no device sync per step
            self._since_eval[1] += Y.numel()
            if on_batch is not None:
                on_batch(Y.numel() * world.size, loss)
            if not world.started:
                flags = self._local_flags(self.step)
            signum, budget_spent, eval_due, save_due = flags
            if (self.step % config.eval_every == 0) if config.eval_every else (config.time_budget and eval_due):
                self.evaluate_point(epoch + (k + 1) / num_batches)
                model.train()
            if signum:  # after the evaluation due at this step: a resumed run repeats nothing
                signum = distributed.all_reduce_max(self.stop_requested, self.device) if world.started else signum
                self.snapshot = self._state_now()
                raise Stop(int(signum))
            if self._must_stop(bool(budget_spent)):
                break
            if save_due and self.on_save is not None:
                self.snapshot = self._state_now()
                self.on_save(self.snapshot)
        return total.item(), count

    def _local_flags(self, step: int) -> list[float]:
        """What this process says after step ``step``: [signal number or 0, time budget spent,
        validation due by the clock, save due]; under torchrun these are summed over processes."""
        budget = self.config.time_budget
        elapsed = self._elapsed() if budget else 0.0
        return [float(self.stop_requested), float(bool(budget) and elapsed >= budget),
                float(bool(budget) and elapsed - self._last_eval_wall >= budget / 10),  # ~10 per budget
                float(self.wants_save is not None and bool(self.wants_save(step)))]

    def _state_now(self) -> dict:
        """:meth:`state_dict` between two steps of an epoch (a collective under torchrun)."""
        self.wall_seconds = self._elapsed()
        return self.state_dict()

    def _evaluates_within_epochs(self) -> bool:
        return bool(self.config.eval_every or self.config.time_budget)

    def _elapsed(self) -> float:
        """Wall-clock seconds of training so far, across resumes."""
        return time.perf_counter() - self._wall_t0

    def progress(self) -> float:
        """How far the run is, in [0, 1]: of its time budget, or of all its steps."""
        if self.config.time_budget:
            return self._elapsed() / self.config.time_budget
        if self.config.max_steps:
            return self.step / self.config.max_steps
        return self.step / max(self.config.epochs * len(self.data.train), 1)

    def _set_lr(self) -> None:
        if self.config.schedule == "constant" and not self.config.warmup:
            return
        lr = self.config.lr * lr_factor(self.config, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _must_stop(self, budget_spent: bool) -> bool:
        if budget_spent:
            self.finished = f"time budget of {self.config.time_budget:g} s spent"
        elif self.config.max_steps and self.step >= self.config.max_steps:
            self.finished = f"{self.config.max_steps} steps done"
        elif self.config.patience and self._bad_evals >= self.config.patience:
            self.finished = f"no better validation loss in {self.config.patience} evaluations"
        return self.finished is not None

    def _update_average(self) -> None:
        """average <- decay * average + (1 - decay) * weights after a step, the decay ramped up over
        the first steps ((1 + t) / (10 + t) after t steps, capped at ``ema``) so that the start's
        weights fade fast."""
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.average, [p.detach() for p in self.model.parameters()], 1 - decay)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within the block the model holds the weights' moving average (``--ema``), else nothing
        changes; the training weights are put back after it. Validation and the best checkpoint use
        the average: near the end of a run it sits nearer a minimum than the last noisy step."""
        if self.average is None or self._averaged_in:
            yield
            return
        parameters = list(self.model.parameters())
        training = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in parameters], self.average)
        self._averaged_in = True
        try:
            yield
        finally:
            self._averaged_in = False
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in parameters], training)

    def evaluate_point(self, epoch: float, val: tuple[float, int] | None = None) -> EvalPoint | None:
        """Validate now (or record ``val``, an already computed (nll, count)), keep the best weights
        (the moving average's, with ``--ema``), count evaluations without improvement. None where
        there is no validation data."""
        with self.averaged_weights():
            return self._evaluate_point(epoch, val)

    def _evaluate_point(self, epoch: float, val: tuple[float, int] | None) -> EvalPoint | None:
        started = time.perf_counter()
        val_nll, val_count = self.evaluate_val() if val is None else val
        self._eval_seconds += time.perf_counter() - started
        if not val_count:
            return None
        loss_sum, tokens = self._global_sums(float(self._since_eval[0]), self._since_eval[1])
        point = EvalPoint(self.step, round(epoch, 4), round(self._elapsed(), 3),
                          loss_sum / tokens if tokens else float("nan"), val_nll / val_count,
                          bits_per_token(val_nll, val_count), self.optimizer.param_groups[0]["lr"])
        self.evals.append(point)
        self._since_eval, self._last_eval_wall = [0.0, 0], self._elapsed()
        if self.best is None or point.val_loss < self.best["val_loss"]:
            self.best = {"step": point.step, "epoch": point.epoch, "val_loss": point.val_loss,
                         "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
            self._bad_evals = 0
        else:
            self._bad_evals += 1
        if self.on_eval is not None:  # after the best is updated: it may say "(best)"
            self.on_eval(point)
        return point

    def evaluate_val(self) -> tuple[float, int]:
        """Summed NLL and count on the validation data (windows for ``d2l``, else the held-out text)
        of the weights' moving average where there is one; under torchrun, rank 0's, sent to all
        (every process then decides alike)."""
        if not self.world.started:
            return self._validate()
        result = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.world.is_main:
            result += torch.tensor(self._validate(), dtype=torch.float64, device=self.device)
        distributed.broadcast_from_main([result])
        return result[0].item(), int(result[1].item())

    def _validate(self) -> tuple[float, int]:
        with self.averaged_weights():  # --ema: the average is what is validated
            if self.data.val_windows is not None:
                batches = self.data.val_windows.batched(EVAL_BATCH_TOKENS // self.config.num_steps)
                return window_nll(self.model, batches)
            if self.data.val_text is not None:
                return stream_nll(self.model, self.data.val_text, lanes=validation_lanes(len(self.data.val_text)))
            return 0.0, 0

    def _open_prepared(self, vocab: Vocab | None) -> None:
        """Train from a prepared directory: its token files stay on disk, read through memory maps."""
        from rnnkit.prepare import open_prepared

        config = self.config
        prepared = open_prepared(config.data)
        kind = prepared.manifest["tokens"]
        tokens = [chr(t) for t in prepared.idx_to_token] if kind == "bytes" else prepared.idx_to_token
        if config.tokens not in (kind, "char"):
            raise RnnkitError(f"{config.data} holds {kind} tokens, not {config.tokens}")
        config.tokens = kind
        self.vocab = Vocab.from_tokens_list(tokens, unk_token=None)
        if vocab is not None and vocab.idx_to_token != self.vocab.idx_to_token:
            raise RnnkitError(f"{config.data}: its vocabulary is not the one this run was trained with")
        self.corpus_sha1 = prepared.manifest["files"]["train"]["sha1"]
        self.corpus = prepared.train
        if self.device.type != "cpu":
            raise RnnkitError("--data trains on the CPU for now (batches are gathered from the memory map)")
        if len(prepared.train) < config.num_steps + 1:
            raise RnnkitError(f"{config.data}: {len(prepared.train)} training tokens, shorter than one window")
        val = prepared.val if len(prepared.val) >= 2 else None
        self.data = DataSplit(RandomWindows(prepared.train, config.batch_size, config.num_steps, config.seed),
                              None, val)

    def fit(self, on_epoch: Callable[[EpochStats], None] | None = None,
            on_batch: Callable[[int, torch.Tensor], None] | None = None,
            on_eval: Callable[[EvalPoint], None] | None = None) -> list[EpochStats]:
        """Train from the current epoch (or mid-epoch position) to ``config.epochs``. After every
        epoch and at every save, :attr:`snapshot` holds the state to resume from; a stop request
        (:attr:`stop_requested`) updates it to the step where training stopped and raises :class:`Stop`.

        Raises :class:`TrainingDiverged` when an epoch's training loss is NaN or so large that its
        perplexity overflows (above ~709 nats per token); the snapshot then still holds the last
        good epoch."""
        self.snapshot = self.state_dict()
        self.model.prepare_kernel()  # a kernel build happens here, not inside epoch 1's timing
        self.on_eval = on_eval
        self.check_budget()
        self._wall_t0 = time.perf_counter() - self.wall_seconds
        last_epoch = 10**9 if self.config.time_budget or self.config.max_steps else self.config.epochs
        with self._rng(), self._accepting_stop():
            if self.world.rank:  # dropout: each process its own masks (rank 0 keeps the saved RNG stream)
                torch.manual_seed((self.config.seed * 1_000_003 + self.world.rank * 7919 + self.step) % (1 << 63))
            for epoch in range(len(self.history), last_epoch):
                if self.finished:
                    break
                self._eval_seconds = 0.0
                loss_sum, count = self.train_epoch(epoch, on_batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - self._epoch_run["t0"] - self._eval_seconds
                self._epoch_run, self._carry = None, None
                loss_sum, count = self._global_sums(loss_sum, count)
                if count == 0:
                    raise RnnkitError("the training data gave no batch this epoch; lower --batch-size or --num-steps")
                train_loss = loss_sum / count
                if safe_exp(train_loss) == math.inf or math.isnan(train_loss):  # inf perplexity, or NaN
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1}: the training loss is {train_loss:.6g} nats per "
                        f"token (perplexity beyond float range); clip the gradients (--clip 1) or lower the "
                        f"learning rate (--lr {self.config.lr:g} now)")
                self.train_seconds += elapsed
                val_nll, val_count = self.evaluate_val()
                if not (self.evals and self.evals[-1].step == self.step):  # not just evaluated at this step
                    self.evaluate_point(epoch + 1 if not self.finished else self.evals_epoch(epoch, count),
                                        (val_nll, val_count))
                self.wall_seconds = self._elapsed()
                stats = EpochStats(epoch + 1, train_loss, safe_exp(train_loss), perplexity(val_nll, val_count),
                                   bits_per_token(val_nll, val_count), round(self.train_seconds, 4),
                                   round(count / elapsed, 1))
                self.history.append(stats)
                self.snapshot = self.state_dict()
                if on_epoch is not None:
                    on_epoch(stats)
        return self.history

    @contextlib.contextmanager
    def _accepting_stop(self):
        """While training steps run, a stop request waits for the step in progress (class doc)."""
        self.accepts_stop = True
        try:
            yield
        finally:
            self.accepts_stop = False

    def check_budget(self, spent_s: float = 0.0) -> None:
        """A time budget must leave room for training and about ten validations: measure one (rank
        0's measure decides for every process); once per run, and :meth:`fit` calls it if nobody
        has. ``spent_s``: seconds already taken out of the user's budget (sizing), for the message."""
        if not self.config.time_budget or self.finished or self._budget_checked:
            return
        self.model.prepare_kernel()  # a kernel build is not a validation's time
        started = time.perf_counter()
        self.evaluate_val()
        took = torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=self.device)
        if self.world.started:
            distributed.broadcast_from_main([took])
        minimum = max(5.0, 20 * took.item())
        if self.config.time_budget < minimum:
            sizing = f"{spent_s:.1f} s went to sizing the model and " if spent_s else ""
            raise RnnkitError(f"a time budget of {self.config.time_budget + spent_s:g} s is too short for this run: "
                              f"{sizing}one validation takes {took.item():.2f} s here, so give at least "
                              f"{math.ceil(minimum + spent_s)} s")
        self._budget_checked = True

    def evals_epoch(self, epoch: int, tokens: int) -> float:
        """Fractional epochs done when epoch ``epoch`` stopped after ``tokens`` training tokens."""
        per_epoch = max(self.data.train.num_windows * self.config.num_steps, 1)
        return epoch + min(tokens / per_epoch, 1.0)


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
    return {"weights and gradients": 2 * params * 4, "optimizer state and snapshot": (1 + 2 * slots) * params * 4,
            "activations of one step": activations}


def check_memory(config: TrainConfig, vocab_size: int, device: torch.device) -> None:
    """Refuse a run that cannot fit in this machine's free memory, before allocating anything."""
    available = available_memory(device)
    needed = memory_needed(config, vocab_size)
    if available is not None and sum(needed.values()) > available:
        parts = ", ".join(f"{what} {size / 2**30:.1f} GiB" for what, size in needed.items())
        raise RnnkitError(f"this run needs about {sum(needed.values()) / 2**30:.1f} GiB ({parts}) but {device} has "
                          f"{available / 2**30:.1f} GiB free; lower --hidden, --layers, --batch-size or --num-steps")
