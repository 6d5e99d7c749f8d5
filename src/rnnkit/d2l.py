"""``from rnnkit import d2l``: the part of d2l 1.0's PyTorch API that chapter 9 (§9.5, §9.6) uses.

Replace ``from d2l import torch as d2l`` with ``from rnnkit import d2l`` and the book's PyTorch
cells run unchanged. Same names, signatures and behaviour as d2l 1.0.3, as a thin layer over
rnnkit: the corpus is found like ``rnnkit --corpus timemachine`` (``RNNKIT_DATA_DIR``, cache,
sha1-checked download), preprocessing and ``Vocab`` are ``rnnkit.text``'s, batches are gathered
as whole tensors (``rnnkit.data.TensorBatches``) instead of a per-sample ``DataLoader``,
clipping is ``rnnkit.training.optim.clip_gradients``, ``predict`` is ``rnnkit.generate``'s loop and
``RNNScratch`` runs rnnkit's recurrence.

The progress board never blocks training: in a notebook it redraws at most once a second; in a
script it writes a PNG (``RNNKIT_D2L_BOARD``, default ``d2l-board.png``; ``off`` disables) at most
every few seconds and once when ``fit`` ends; ``board.display = False`` turns it off, as in d2l.
"""

from __future__ import annotations

import collections
import inspect
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from rnnkit import models
from rnnkit.data import TensorBatches
from rnnkit.generate import Sampling, generate_ids, model_step
from rnnkit.text import D2L_DATA_URL, Vocab, find_corpus, preprocess, read_text, tokenize
from rnnkit.training.optim import clip_gradients as _clip_gradients

__all__ = [
    "Classifier",
    "DataModule",
    "HyperParameters",
    "Module",
    "ProgressBoard",
    "RNN",
    "RNNLM",
    "RNNLMScratch",
    "RNNScratch",
    "SGD",
    "TimeMachine",
    "Trainer",
    "Vocab",
    "add_to_class",
    "check_len",
    "check_shape",
    "cpu",
    "gpu",
    "num_gpus",
    "swapaxes",
    "try_all_gpus",
    "try_gpu",
]

DATA_URL = D2L_DATA_URL

# Tensor aliases of d2l/torch.py
ones, zeros, tensor, arange = torch.ones, torch.zeros, torch.tensor, torch.arange
meshgrid, sin, sinh, cos, cosh, tanh = torch.meshgrid, torch.sin, torch.sinh, torch.cos, torch.cosh, torch.tanh
linspace, exp, log, normal, rand, randn = torch.linspace, torch.exp, torch.log, torch.normal, torch.rand, torch.randn
matmul, concat, stack = torch.matmul, torch.cat, torch.stack
int32, int64, float32 = torch.int32, torch.int64, torch.float32
abs, eye, sigmoid, batch_matmul = torch.abs, torch.eye, torch.sigmoid, torch.bmm  # noqa: A001
numpy = lambda x, *args, **kwargs: x.detach().numpy(*args, **kwargs)
size = lambda x, *args, **kwargs: x.numel(*args, **kwargs)
reshape = lambda x, *args, **kwargs: x.reshape(*args, **kwargs)
to = lambda x, *args, **kwargs: x.to(*args, **kwargs)
reduce_sum = lambda x, *args, **kwargs: x.sum(*args, **kwargs)
argmax = lambda x, *args, **kwargs: x.argmax(*args, **kwargs)
astype = lambda x, *args, **kwargs: x.type(*args, **kwargs)
transpose = lambda x, *args, **kwargs: x.t(*args, **kwargs)
reduce_mean = lambda x, *args, **kwargs: x.mean(*args, **kwargs)
expand_dims = lambda x, *args, **kwargs: x.unsqueeze(*args, **kwargs)
swapaxes = lambda x, *args, **kwargs: x.swapaxes(*args, **kwargs)
repeat = lambda x, *args, **kwargs: x.repeat(*args, **kwargs)


def add_to_class(Class):
    """Register the decorated function as a method of ``Class`` (d2l's notebook idiom)."""

    def wrapper(obj):
        setattr(Class, obj.__name__, obj)

    return wrapper


def cpu() -> torch.device:
    return torch.device("cpu")


def gpu(i: int = 0) -> torch.device:
    return torch.device(f"cuda:{i}")


def num_gpus() -> int:
    return torch.cuda.device_count()


def try_gpu(i: int = 0) -> torch.device:
    """GPU ``i`` if it exists, else the CPU."""
    return gpu(i) if num_gpus() >= i + 1 else cpu()


