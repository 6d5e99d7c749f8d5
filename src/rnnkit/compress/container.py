"""The ``.rnz`` format and the streams that write and read it.

A file is a header, blocks, an end mark and a trailer (integers little-endian)::

    header   b"RNZ\\x1a", format version (u8), mode (u8), model version (u8), the model's
             table size (u8, log2), the coder's version (u8 length, ASCII: constriction's
             "major.minor")
    block    kind (u8: 1 coded, 2 stored), its bytes' count (u32, at most BLOCK_SIZE), then
             coded: the range coder's 32-bit words (u32 count, words) | stored: the bytes
    end      kind 0
    trailer  CRC-32 of the original bytes (u32), their count (u64)

The model carries its state from block to block; each block has a range coder of its own, so that
memory stays flat whatever the length. A block that would not get smaller is stored as it is (the
model still reads it), so that incompressible input grows by a few bytes only.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from rnnkit.compress.mixer import MIN_TABLE_BITS, TABLE_BITS, ContextMixer, table_bits_for
from rnnkit.errors import RnnkitError

MAGIC = b"RNZ\x1a"
FORMAT_VERSION = 1
ADAPTIVE = 0  # the mode byte: the model learns as it codes, from a fixed start
MODEL_VERSION = 1  # ContextMixer's arithmetic; a change to it is a new version
BLOCK_SIZE = 1 << 16
END, CODED, STORED = 0, 1, 2


class CorruptFile(RnnkitError):
    """A ``.rnz`` input that is truncated, damaged, or not one at all: exit status 2."""


@dataclass
class Totals:
    """What a stream coded: the original's bytes, the ``.rnz`` bytes, and the model's own code
    length (the sum of -log2 p over the coded bits; what an ideal coder would write)."""

    original: int = 0
    compressed: int = 0
    model_bits: float = 0.0


def coder_version() -> str:
    """constriction's "major.minor": its quantization of probabilities is part of the format."""
    from importlib.metadata import version

    return ".".join(version("constriction").split(".")[:2])


def _constriction():
    try:
        import constriction
    except ImportError:
        raise RnnkitError("rnnkit compress needs constriction: pip install 'rnnkit[compress]'") from None
    return constriction


def write_header(sink: BinaryIO, table_bits: int) -> int:
    coder = coder_version().encode("ascii")
    header = MAGIC + bytes([FORMAT_VERSION, ADAPTIVE, MODEL_VERSION, table_bits, len(coder)]) + coder
    sink.write(header)
    return len(header)


def read_exact(source: BinaryIO, n: int, what: str) -> bytes:
    data = source.read(n)
    if len(data) != n:
        raise CorruptFile(f"truncated: the file ends inside {what}")
    return data


def read_header(source: BinaryIO) -> int:
    """Check the header (an ``.rnz`` file of a format, mode, model and coder this rnnkit codes
    alike); returns the model's table size."""
    magic = source.read(4)
    if magic != MAGIC:
        raise CorruptFile("not an rnnkit compressed file (it does not start as a .rnz file does)")
    version, mode, model, table_bits, length = read_exact(source, 5, "the header")
    if version != FORMAT_VERSION:
        raise CorruptFile(f"made in .rnz format {version}; this rnnkit reads format {FORMAT_VERSION}")
    if mode != ADAPTIVE or model != MODEL_VERSION:
        raise CorruptFile(
            f"made with mode {mode}, model {model}; this rnnkit has mode {ADAPTIVE}, model {MODEL_VERSION}"
        )
    if not MIN_TABLE_BITS <= table_bits <= TABLE_BITS:
        raise CorruptFile(f"corrupt: tables of 2**{table_bits} entries")
    coder, here = read_exact(source, length, "the header").decode("ascii", "replace"), coder_version()
    if coder != here:
        raise CorruptFile(
            f"coded with constriction {coder}, and this machine has constriction {here}: "
            f"decompress it with constriction {coder}.*"
        )
    return table_bits


