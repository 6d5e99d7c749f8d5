"""The two models of ``rnnkit compress`` as block coders: a model plus constriction's range coder.

A coder turns a block of bytes into the range coder's 32-bit words and back, carrying its model's
state from block to block:

- :class:`MixerCoder` (the adaptive mode): :class:`~rnnkit.compress.mixer.ContextMixer`'s binary
  decisions, 8 a byte, coded with a Bernoulli model.
- :class:`RunCoder` (``--model RUN``): a trained run's characters (or bytes), coded with the
  categorical distribution its network (:class:`~rnnkit.compress.network.PortableLM`) predicts.
  The text is read as the run's tokens: UTF-8 characters for a character run, bytes for a byte
  run. Whatever the vocabulary lacks (a new character, a byte that is not UTF-8) is an *escape*, a
  symbol of its own, followed by one raw byte; the escape's probability is learned as the file is
  read (``(escapes + 1/2) / (symbols + 1)``), so a text the run knows pays almost nothing for it.

The encoder sees a whole block and codes it in one call; the decoder decodes symbol by symbol,
computing the same probabilities from what it has decoded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rnnkit.compress.mixer import adaptive_model
from rnnkit.errors import RnnkitError


def load_constriction():
    """The ``constriction`` package (``rnnkit[compress]``), or one line saying how to install it."""
    try:
        import constriction
    except ImportError:
        raise RnnkitError("rnnkit compress needs constriction: pip install 'rnnkit[compress]'") from None
    return constriction


class UndecodableBlock(RnnkitError):
    """The range coder's words do not decode into a block of the stated length."""