def try_all_gpus() -> list[torch.device]:
    return [gpu(i) for i in range(num_gpus())]


def check_len(a, n) -> None:
    """Check the length of a list."""
    assert len(a) == n, f"list's length {len(a)} != expected length {n}"


def check_shape(a, shape) -> None:
    """Check the shape of a tensor."""
    assert a.shape == shape, f"tensor's shape {a.shape} != expected shape {shape}"


class HyperParameters:
    """Base class whose ``save_hyperparameters`` turns the caller's ``__init__`` arguments into attributes."""

    def save_hyperparameters(self, ignore=()):
        frame = inspect.currentframe().f_back
        _, _, _, local_vars = inspect.getargvalues(frame)
        self.hparams = {
            k: v for k, v in local_vars.items() if k not in set(list(ignore) + ["self"]) and not k.startswith("_")
        }
        for k, v in self.hparams.items():
            setattr(self, k, v)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class ProgressBoard(HyperParameters):
    """d2l's board: averages every ``every_n`` points per label and plots them, without blocking.

    Points are recorded exactly as d2l does; drawing is rate-limited (see the module docstring).
    """

    notebook_interval_s = 1.0
    file_interval_s = 5.0

    def __init__(
        self,
        xlabel=None,
        ylabel=None,
        xlim=None,
        ylim=None,
        xscale="linear",
        yscale="linear",
        ls=("-", "--", "-.", ":"),
        colors=("C0", "C1", "C2", "C3"),
        fig=None,
        axes=None,
        figsize=(3.5, 2.5),
        display=True,
    ):
        self.save_hyperparameters()
        self.raw_points: dict = collections.OrderedDict()
        self.data: dict = collections.OrderedDict()
        self._last_draw = 0.0
        self._dirty = False

    def draw(self, x, y, label, every_n=1):
        Point = collections.namedtuple("Point", ["x", "y"])
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        points.append(Point(x, y))
        if len(points) != every_n:
            return
        line.append(Point(sum(p.x for p in points) / len(points), float(sum(p.y for p in points) / len(points))))
        points.clear()
        self._dirty = True
        if not self.display:
            return
        interval = self.notebook_interval_s if _in_notebook() else self.file_interval_s
        if time.monotonic() - self._last_draw >= interval:
            self.flush()

    def target(self) -> str | None:
        """Where a script's board goes: ``$RNNKIT_D2L_BOARD`` (``off``: nowhere), default d2l-board.png."""
        path = os.environ.get("RNNKIT_D2L_BOARD", "d2l-board.png")
        return None if path.lower() in ("", "off", "0", "none") else path

    def flush(self) -> None:
        """Draw now (notebook output or PNG file), if there is anything new and display is on."""
        if not (self.display and self._dirty and self.data):
            return
        in_notebook = _in_notebook()
        path = None if in_notebook else self.target()
        if not in_notebook and path is None:
            return
        try:
            import matplotlib

            if not in_notebook:
                matplotlib.use("Agg")
            from matplotlib import pyplot as plt
        except ImportError:
            self.display = False
            print(
                "rnnkit.d2l: matplotlib is not installed; progress board off (pip install 'rnnkit[plot]')",
                file=sys.stderr,
            )
            return
        if self.fig is None:
            self.fig = plt.figure(figsize=self.figsize)
        self.fig.clf()
        axes = self.axes if self.axes else self.fig.gca()
        plt_lines, labels = [], []
        for (k, v), ls, color in zip(self.data.items(), self.ls, self.colors, strict=False):
            plt_lines.append(axes.plot([p.x for p in v], [p.y for p in v], linestyle=ls, color=color)[0])
            labels.append(k)
        if self.xlim:
            axes.set_xlim(self.xlim)
        if self.ylim:
            axes.set_ylim(self.ylim)
        axes.set_xlabel(self.xlabel or "")
        axes.set_ylabel(self.ylabel or "")
        axes.set_xscale(self.xscale)
        axes.set_yscale(self.yscale)
        axes.legend(plt_lines, labels)
        if in_notebook:
            from IPython import display

            display.display(self.fig)
            display.clear_output(wait=True)
        else:
            self.fig.savefig(path, dpi=100, bbox_inches="tight")
        self._last_draw = time.monotonic()
        self._dirty = False