def compress_stream(
    source: BinaryIO, sink: BinaryIO, progress: Callable[[int], None] | None = None, size: int | None = None
) -> Totals:
    """Read ``source`` to its end and write it to ``sink`` as a ``.rnz`` stream; ``size``, where
    known, lets a short input use smaller tables."""
    constriction = _constriction()
    bernoulli = constriction.stream.model.Bernoulli(perfect=False)
    table_bits = table_bits_for(size)
    model, totals, crc = ContextMixer(table_bits), Totals(), 0
    totals.compressed = write_header(sink, table_bits)
    while block := source.read(BLOCK_SIZE):
        bits, probabilities = read_known(model, block)
        p1 = np.asarray(probabilities, dtype=np.float64) / 4096
        ones = np.asarray(bits, dtype=np.int32)
        totals.model_bits -= float(np.log2(np.where(ones == 1, p1, 1 - p1)).sum())
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(ones, bernoulli, p1)
        words = encoder.get_compressed().astype("<u4").tobytes()
        if len(words) + 4 < len(block):
            record = struct.pack("<BII", CODED, len(block), len(words) // 4) + words
        else:
            record = struct.pack("<BI", STORED, len(block)) + block
        sink.write(record)
        crc = zlib.crc32(block, crc)
        totals.original += len(block)
        totals.compressed += len(record)
        if progress:
            progress(len(block))
    trailer = struct.pack("<BIQ", END, crc, totals.original)
    sink.write(trailer)
    totals.compressed += len(trailer)
    return totals


def read_known(model: ContextMixer, block: bytes) -> tuple[list[int], list[int]]:
    """Run the model over known bytes (it learns them): their bits, most significant first, and
    the probability of a 1 it gave before each, in 1/4096."""
    bits = [(byte >> shift) & 1 for byte in block for shift in range(7, -1, -1)]
    following, probabilities = iter(bits), []

    def decide(p: int) -> int:
        probabilities.append(p)
        return next(following)

    for _ in range(len(block)):
        model.byte(decide)
    return bits, probabilities


def _decode_block(constriction, model: ContextMixer, words: bytes, count: int) -> bytes:
    bernoulli = constriction.stream.model.Bernoulli
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))

    def decide(p: int) -> int:
        return int(decoder.decode(bernoulli(p / 4096, perfect=False)))

    try:
        return bytes(model.byte(decide) for _ in range(count))
    except (ValueError, AssertionError, RuntimeError) as exc:  # the coder refuses damaged words
        raise CorruptFile(f"corrupt: a block does not decode ({exc})") from None


def decompress_stream(source: BinaryIO, sink: BinaryIO, progress: Callable[[int], None] | None = None) -> Totals:
    """Read a ``.rnz`` stream from ``source`` and write the original bytes to ``sink``; the CRC and
    length in the trailer are checked (:class:`CorruptFile` otherwise)."""
    constriction = _constriction()
    model, totals, crc = ContextMixer(read_header(source)), Totals(), 0
    while True:
        kind = read_exact(source, 1, "a block")[0]
        if kind == END:
            break
        if kind not in (CODED, STORED):
            raise CorruptFile(f"corrupt: unknown block kind {kind}")
        count = struct.unpack("<I", read_exact(source, 4, "a block"))[0]
        if not 0 < count <= BLOCK_SIZE:
            raise CorruptFile(f"corrupt: a block of {count} bytes")
        if kind == CODED:
            words = struct.unpack("<I", read_exact(source, 4, "a block"))[0]
            if words > 2 * BLOCK_SIZE:
                raise CorruptFile(f"corrupt: a block of {words} words")
            block = _decode_block(constriction, model, read_exact(source, 4 * words, "a block"), count)
        else:
            block = read_exact(source, count, "a block")
            read_known(model, block)
        sink.write(block)
        crc = zlib.crc32(block, crc)
        totals.original += count
        if progress:
            progress(count)
    expected_crc, expected_length = struct.unpack("<IQ", read_exact(source, 12, "the trailer"))
    if (expected_crc, expected_length) != (crc, totals.original):
        raise CorruptFile("corrupt: the decompressed bytes do not match the stored checksum")
    if source.read(1):
        raise CorruptFile("corrupt: bytes after the end of the compressed data")
    return totals