class MixerCoder:
    """The adaptive mode: the context mixer (:func:`~rnnkit.compress.mixer.adaptive_model`) bit by
    bit through a Bernoulli model."""

    def __init__(self, table_bits: int, compiled: bool = True) -> None:
        self.model = adaptive_model(table_bits, compiled)
        self.constriction = load_constriction()

    def learn(self, block: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Run the model over known bytes (it learns them): their bits (most significant first) and
        the probability of a 1 it gave before each."""
        bits, probabilities = self.model.learn(block)
        return bits, probabilities.astype(np.float64) / 4096

    def encode(self, block: bytes) -> tuple[np.ndarray, float]:
        """The block as range-coder words, and the model's own code length in bits."""
        ones, p1 = self.learn(block)
        encoder = self.constriction.stream.queue.RangeEncoder()
        encoder.encode(ones, self.constriction.stream.model.Bernoulli(perfect=False), p1)
        return encoder.get_compressed(), -float(np.log2(np.where(ones == 1, p1, 1 - p1)).sum())

    def decode(self, words: np.ndarray, count: int) -> bytes:
        """``count`` bytes from range-coder words."""
        bernoulli = self.constriction.stream.model.Bernoulli
        decoder = self.constriction.stream.queue.RangeDecoder(words)

        def decide(p: int) -> int:
            return int(decoder.decode(bernoulli(p / 4096, perfect=False)))

        try:
            return self.model.decode(count, decide)
        except (ValueError, AssertionError, RuntimeError) as exc:  # the coder refuses damaged words
            raise UndecodableBlock(f"corrupt: a block does not decode ({exc})") from None


class RunCoder:
    """``--model RUN``: the run's network predicts each token; unknown ones are escaped bytes."""

    def __init__(self, run: TrainedRun) -> None:
        from rnnkit.compress.network import PortableLM

        self.run = run
        self.network = PortableLM(run.model)
        self.constriction = load_constriction()
        self.escape = len(run.vocab)  # the escape symbol follows the vocabulary's
        self.unknown = run.vocab.unk if run.vocab.unk_token is not None else None
        self.escapes, self.symbols = 0, 0

    def _distribution(self) -> np.ndarray:
        """The next symbol's probabilities (V + 1,), float64: the network's, scaled to leave the
        escape its learned share; ``<unk>`` gets none (an unknown token is always escaped)."""
        p = self.network.probabilities().astype(np.float64)
        if self.unknown is not None:
            p[self.unknown] = 0.0
        escape = (self.escapes + 0.5) / (self.symbols + 1.0)
        return np.append(p * (1.0 - escape), escape)

    def _advance(self, symbol: int) -> None:
        """Count the symbol and feed it to the network (an escape as ``<unk>`` where the vocabulary
        has it; otherwise the state stays)."""
        self.symbols += 1
        if symbol == self.escape:
            self.escapes += 1
            if self.unknown is None:
                return
            symbol = self.unknown
        self.network.feed(symbol)

    def learn(self, block: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the network over known bytes: (symbols (N,), their distributions (N, V + 1), the
        escaped bytes)."""
        symbols, escaped = self.run.symbols_of(block)
        rows = np.empty((len(symbols), self.escape + 1))
        for t, symbol in enumerate(symbols):
            rows[t] = self._distribution()
            self._advance(symbol)
        return np.asarray(symbols, dtype=np.int32), rows, np.asarray(escaped, dtype=np.int32)

    def encode(self, block: bytes) -> tuple[np.ndarray, float]:
        """The block as range-coder words (the symbols, then the escaped bytes), and the model's own
        code length in bits."""
        symbols, rows, escaped = self.learn(block)
        model = self.constriction.stream.model
        encoder = self.constriction.stream.queue.RangeEncoder()
        encoder.encode(symbols, model.Categorical(perfect=False), rows)
        if len(escaped):
            encoder.encode(escaped, model.Uniform(256))
        chosen = rows[np.arange(len(symbols)), symbols] / rows.sum(axis=1)
        return encoder.get_compressed(), -float(np.log2(chosen).sum()) + 8.0 * len(escaped)

    def decode(self, words: np.ndarray, count: int) -> bytes:
        """``count`` bytes from range-coder words."""
        model = self.constriction.stream.model
        decoder = self.constriction.stream.queue.RangeDecoder(words)
        pieces, escapes, length = [], [], 0
        try:
            while length < count:
                symbol = int(decoder.decode(model.Categorical(self._distribution(), perfect=False)))
                if symbol == self.escape:
                    escapes.append(len(pieces))
                    pieces.append(None)
                    length += 1
                else:
                    pieces.append(self.run.pieces[symbol])
                    length += len(self.run.pieces[symbol])
                self._advance(symbol)
            escaped = decoder.decode(model.Uniform(256), len(escapes)) if escapes else []
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise UndecodableBlock(f"corrupt: a block does not decode ({exc})") from None
        if length != count:
            raise UndecodableBlock("corrupt: a block decodes to more bytes than it holds")
        for at, byte in zip(escapes, escaped, strict=True):
            pieces[at] = bytes([int(byte)])
        return b"".join(pieces)


class TrainedRun:
    """A run directory read for compression: its network, its vocabulary as symbols, and what
    identifies its weights (the checkpoint id and the sha256 of the weights file)."""

    def __init__(self, run_dir: str | Path) -> None:
        from rnnkit.checkpoint import checkpoint_files, chosen_checkpoint, load_run, read_config

        self.path = Path(run_dir)
        meta = read_config(self.path)
        self.weights = chosen_checkpoint(meta)  # the best checkpoint where kept, as eval reads it
        weights_file = self.path / checkpoint_files(meta)["best" if self.weights == "best" else "model"]
        self.checkpoint = str(meta.get("checkpoint", ""))
        self.sha256 = hashlib.sha256(weights_file.read_bytes()).digest()
        self.model, self.vocab, config, _ = load_run(self.path, checkpoint=self.weights)
        if config.tokens not in ("char", "bytes"):
            raise RnnkitError(f"{self.path}: a {config.tokens} model; --model needs a run of characters or bytes")
        self.bytes = config.tokens == "bytes"
        self.pieces = [self._piece(token) for token in self.vocab.idx_to_token]
        self.index = {token: i for i, token in enumerate(self.vocab.idx_to_token) if self.pieces[i] is not None}

    def _piece(self, token: str) -> bytes | None:
        """The bytes a token stands for; None for a token that is not one character (``<unk>``) or
        that UTF-8 cannot write (a lone surrogate)."""
        if len(token) != 1:
            return None
        if self.bytes:
            return bytes([ord(token)]) if ord(token) < 256 else None
        return None if 0xD800 <= ord(token) < 0xE000 else token.encode("utf-8")

    def symbols_of(self, block: bytes) -> tuple[list[int], list[int]]:
        """The block as symbols (token ids, or the escape), and the bytes the escapes stand for.
        A character run reads UTF-8 (a byte that is not part of a valid character, as at a block's
        edge, is escaped alone); a byte run reads bytes."""
        escape, symbols, escaped = len(self.vocab), [], []
        units = block.decode("latin-1") if self.bytes else block.decode("utf-8", "surrogateescape")
        for unit in units:
            symbol = self.index.get(unit)
            if symbol is not None:
                symbols.append(symbol)
                continue
            raw = unit.encode("latin-1") if self.bytes else unit.encode("utf-8", "surrogateescape")
            symbols.extend([escape] * len(raw))
            escaped.extend(raw)
        return symbols, escaped

    def describe(self) -> str:
        return f"{self.path} (checkpoint {self.checkpoint}, {self.weights} weights, sha256 {self.sha256.hex()[:16]}…)"
