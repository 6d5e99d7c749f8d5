"""The models of ``rnnkit compress`` as block coders: a model plus constriction's range coder.

A coder turns a block of bytes into the range coder's 32-bit words and back, carrying its model's
state from block to block. The model is the context mixer
(:func:`~rnnkit.compress.mixer.adaptive_model`), coded bit by bit through a Bernoulli model:

- adaptive: the mixer alone, learning as it codes;
- ``--model RUN``: the mixer with one more input, a :class:`NetworkPrior`: before each byte, the
  distribution of the next byte that the run's network (:class:`~rnnkit.compress.network.PortableLM`)
  predicts. The mixer learns how far to trust it, bit by bit, beside its own contexts, so the
  network's knowledge of the language and the contexts' memory of this file's words add up (as in
  cmix and lstm-compress); any byte can be coded, whatever the run's vocabulary.

The encoder sees a whole block and codes it in one call; the decoder decodes bit by bit, computing
the same probabilities from what it has decoded.
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
    """The context mixer, bit by bit through a Bernoulli model; ``prior``: a trained network's
    input (``--model``), else the adaptive mode."""

    def __init__(self, table_bits: int, prior: NetworkPrior | None = None, compiled: bool = True) -> None:
        self.model = adaptive_model(table_bits, compiled, prior is not None)
        self.prior = prior
        self.constriction = load_constriction()

    def learn(self, block: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Run the model over known bytes (it learns them): their bits (most significant first) and
        the probability of a 1 it gave before each."""
        priors = None
        if self.prior is not None:
            priors = np.empty((len(block), 257), dtype=np.int64)
            for i, byte in enumerate(block):
                priors[i] = self.prior.sums()
                self.prior.observe(byte)
        bits, probabilities = self.model.learn(block, priors)
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
            if self.prior is None:
                return self.model.decode(count, decide)
            return self.model.decode(count, decide, self.prior.sums, self.prior.observe)
        except (ValueError, AssertionError, RuntimeError) as exc:  # the coder refuses damaged words
            raise UndecodableBlock(f"corrupt: a block does not decode ({exc})") from None


class NetworkPrior:
    """A trained run's network as a byte distribution before each byte (for the mixer's
    :func:`~rnnkit.compress.mixer.prior_logit`).

    The network predicts tokens (characters, or bytes); the bytes of the file are read back into
    them. At a token's start, the next byte's weight is the sum of the probabilities of the tokens
    whose bytes start with it; inside a character of several bytes, of those that continue the
    bytes so far. Probabilities become integers (``floor(p * 2**20)``, exact in float32) before
    they are summed, so no order of additions enters. A complete token is fed to the network; bytes
    that are no token of the vocabulary are fed as ``<unk>`` where it has one (else the state stays),
    and the distribution has no opinion on them."""

    SCALE = np.float32(2**20)

    def __init__(self, run: TrainedRun, compiled: bool = True) -> None:
        from rnnkit.compress.network import PortableLM

        self.network = PortableLM(run.model, compiled)
        self.unknown = run.vocab.unk if run.vocab.unk_token is not None else None
        self.complete = {piece: i for i, piece in enumerate(run.pieces) if piece is not None}
        continuations: dict[bytes, list[tuple[int, int]]] = {}
        for i, piece in enumerate(run.pieces):
            for length in range(len(piece or b"")):
                continuations.setdefault(piece[:length], []).append((piece[length], i))
        self.continuations = {
            prefix: (np.array([b for b, _ in pairs]), np.array([i for _, i in pairs]))
            for prefix, pairs in continuations.items()
        }
        self.pending = b""  # the bytes of the token being read
        self.weights = self._weights()

    def _weights(self) -> np.ndarray:
        """The network's next-token probabilities as integers (V,)."""
        return np.floor(self.network.probabilities() * self.SCALE).astype(np.int64)

    def sums(self) -> np.ndarray:
        """Prefix sums (257,) of the next byte's integer weights."""
        weights = np.zeros(256, dtype=np.int64)
        following = self.continuations.get(self.pending)
        if following is not None:  # float64 sums of integers below 2**53: exact
            weights = np.bincount(following[0], self.weights[following[1]], minlength=256).astype(np.int64)
        return np.concatenate(([0], np.cumsum(weights)))

    def observe(self, byte: int) -> None:
        """The byte that came: at a token's end, the network reads the token."""
        self.pending += bytes((byte,))
        token = self.complete.get(self.pending)
        if token is None and self.pending in self.continuations:
            return  # inside a character
        self.pending = b""
        if token is None:
            if self.unknown is None:
                return
            token = self.unknown
        self.network.feed(token)
        self.weights = self._weights()


class TrainedRun:
    """A run directory read for compression: its network, its vocabulary as symbols, and what
    identifies its weights (the checkpoint id and the sha256 of the weights file)."""

    def __init__(self, run_dir: str | Path) -> None:
        from rnnkit.checkpoint import checkpoint_files
        from rnnkit.run import Run

        self.path = Path(run_dir)
        loaded = Run.load(self.path).load_model()  # the best checkpoint where kept, as eval reads it
        self.model, self.vocab, self.weights, meta = loaded.model, loaded.vocab, loaded.checkpoint, loaded.meta
        config = loaded.config
        self.checkpoint = str(meta.get("checkpoint", ""))
        weights_file = self.path / checkpoint_files(meta)["best" if self.weights == "best" else "model"]
        try:
            self.sha256 = hashlib.sha256(weights_file.read_bytes()).digest()
        except OSError as exc:
            raise RnnkitError(f"{weights_file}: cannot read ({exc.strerror or exc})") from None
        if config.tokens not in ("char", "bytes"):
            raise RnnkitError(f"{self.path}: a {config.tokens} model; --model needs a run of characters or bytes")
        self.bytes = config.tokens == "bytes"
        self.pieces = [self._piece(token) for token in self.vocab.idx_to_token]

    def _piece(self, token: str) -> bytes | None:
        """The bytes a token stands for; None for a token that is not one character (``<unk>``) or
        that UTF-8 cannot write (a lone surrogate)."""
        if len(token) != 1:
            return None
        if self.bytes:
            return bytes([ord(token)]) if ord(token) < 256 else None
        return None if 0xD800 <= ord(token) < 0xE000 else token.encode("utf-8")

    def describe(self) -> str:
        """The run's path and what identifies its weights, for messages."""
        return f"{self.path} (checkpoint {self.checkpoint}, {self.weights} weights, sha256 {self.sha256.hex()[:16]}…)"
