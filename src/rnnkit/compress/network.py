"""A trained run's language model as portable arithmetic, for ``rnnkit compress --model RUN``.

A compressor and its decompressor must compute bit-identical probabilities, also on another
machine. PyTorch's matrix products do not promise that: their order of additions changes with the
BLAS, the CPU's vector width and the thread count. :class:`PortableLM` runs the same model
(:mod:`rnnkit.models.reference`'s equations) with numpy element-wise operations on float32 arrays
only, each one correctly rounded by IEEE 754 whatever the CPU and however numpy vectorizes it:

- a matrix-vector product ``W x`` is the element-wise products ``W^T * x`` (K, N) summed over
  their rows by :func:`fold_rows`, a fixed pairwise order written here (no BLAS, no reduction
  whose order numpy chooses);
- ``exp`` is :func:`exp32`: a fixed polynomial after range reduction, from multiplications,
  additions, ``rint`` and ``ldexp`` (not the C library's or numpy's own ``exp``, which differ in
  their last bits between CPUs and versions); the logistic function and ``tanh`` come from it;
- nothing is fused (each numpy call rounds its result to float32), nothing runs on several threads.

The same weights therefore give the same float32 bits on any x86-64 or ARM64 machine. They differ
from PyTorch's by rounding only (about 1e-7 relative), which changes the code length by far less
than 0.1%. The same operations are compiled (``csrc/compress.cpp``: the products and sums one block
of columns at a time, in cache; no fused multiply-add), several times as fast; the tests hold both
to the same bits, and numpy is the fallback where no compiler is at hand.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from rnnkit.models.layers import RNNScratch
from rnnkit.models.lm import RNNLM
from rnnkit.models.reference import _cell, _layer_weights

F32 = np.float32
LOG2E = F32(1.4426950408889634)
LN2_HIGH = F32(0.693145751953125)  # ln 2 in two parts (Cody and Waite): n * LN2_HIGH is exact
LN2_LOW = F32(1.4286067653301870e-06)
EXP_COEFFICIENTS = tuple(F32(1.0 / c) for c in (720, 120, 24, 6, 2, 1, 1))  # 1/6! ... 1/0!, Horner order
EXP_LIMIT = F32(80.0)  # e^80 and e^-80 are far from float32's overflow and subnormal range


def exp32(x: np.ndarray) -> np.ndarray:
    """``e^x`` for float32 ``x``, clamped to [-80, 80]: ``x = n ln 2 + r`` with ``|r| <= ln2 / 2``,
    ``e^r`` by its degree-6 Taylor polynomial (relative error < 2e-7), times ``2^n``."""
    x = np.clip(x, -EXP_LIMIT, EXP_LIMIT)
    n = np.rint(x * LOG2E)
    r = (x - n * LN2_HIGH) - n * LN2_LOW
    p = np.full_like(r, EXP_COEFFICIENTS[0])
    for coefficient in EXP_COEFFICIENTS[1:]:
        p = p * r + coefficient
    return np.ldexp(p, n.astype(np.int32))


def sigmoid32(x: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + e^-x)``."""
    return F32(1.0) / (F32(1.0) + exp32(-x))


def tanh32(x: np.ndarray) -> np.ndarray:
    """``tanh x = 2 / (1 + e^-2x) - 1``."""
    return F32(2.0) * sigmoid32(F32(2.0) * x) - F32(1.0)


def fold_rows(products: np.ndarray) -> np.ndarray:
    """The sum over the rows of ``products`` (K, N), in a fixed pairwise order: row i of the first
    half plus row i of the second, repeatedly (an odd last row waits for the next round). Overwrites
    ``products``; returns a view of its first row (N,)."""
    rows = products.shape[0]
    while rows > 1:
        half = rows // 2
        np.add(products[:half], products[half : 2 * half], out=products[:half])
        if rows % 2:
            products[half] = products[rows - 1]
        rows = half + rows % 2
    return products[0]


class MatVec:
    """``x -> W x`` for a fixed ``W`` (N, K) as :func:`fold_rows` of ``W^T * x`` (numpy, with a
    buffer of its own), or the compiled ``matvec`` of the same order."""

    def __init__(self, weight: np.ndarray, compiled: ModuleType | None = None) -> None:
        self.transposed = np.ascontiguousarray(weight.T, dtype=F32)  # (K, N): row k multiplies x[k]
        self.compiled = compiled.MatVec(self.transposed) if compiled else None
        self.products = None if compiled else np.empty_like(self.transposed)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.compiled:
            return self.compiled(x)
        np.multiply(self.transposed, x[:, None], out=self.products)
        return fold_rows(self.products).copy()