class Module(nn.Module, HyperParameters):
    """d2l's base class of models."""

    def __init__(self, plot_train_per_epoch=2, plot_valid_per_epoch=1):
        super().__init__()
        self.save_hyperparameters()
        self.board = ProgressBoard()

    def loss(self, y_hat, y):
        raise NotImplementedError

    def forward(self, X):
        assert hasattr(self, "net"), "Neural network is defined"
        return self.net(X)

    def plot(self, key, value, train):
        """Plot a point in animation."""
        assert hasattr(self, "trainer"), "Trainer is not inited"
        self.board.xlabel = "epoch"
        if train:
            x = self.trainer.train_batch_idx / self.trainer.num_train_batches
            n = self.trainer.num_train_batches / self.plot_train_per_epoch
        else:
            x = self.trainer.epoch + 1
            n = self.trainer.num_val_batches / self.plot_valid_per_epoch
        self.board.draw(x, value.detach().to(cpu()).numpy(), ("train_" if train else "val_") + key, every_n=int(n))

    def training_step(self, batch):
        l = self.loss(self(*batch[:-1]), batch[-1])  # noqa: E741
        self.plot("loss", l, train=True)
        return l

    def validation_step(self, batch):
        l = self.loss(self(*batch[:-1]), batch[-1])  # noqa: E741
        self.plot("loss", l, train=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def apply_init(self, inputs, init=None):
        self.forward(*inputs)
        if init is not None:
            self.net.apply(init)


class DataModule(HyperParameters):
    """d2l's base class of data."""

    def __init__(self, root="../data", num_workers=4):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        tensors = tuple(a[indices] for a in tensors)
        return TensorBatches(tensors, self.batch_size, shuffle=train)


class Trainer(HyperParameters):
    """d2l's trainer: ``fit`` runs ``fit_epoch`` ``max_epochs`` times."""

    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0):
        self.save_hyperparameters()
        self.gpus = [gpu(i) for i in range(min(num_gpus, torch.cuda.device_count()))]

    def prepare_data(self, data):
        self.train_dataloader = data.train_dataloader()
        self.val_dataloader = data.val_dataloader()
        self.num_train_batches = len(self.train_dataloader)
        self.num_val_batches = len(self.val_dataloader) if self.val_dataloader is not None else 0

    def prepare_model(self, model):
        model.trainer = self
        model.board.xlim = [0, self.max_epochs]
        if self.gpus:
            model.to(self.gpus[0])
        self.model = model

    def fit(self, model, data):
        self.prepare_data(data)
        self.prepare_model(model)
        self.optim = model.configure_optimizers()
        self.epoch = 0
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        for self.epoch in range(self.max_epochs):  # noqa: B007, B020 (d2l's own loop)
            self.fit_epoch()
        model.board.flush()

    def prepare_batch(self, batch):
        if self.gpus:
            batch = [a.to(self.gpus[0]) for a in batch]
        return batch

    def fit_epoch(self):
        self.model.train()
        for batch in self.train_dataloader:
            loss = self.model.training_step(self.prepare_batch(batch))
            self.optim.zero_grad()
            with torch.no_grad():
                loss.backward()
                if self.gradient_clip_val > 0:
                    self.clip_gradients(self.gradient_clip_val, self.model)
                self.optim.step()
            self.train_batch_idx += 1
        if self.val_dataloader is None:
            return
        self.model.eval()
        for batch in self.val_dataloader:
            with torch.no_grad():
                self.model.validation_step(self.prepare_batch(batch))
            self.val_batch_idx += 1

    def clip_gradients(self, grad_clip_val, model):
        _clip_gradients([p for p in model.parameters() if p.requires_grad], grad_clip_val)


class SGD(HyperParameters):
    """Minibatch stochastic gradient descent (d2l §3.4)."""

    def __init__(self, params, lr):
        self.save_hyperparameters()

    def step(self):
        for param in self.params:
            param -= self.lr * param.grad

    def zero_grad(self):
        for param in self.params:
            if param.grad is not None:
                param.grad.zero_()


class Classifier(Module):
    """d2l's base class of classification models."""

    def validation_step(self, batch):
        Y_hat = self(*batch[:-1])
        self.plot("loss", self.loss(Y_hat, batch[-1]), train=False)
        self.plot("acc", self.accuracy(Y_hat, batch[-1]), train=False)

    def accuracy(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        preds = Y_hat.argmax(axis=1).type(Y.dtype)
        compare = (preds == Y.reshape(-1)).type(torch.float32)
        return compare.mean() if averaged else compare

    def loss(self, Y_hat, Y, averaged=True):
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        Y = Y.reshape((-1,))
        return F.cross_entropy(Y_hat, Y, reduction="mean" if averaged else "none")

    def layer_summary(self, X_shape):
        X = torch.randn(*X_shape)
        for layer in self.net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)


