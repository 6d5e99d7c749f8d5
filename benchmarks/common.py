"""What the benchmark scripts share: the book's configuration, the book's model cells, d2l's
perplexity, and the plain-PyTorch baseline model. (The scripts import it as ``common``: Python
puts a script's own folder first on ``sys.path``.)"""

from __future__ import annotations

import math
import platform
import subprocess

import torch
from torch import nn

BOOK = dict(hidden=32, batch_size=1024, num_steps=32, epochs=100, lr=1.0, clip=1.0, seed=0)


def book_model(d2l, vocab, impl: str):
    """The book's cells: §9.6 ``concise`` (``d2l.RNN`` in ``d2l.RNNLM``, with the ``predict`` the
    book calls before training) or §9.5 ``scratch``, on real d2l or ``rnnkit.d2l``."""
    V = len(vocab)
    if impl == "concise":
        model = d2l.RNNLM(d2l.RNN(num_inputs=V, num_hiddens=BOOK["hidden"]), vocab_size=V, lr=BOOK["lr"])
        model.predict("it has", 20, vocab)
        return model
    return d2l.RNNLMScratch(d2l.RNNScratch(num_inputs=V, num_hiddens=BOOK["hidden"]), vocab_size=V, lr=BOOK["lr"])


@torch.no_grad()
def d2l_perplexity(model, loader) -> float:
    """exp(mean cross-entropy) of a d2l model over every token of every window of ``loader``
    (as the reference runner computes it), on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    nll = n = 0.0
    for X, Y in loader:
        X, Y = X.to(device), Y.to(device)
        nll += model.loss(model(X), Y, averaged=False).double().sum().item()
        n += Y.numel()
    return math.exp(nll / n)


class Baseline(nn.Module):
    """The obvious PyTorch character model: ``nn.Embedding -> nn.RNN/GRU/LSTM -> nn.Linear``."""

    def __init__(self, kind: str, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](hidden, hidden, batch_first=True)
        self.linear = nn.Linear(hidden, vocab_size)

    def forward(self, X, state=None):
        out, state = self.rnn(self.embedding(X), state)
        return self.linear(out), state


AVX2_EMULATION = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "RNNKIT_KERNEL_CFLAGS": "-mno-avx512f",
}  # a CPU without AVX-512, seen on one that has it


def cpu_flags() -> dict[str, bool]:
    """The vector instruction sets ``lscpu`` lists (what a speed depends on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        flags = set(next(line.split(":", 1)[1] for line in out.splitlines() if line.startswith("Flags")).split())
    except (OSError, StopIteration):
        return {}
    return {name: name in flags for name in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni")}


def cpu_model() -> str:
    """``lscpu``'s model name (every result file names the CPU it was measured on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()
