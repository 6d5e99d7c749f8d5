"""Training and evaluation: every knob in one dataclass, one :class:`Trainer` that runs it."""

from __future__ import annotations

import copy
import ctypes
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from rnnkit.data import DataSplit, WindowBatches, check_sizes, split_corpus
from rnnkit.errors import RnnkitError
from rnnkit.models import RNNLM, State, build_model, detach_state, evaluating
from rnnkit.text import Vocab, build_corpus, load_corpus_text

OPTIMIZERS = ("sgd", "adam", "adamw")
CUDA_GRAPHS = ("auto", "on", "off")
EVAL_BATCH_TOKENS = 1 << 18  # evaluation needs no gradients: fewer, larger batches are faster


@dataclass
class TrainConfig:
    """Everything that defines a run. The defaults are the book's configuration (d2l §9.5/§9.6)."""

    corpus: str = "timemachine"  # built-in corpus name or a path to a UTF-8 text file
    encoding: str = "utf-8"
    strip_gutenberg: bool = False  # drop a Project Gutenberg header/footer (always done for built-in books)
    preprocess: str = "d2l"  # d2l: letters only, lower case; raw: every character a token
    split: str = "d2l"  # d2l | random | sequential | fraction (see rnnkit.data)
    num_train: int = 10000  # d2l split: training windows
    num_val: int = 5000  # d2l split: validation windows
    val_fraction: float = 0.1  # other splits: held-out tail of the corpus
    model: str = "rnn"  # rnn | gru | lstm | scratch
    hidden: int = 32
    layers: int = 1
    dropout: float = 0.0
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

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RnnkitError(f"config has unknown keys: {sorted(unknown)}")
        return cls(**values)

    def validate(self) -> None:
        check_sizes(self.batch_size, self.num_steps)
        if self.optimizer not in OPTIMIZERS:
            raise RnnkitError(f"unknown optimizer '{self.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
        if not self.epochs >= 0:
            raise RnnkitError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RnnkitError(f"lr must be a positive number, got {self.lr}")
        if not self.clip >= 0:
            raise RnnkitError(f"clip must be >= 0 (0 = off), got {self.clip}")
        if self.cuda_graphs not in CUDA_GRAPHS:
            raise RnnkitError(f"cuda_graphs must be one of {', '.join(CUDA_GRAPHS)}, got {self.cuda_graphs!r}")
        if self.cuda_graphs == "on" and not self.graphs_possible():
            raise RnnkitError("--cuda-graphs on needs a split without carried state (not sequential) and no dropout")

    def graphs_possible(self) -> bool:
        """Whether training steps can be captured: no state carried between batches, no dropout."""
        return self.split != "sequential" and not self.dropout


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise RnnkitError(f"unknown device '{name}'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RnnkitError("device cuda requested but CUDA is not available")
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
    No effect on other platforms or allocators.
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


def window_nll(model: RNNLM, batches: WindowBatches) -> tuple[float, int]:
    """Summed NLL (nats) and token count over every window, each from a fresh state (d2l's validation)."""
    total, count = 0.0, 0
    with evaluating(model):
        for X, Y in batches:
            total += model.loss(X, Y, reduction="sum")[0].double().item()
            count += Y.numel()
    return total, count


def stream_nll(model: RNNLM, tokens: torch.Tensor, chunk: int = 1024) -> tuple[float, int]:
    """Summed NLL (nats) and count over a token stream, carrying the state across chunks so that
    every token after the first is predicted once, from all the text before it."""
    total, count, state = 0.0, 0, None
    with evaluating(model):
        for start in range(0, len(tokens) - 1, chunk):
            piece = tokens[start:start + chunk + 1]
            X, Y = piece[:-1].unsqueeze(0), piece[1:].unsqueeze(0)
            loss, state = model.loss(X, Y, state, reduction="sum")
            total += loss.double().item()
            count += Y.numel()
    return total, count


def perplexity(nll: float, count: int) -> float:
    """exp(mean token cross-entropy)."""
    return math.exp(nll / count) if count else float("nan")


def bits_per_token(nll: float, count: int) -> float:
    """Mean cross-entropy in bits (bits per character for character models)."""
    return nll / count / math.log(2) if count else float("nan")


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


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
    """

    def __init__(self, config: TrainConfig, text: str | None = None, vocab: Vocab | None = None) -> None:
        config.validate()
        self.config = config
        self.device = select_device(config.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        if text is None:
            text = load_corpus_text(config.corpus, config.encoding, config.strip_gutenberg or None)
        ids, self.vocab = build_corpus(text, config.preprocess, vocab=vocab)
        self.corpus = torch.tensor(ids, dtype=torch.int64, device=self.device)
        self.data: DataSplit = split_corpus(
            self.corpus, config.split, config.batch_size, config.num_steps, num_train=config.num_train,
            num_val=config.num_val, val_fraction=config.val_fraction, seed=config.seed)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, len(self.vocab), config.hidden, config.layers, config.dropout,
                                 config.embedding, config.activation).to(self.device)
        self.optimizer = make_optimizer(config, self.model)
        self.captured: CapturedGradients | None = None
        if config.cuda_graphs == "on" and self.device.type != "cuda":
            raise RnnkitError(f"--cuda-graphs on needs a CUDA device, not {self.device}")
        if self.device.type == "cuda" and config.cuda_graphs != "off" and config.graphs_possible():
            self.captured = CapturedGradients(self.model, config.clip)
        self.history: list[EpochStats] = []
        self.train_seconds = 0.0
        self.snapshot: dict | None = None  # state after the last completed epoch (see fit)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where training is: weights, optimizer, RNG
        states, completed epochs and their history. Tensors are copies."""
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": {"torch": torch.get_rng_state()},
            "epoch": len(self.history),
            "history": [asdict(h) for h in self.history],
            "train_seconds": self.train_seconds,
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the next :meth:`fit` continues from there)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = [EpochStats(**h) for h in state["history"]]
        self.train_seconds = state["train_seconds"]

    def train_epoch(self, epoch: int, on_batch: Callable[[int, torch.Tensor], None] | None = None
                    ) -> tuple[float, int]:
        """One pass over the training batches; returns (summed loss in nats, token count).
        ``on_batch(tokens, loss)`` is called after each step (e.g. to move a progress bar)."""
        model, clip = self.model, self.config.clip
        model.train()
        state: State = None
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for X, Y in self.data.train.epoch(epoch):
            if self.captured is not None:
                loss = self.captured.step(X, Y)
            else:  # the state is carried over (truncated BPTT) only where batches continue each other
                loss, state = compute_gradients(model, X, Y, clip,
                                                detach_state(state) if self.data.train.stateful else None)
            self.optimizer.step()
            total += loss * Y.numel()
            count += Y.numel()
            if on_batch is not None:
                on_batch(Y.numel(), loss)
        return total.item(), count

    def evaluate_val(self) -> tuple[float, int]:
        """Summed NLL and count on the validation data (windows for ``d2l``, else the held-out text)."""
        if self.data.val_windows is not None:
            return window_nll(self.model, self.data.val_windows.batched(EVAL_BATCH_TOKENS // self.config.num_steps))
        if self.data.val_text is not None:
            return stream_nll(self.model, self.data.val_text)
        return 0.0, 0

    def fit(self, on_epoch: Callable[[EpochStats], None] | None = None,
            on_batch: Callable[[int, torch.Tensor], None] | None = None) -> list[EpochStats]:
        """Train from the current epoch to ``config.epochs``. After every epoch, :attr:`snapshot`
        holds the state to resume from, so an interrupt mid-epoch loses only that epoch."""
        self.snapshot = self.state_dict()
        self.model.prepare_kernel()  # a kernel build happens here, not inside epoch 1's timing
        for epoch in range(len(self.history), self.config.epochs):
            t0 = time.perf_counter()
            loss_sum, count = self.train_epoch(epoch, on_batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            self.train_seconds += elapsed
            val_nll, val_count = self.evaluate_val()
            train_loss = loss_sum / count
            stats = EpochStats(epoch + 1, train_loss, math.exp(train_loss), perplexity(val_nll, val_count),
                               bits_per_token(val_nll, val_count), round(self.train_seconds, 4),
                               round(count / elapsed, 1))
            self.history.append(stats)
            self.snapshot = self.state_dict()
            if on_epoch is not None:
                on_epoch(stats)
        return self.history