class TimeMachine(DataModule):
    """The Time Machine, character level: overlapping windows, first ``num_train`` for training."""

    def _download(self):
        return read_text(find_corpus("timemachine"))

    def _preprocess(self, text):
        return preprocess(text, "d2l")

    def _tokenize(self, text):
        return tokenize(text, "char")

    def build(self, raw_text, vocab=None):
        tokens = self._tokenize(self._preprocess(raw_text))
        if vocab is None:
            vocab = Vocab(tokens)
        corpus = [vocab[token] for token in tokens]
        return corpus, vocab

    def __init__(self, batch_size, num_steps, num_train=10000, num_val=5000):
        super().__init__()
        self.save_hyperparameters()
        corpus, self.vocab = self.build(self._download())
        array = torch.tensor(corpus).unfold(0, num_steps + 1, 1)  # = [corpus[i:i+num_steps+1] for i ...]
        self.X, self.Y = array[:, :-1], array[:, 1:]

    def get_dataloader(self, train):
        idx = slice(0, self.num_train) if train else slice(self.num_train, self.num_train + self.num_val)
        return self.get_tensorloader([self.X, self.Y], train, idx)


class RNNScratch(Module):
    """The RNN model implemented from scratch (§9.5), computed by rnnkit's recurrence."""

    def __init__(self, num_inputs, num_hiddens, sigma=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.activation = "tanh"
        self.W_xh = nn.Parameter(torch.randn(num_inputs, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))

    forward = models.RNNScratch.forward


class RNNLMScratch(Classifier):
    """The RNN-based language model implemented from scratch (§9.5)."""

    def __init__(self, rnn, vocab_size, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.init_params()

    def init_params(self):
        self.W_hq = nn.Parameter(torch.randn(self.rnn.num_hiddens, self.vocab_size) * self.rnn.sigma)
        self.b_q = nn.Parameter(torch.zeros(self.vocab_size))

    def training_step(self, batch):
        l = self.loss(self(*batch[:-1]), batch[-1])  # noqa: E741
        self.plot("ppl", torch.exp(l), train=True)
        return l

    def validation_step(self, batch):
        l = self.loss(self(*batch[:-1]), batch[-1])  # noqa: E741
        self.plot("ppl", torch.exp(l), train=False)

    def one_hot(self, X):
        # Output shape: (num_steps, batch_size, vocab_size)
        return F.one_hot(X.T, self.vocab_size).type(torch.float32)

    def output_layer(self, rnn_outputs):
        outputs = [torch.matmul(H, self.W_hq) + self.b_q for H in rnn_outputs]
        return torch.stack(outputs, 1)

    def forward(self, X, state=None):
        embs = self.one_hot(X)
        rnn_outputs, _ = self.rnn(embs, state)
        return self.output_layer(rnn_outputs)

    def predict(self, prefix, num_preds, vocab, device=None):
        """Greedy continuation of ``prefix`` (d2l's ``predict``), by rnnkit's generation loop."""
        if not prefix:
            raise ValueError("prefix must not be empty")

        def forward(X, state):  # the book's model, as rnnkit's step function wants it: time-major logits
            rnn_outputs, state = self.rnn(self.one_hot(X), state)
            return self.output_layer(rnn_outputs).transpose(0, 1), state

        step = model_step(forward, device)
        prefix_ids = [vocab[c] for c in prefix]
        with torch.no_grad():
            new = list(generate_ids(step, prefix_ids, num_preds, None, Sampling(greedy=True)))
        return "".join(vocab.idx_to_token[i] for i in prefix_ids + new)


class RNN(Module):
    """The RNN model implemented with high-level APIs (§9.6)."""

    def __init__(self, num_inputs, num_hiddens):
        super().__init__()
        self.save_hyperparameters()
        self.rnn = nn.RNN(num_inputs, num_hiddens)

    def forward(self, inputs, H=None):
        return self.rnn(inputs, H)


class RNNLM(RNNLMScratch):
    """The RNN-based language model implemented with high-level APIs (§9.6)."""

    def init_params(self):
        self.linear = nn.LazyLinear(self.vocab_size)

    def output_layer(self, hiddens):
        return swapaxes(self.linear(hiddens), 0, 1)