def _array(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").float().numpy().astype(F32, copy=True)


class PortableLM:
    """An :class:`~rnnkit.models.RNNLM` in evaluation, one token at a time, from a zero state:
    :meth:`probabilities` of the next token (V,), then :meth:`feed` the token seen. ``compiled``:
    use the compiled operations where they can be built (the same bits as numpy's)."""

    def __init__(self, model: RNNLM, compiled: bool = True) -> None:
        from rnnkit.kernels import compress_module

        native = compress_module() if compiled else None
        self.exp = native.exp32 if native else exp32
        self.sigmoid = native.sigmoid32 if native else sigmoid32
        self.tanh = native.tanh32 if native else tanh32
        kind, phi = _cell(model.rnn)
        self.kind = kind
        self.relu = phi.__name__ == "relu"
        self.hidden = model.rnn.num_hiddens
        layers = [tuple(_array(w) for w in weights) for weights in _layer_weights(model.rnn)]
        self.input_table = self._input_table(model, layers[0], native)  # (V, G*H): layer 0's input part per token
        if kind == "scratch":  # H_t = phi(X_t W_xh + b_h + H_{t-1} W_hh): W_hh is (in, out) already
            self.recurrent = [MatVec(layers[0][1].T, native)]
            self.recurrent_bias = [np.zeros(self.hidden, F32)]
        else:  # PyTorch's layers: (W_ih (G*H, D), W_hh (G*H, H), b_ih, b_hh)
            self.recurrent = [MatVec(W_hh, native) for _, W_hh, _, _ in layers]
            self.recurrent_bias = [b_hh for _, _, _, b_hh in layers]
        self.upward = [MatVec(W_ih, native) for W_ih, _, _, _ in layers[1:]] if kind != "scratch" else []
        self.upward_bias = [b_ih for _, _, b_ih, _ in layers[1:]] if kind != "scratch" else []
        self.head = MatVec(_array(model.head.weight), native)
        self.head_bias = _array(model.head.bias)
        self.ones, self.native = np.ones(len(self.head_bias), F32), native
        self.reset()

    def _input_table(self, model: RNNLM, first: tuple[np.ndarray, ...], native: ModuleType | None) -> np.ndarray:
        """Layer 0's input term for each token: ``W_ih e_v + b_ih`` (one-hot: a column of
        ``W_ih``; an embedding: a product per token), RNNScratch's ``W_xh[v] + b_h``."""
        if isinstance(model.rnn, RNNScratch):
            W_xh, _, b_h = first
            return W_xh + b_h
        W_ih, _, b_ih, _ = first
        if model.embedding is None:
            return np.ascontiguousarray(W_ih.T) + b_ih
        to_gates = MatVec(W_ih, native)
        return np.stack([to_gates(row) + b_ih for row in _array(model.embedding.weight)])

    def reset(self) -> None:
        """Back to the zero state."""
        zeros = np.zeros(self.hidden, F32)
        layers = len(self.recurrent)
        self.h = [zeros.copy() for _ in range(layers)]
        self.c = [zeros.copy() for _ in range(layers)] if self.kind == "lstm" else None
        self.output = zeros.copy()  # the last layer's h

    def probabilities(self) -> np.ndarray:
        """The softmax of the output layer (V,), float32, from the current state."""
        logits = self.head(self.output) + self.head_bias
        e = self.exp(logits - logits.max())
        return e / self.total(e)

    def total(self, e: np.ndarray) -> np.float32:
        """The sum of ``e`` (V,) in :func:`fold_rows`' order (compiled: ``matvec`` of the column
        ``e`` by ones, whose products are ``e`` itself)."""
        if self.native:
            return self.native.matvec(e[:, None], self.ones)[0]
        return fold_rows(e[:, None].copy())[0]

    def feed(self, token: int) -> None:
        """Advance the state by one token id."""
        x_part = self.input_table[token]
        for layer in range(len(self.recurrent)):
            if layer:
                x_part = self.upward[layer - 1](self.h[layer - 1]) + self.upward_bias[layer - 1]
            h_part = self.recurrent[layer](self.h[layer]) + self.recurrent_bias[layer]
            self.h[layer] = self._cell(layer, x_part, h_part)
        self.output = self.h[-1]

    def _cell(self, layer: int, x_part: np.ndarray, h_part: np.ndarray) -> np.ndarray:
        """The cell's equations (:mod:`rnnkit.models.reference`) on the input and recurrent terms."""
        sigmoid, tanh = self.sigmoid, self.tanh
        H = self.hidden
        if self.kind == "lstm":
            gates = x_part + h_part
            i, f, g, o = gates[:H], gates[H : 2 * H], gates[2 * H : 3 * H], gates[3 * H :]
            c = sigmoid(f) * self.c[layer] + sigmoid(i) * tanh(g)
            self.c[layer] = c
            return sigmoid(o) * tanh(c)
        if self.kind == "gru":
            r_x, z_x, n_x = x_part[:H], x_part[H : 2 * H], x_part[2 * H :]
            r_h, z_h, n_h = h_part[:H], h_part[H : 2 * H], h_part[2 * H :]
            r, z = sigmoid(r_x + r_h), sigmoid(z_x + z_h)
            n = tanh(n_x + r * n_h)
            return n + z * (self.h[layer] - n)
        pre = x_part + h_part
        return np.maximum(pre, F32(0.0)) if self.relu else tanh(pre)
