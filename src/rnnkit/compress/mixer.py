"""The adaptive model of ``rnnkit compress``: bitwise context mixing in integer arithmetic.

Each byte is coded as 8 binary decisions, most significant bit first. For each decision, every
context (:data:`ORDERS`: the last 1, 2, 3, 4 and 6 bytes, plus the partial byte alone and the
current word, a byte of a non-ASCII character counting as a letter) has an adaptive probability of
a 1, kept in a hashed table of ``2**table_bits`` entries; a match model (:class:`MatchModel`)
predicts the byte that followed the last occurrence of the last 6 bytes; a mixer combines their
logits (``stretch(p) = ln(p / (1 - p))``) with weights chosen by the partial byte and the match's
state (none, shorter than 16 bytes, longer) and learned online by gradient descent on the coding
cost, and ``squash`` (the logistic function) turns the sum back into a probability. A last stage
(an adaptive probability map, or SSE) refines it by the previous byte and the partial byte: 33
knots along the logit for each, interpolated, learned online; the coded probability is 1/4 the
mixer's and 3/4 the refined one. Compressor and decompressor run the same model, so they see the
same probabilities.

Chosen by measurement (bits per byte, the model's own code length) on The Time Machine, Tiny
Shakespeare and ``benchmarks/other_texts.py``'s texts; what each step gained is in
``docs/guides/compression.md`` ("How the adaptive model was chosen").

The same model is compiled (``csrc/compress.cpp``, :func:`adaptive_model`), about 30 times as fast
as this Python, which stays the reference and the fallback where no compiler is at hand; the tests
hold the two to the same bits.

Every quantity is an integer (probabilities in 1/4096, logits in 1/256, weights in 1/65536, and
``squash``/``stretch`` from an integer table): the model gives the same probabilities on every
machine, whatever its CPU, BLAS or thread count. Tables are fixed in size (at most
:data:`TABLE_BITS`, 84 MiB in all; smaller for a short input, see :func:`table_bits_for`; and the
match model's 8 MiB), so memory does not grow with the input.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from operator import mul

import numpy as np

ORDERS = (1, 2, 3, 4, 6)  # the byte contexts: this many previous bytes
TABLE_BITS = 22  # at most 2**22 counters a context kind: 12 MiB each (16-bit probability, 8-bit count)
MIN_TABLE_BITS = 12
LIMIT = 127  # a counter's adaptation rate falls as 1 / (count + 1.5) down to 1 / (LIMIT + 1.5)
LEARNING_RATE = 5  # the mixer's step: ~LEARNING_RATE / 1024 per unit of logit and of error
INITIAL_WEIGHT = 65536 * 3 // 10
MATCH_BITS = 22  # the match model searches the last 2**22 bytes (4 MiB)...
MATCH_TABLE_BITS = 20  # ...through 2**20 positions (4 MiB), found by a hash of the last MIN_MATCH bytes
MIN_MATCH = 6  # bytes that must agree before a match predicts
MAX_VERIFY = 32  # a candidate's agreeing bytes are counted back this far
MAX_MATCH = 65535
MATCH_RATE = 6  # the match model's confidence moves 1/64 of the way to each outcome
PRIOR_WEIGHT = 65536 * 6 // 10  # a trained network's input: 0.6 (1 and more: worse, docs/guides/compression.md)
REFINE_RATE = 6  # the refinement's knots move 1/64 of the way to each bit

_M64 = (1 << 64) - 1
_SQUASH_KNOTS = (1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047,
                 2549, 2994, 3348, 3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089,
                 4092, 4093, 4094)  # fmt: skip  # 4096 / (1 + e^-x) at x = -8, -7.5, ..., 8


def _squash(d: int) -> int:
    """4096 / (1 + e^(-d/256)), linearly interpolated between :data:`_SQUASH_KNOTS`."""
    if d > 2047:
        return 4095
    if d < -2047:
        return 1
    w = d & 127
    i = (d >> 7) + 16
    return (_SQUASH_KNOTS[i] * (128 - w) + _SQUASH_KNOTS[i + 1] * w + 64) >> 7


SQUASH = [_squash(d) for d in range(-2047, 2048)]  # index d + 2047
STRETCH = [0] * 4096  # the inverse of squash: the smallest d with squash(d) >= p
_next = 0
for _d in range(-2047, 2048):
    _p = SQUASH[_d + 2047]
    for _q in range(_next, _p + 1):
        STRETCH[_q] = _d
    _next = max(_next, _p + 1)
for _q in range(_next, 4096):
    STRETCH[_q] = 2047
RECIPROCAL = [int(65536 / (n + 1.5)) for n in range(LIMIT + 1)]


def table_bits_for(size: int | None) -> int:
    """Table size (log2) for an input of ``size`` bytes (``None``: unknown, the largest): about
    two entries a coded bit, so that a short input does not pay for 84 MiB of tables."""
    if size is None:
        return TABLE_BITS
    return max(MIN_TABLE_BITS, min(TABLE_BITS, (16 * size).bit_length()))


def prior_logit(sums: np.ndarray | list[int], c0: int) -> int:
    """The logit (in 1/256) of the next bit being 1, from a byte distribution given as prefix sums
    of integer weights (257,): the weight of the bytes that continue the partial byte ``c0`` with a
    1, over all that continue it; 0 (no opinion) where none does."""
    depth = c0.bit_length() - 1
    width = 256 >> depth
    low = (c0 - (1 << depth)) * width
    total = int(sums[low + width]) - int(sums[low])
    if total <= 0:
        return 0
    ones = int(sums[low + width]) - int(sums[low + width // 2])
    p = (ones * 4096 + total // 2) // total
    return STRETCH[1 if p < 1 else 4095 if p > 4095 else p]


class MatchModel:
    """The longest-repeat predictor (PAQ's match model): where the last :data:`MIN_MATCH` bytes
    occurred before (a hash table of positions into a ring buffer of the input), it predicts that
    the byte which followed then follows now, bit by bit, with a confidence learned per match length
    (capped at 63). Long repeats (code, a text quoted twice, the same tutorial in two languages'
    markup) cost almost nothing once found."""

    def __init__(self) -> None:
        self.buffer = bytearray(1 << MATCH_BITS)
        self.table = array("I", [0]) * (1 << MATCH_TABLE_BITS)
        self.position = 0  # bytes seen (mod 2**32, as the table stores it)
        self.pointer = 0  # where the byte the match predicts is (mod 2**32)
        self.length = 0  # the match's length in bytes; 0: no match
        self.confidence = array("H", [49152]) * 64  # P(the predicted bit is right) by length, in 1/65536
        self.expected = -1  # the bit predicted for the current decision; -1: none

    def logit(self, c0: int) -> int:
        """The match's input for the next bit of the partial byte ``c0`` (0: no opinion)."""
        self.expected = -1
        if not self.length:
            return 0
        predicted = self.buffer[self.pointer & ((1 << MATCH_BITS) - 1)] | 256
        depth = c0.bit_length() - 1
        if predicted >> (8 - depth) != c0:  # the byte already went another way
            return 0
        self.expected = (predicted >> (7 - depth)) & 1
        confidence = STRETCH[self.confidence[min(self.length, 63)] >> 4]
        return confidence if self.expected else -confidence

    def learn_bit(self, bit: int) -> None:
        if self.expected >= 0:
            slot = min(self.length, 63)
            right = 65535 if bit == self.expected else 0
            self.confidence[slot] += (right - self.confidence[slot]) >> MATCH_RATE

    def learn_byte(self, value: int, history: int) -> None:
        """Extend or drop the match with the byte that came; look for a new one (``history``: the
        last 8 bytes, this one in the low byte)."""
        mask = (1 << MATCH_BITS) - 1
        if self.length:
            if self.buffer[self.pointer & mask] == value:
                self.length, self.pointer = min(self.length + 1, MAX_MATCH), (self.pointer + 1) & 0xFFFFFFFF
            else:
                self.length = 0
        self.buffer[self.position & mask] = value
        self.position = (self.position + 1) & 0xFFFFFFFF
        key = ((history & ((1 << (8 * MIN_MATCH)) - 1)) * 0x9E3779B97F4A7C15 & _M64) >> (64 - MATCH_TABLE_BITS)
        candidate = self.table[key]
        if not self.length and candidate and ((self.position - candidate) & 0xFFFFFFFF) + MAX_VERIFY < mask:
            agree = 0
            while agree < MAX_VERIFY and (
                self.buffer[(candidate - 1 - agree) & mask] == self.buffer[(self.position - 1 - agree) & mask]
            ):
                agree += 1
            if agree >= MIN_MATCH:
                self.length, self.pointer = agree, candidate
        self.table[key] = self.position


class ContextMixer:
    """The bit predictor; :meth:`byte` codes (or decodes) one byte through a ``decide`` callback.
    With ``prior``, one more input: a byte distribution given before each byte (a trained
    network's, :mod:`rnnkit.compress.coders`), whose weight starts at :data:`PRIOR_WEIGHT`."""

    kinds = 1 + len(ORDERS) + 1  # the contexts: the partial byte, the orders, the word

    def __init__(self, table_bits: int = TABLE_BITS, prior: bool = False) -> None:
        kinds, self.prior = self.kinds, prior
        self.inputs = kinds + 1 + prior + 1  # the contexts, the match model, the prior, a bias
        self.mask = (1 << table_bits) - 1
        self.probabilities = [array("H", [32768]) * (1 << table_bits) for _ in range(kinds)]
        self.counts = [bytearray(1 << table_bits) for _ in range(kinds)]
        initial = [INITIAL_WEIGHT] * (kinds + 1) + [PRIOR_WEIGHT] * prior + [INITIAL_WEIGHT]
        self.match = MatchModel()
        self.weights = initial * 256 * 3  # a weight set per partial byte and match state
        self.history = 0  # the last 8 bytes, the newest in the low byte
        self.word = 0  # a hash of the letters since the last non-letter
        self.contexts = self._contexts()
        # the mixer's probability refined by the previous byte and the partial byte (an APM, or SSE):
        # 33 knots along the logit per context, each a 16-bit probability, starting at squash(knot)
        knots = [SQUASH[min(4094, max(0, (j - 16) * 128 + 2047))] * 16 for j in range(33)]
        self.refined = array("H", knots) * 65536

    def _contexts(self) -> list[int]:
        """A hash per context kind for the next byte (the partial byte is added per bit)."""
        contexts = [0]
        for k in ORDERS:
            mixed = ((self.history & ((1 << (8 * k)) - 1)) + (k << 56)) * 0x9E3779B97F4A7C15 & _M64
            contexts.append(mixed >> 20)
        contexts.append(((self.word + 0x5BD1E995) * 0x9E3779B97F4A7C15 & _M64) >> 20)
        return contexts

    def byte(self, decide: Callable[[int], int], sums: np.ndarray | None = None) -> int:
        """Code one byte: for each bit, ``decide(p)`` gets the probability of a 1 in 1/4096 and
        returns the bit (the compressor's known bit, or the decompressor's decoded one). ``sums``:
        the prior's byte distribution (see :func:`prior_logit`), with ``prior``."""
        probabilities, counts, weights, contexts = self.probabilities, self.counts, self.weights, self.contexts
        n, mask = self.inputs, self.mask
        refined_table, previous = self.refined, self.history & 255
        c0 = 1  # the bits of the byte so far, after a leading 1
        kinds = range(self.kinds)
        length = self.match.length
        weight_set = 0 if not length else 1 if length < 16 else 2  # no match, a short one, a long one
        while c0 < 256:
            offset = c0 * 0x2F0B4CA3
            slots = [(h + offset) & mask for h in contexts]
            logits = [STRETCH[probabilities[k][slots[k]] >> 4] for k in kinds]
            logits.append(self.match.logit(c0))
            if self.prior:
                logits.append(prior_logit(sums, c0))
            logits.append(256)
            base = (weight_set * 256 + c0) * n
            dot = sum(map(mul, weights[base : base + n], logits)) >> 16
            mixed = SQUASH[2047 + (2047 if dot > 2047 else -2047 if dot < -2047 else dot)]
            knot = STRETCH[mixed] + 2048
            low, w = knot >> 7, knot & 127
            at = (previous | (c0 << 8)) * 33 + low
            refined = (refined_table[at] * (128 - w) + refined_table[at + 1] * w) >> 11
            p = (mixed + 3 * refined) >> 2
            bit = decide(1 if p < 1 else 4095 if p > 4095 else p)
            near = at + (w >> 6)
            refined_table[near] += ((65535 if bit else 0) - refined_table[near]) >> REFINE_RATE
            error = ((bit << 12) - mixed) * LEARNING_RATE
            weights[base : base + n] = [
                weight + ((x * error) >> 14) for weight, x in zip(weights[base : base + n], logits, strict=True)
            ]
            self.match.learn_bit(bit)
            target = 65535 if bit else 0
            for k in kinds:
                slot, count = slots[k], counts[k]
                seen = count[slot]
                table = probabilities[k]
                table[slot] += ((target - table[slot]) * RECIPROCAL[seen]) >> 16
                if seen < LIMIT:
                    count[slot] = seen + 1
            c0 = (c0 << 1) | bit
        value = c0 & 255
        self.history = ((self.history << 8) | value) & _M64
        self.match.learn_byte(value, self.history)
        letter = value if value >= 128 else value | 32  # a byte of a non-ASCII letter counts as one
        self.word = (self.word * 0x3F + letter) & 0xFFFFFFFF if value >= 128 or 97 <= letter <= 122 else 0
        self.contexts = self._contexts()
        return value

    def learn(self, block: bytes, priors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run over known bytes (the model learns them): their bits, most significant first, and
        the probability of a 1 given before each, in 1/4096 (both int32). ``priors``: the prior's
        prefix sums before each byte (len(block), 257), with ``prior``."""
        bits = [(byte >> shift) & 1 for byte in block for shift in range(7, -1, -1)]
        following, probabilities = iter(bits), []

        def decide(p: int) -> int:
            probabilities.append(p)
            return next(following)

        for i in range(len(block)):
            self.byte(decide, priors[i] if self.prior else None)
        return np.asarray(bits, dtype=np.int32), np.asarray(probabilities, dtype=np.int32)

    def decode(
        self,
        count: int,
        decide: Callable[[int], int],
        sums: Callable[[], np.ndarray] | None = None,
        observe: Callable[[int], None] | None = None,
    ) -> bytes:
        """``count`` bytes, each bit from ``decide(p)`` (the range decoder's answer); with
        ``prior``, ``sums()`` gives the prior before each byte and ``observe(byte)`` is told it."""
        out = bytearray()
        for _ in range(count):
            out.append(self.byte(decide, sums() if self.prior else None))
            if self.prior:
                observe(out[-1])
        return bytes(out)


def adaptive_model(table_bits: int, compiled: bool = True, prior: bool = False):
    """The model with ``learn`` and ``decode``: the compiled one where it can be built (and
    ``compiled``), else :class:`ContextMixer`; both give the same bits."""
    from rnnkit.kernels import compress_module

    module = compress_module() if compiled else None
    if module is None:
        return ContextMixer(table_bits, prior)
    settings = module.MixerSettings(SQUASH, STRETCH, RECIPROCAL, list(ORDERS), LIMIT, LEARNING_RATE, REFINE_RATE,
                                    INITIAL_WEIGHT, PRIOR_WEIGHT, MATCH_BITS, MATCH_TABLE_BITS, MIN_MATCH,
                                    MAX_VERIFY, MAX_MATCH, MATCH_RATE)  # fmt: skip
    return module.Mixer(table_bits, settings, prior)
