"""The ``.rnz`` format and the streams that write and read it.

A file is a header, blocks, an end mark and a trailer (integers little-endian)::

    header   b"RNZ\\x1a", format version (u8), mode (u8: 0 adaptive, 1 a trained run), the
             model's version (u8), the model's table size (u8, log2), then
               trained run: its weights (u8: 0 last, 1 best), its checkpoint id (u8 length, ASCII),
                            the sha256 of its weights file (32 bytes)
             and the coder's version (u8 length, ASCII: constriction's "major.minor")
    block    kind (u8: 1 coded, 2 stored), its bytes' count (u32, at most BLOCK_SIZE), then
             coded: the range coder's 32-bit words (u32 count, words) | stored: the bytes
    end      kind 0
    trailer  CRC-32 of the original bytes (u32), their count (u64)

The model carries its state from block to block; each block has a range coder of its own, so that
memory stays flat whatever the length. A block that would not get smaller is stored as it is (the
model still reads it), so that incompressible input grows by a few bytes only. The coders are in
:mod:`rnnkit.compress.coders`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from rnnkit.compress.coders import MixerCoder, NetworkPrior, TrainedRun, UndecodableBlock, load_constriction
from rnnkit.compress.mixer import MIN_TABLE_BITS, TABLE_BITS, table_bits_for
from rnnkit.errors import RnnkitError

MAGIC = b"RNZ\x1a"
FORMAT_VERSION = 1
ADAPTIVE, TRAINED_RUN = 0, 1  # the mode byte: learn as it codes from a fixed start | a run's network
MODEL_VERSIONS = {ADAPTIVE: 2, TRAINED_RUN: 3}  # a change to a model's arithmetic is a new version
BLOCK_SIZE = 1 << 16
END, CODED, STORED = 0, 1, 2
WEIGHTS = ("last", "best")


class CorruptFile(RnnkitError):
    """A ``.rnz`` input that is truncated, damaged, or not one at all: exit status 2."""


@dataclass
class Totals:
    """What a stream coded: the original's bytes, the ``.rnz`` bytes, and the model's own code
    length (the sum of -log2 p over the coded symbols; what an ideal coder would write)."""

    original: int = 0
    compressed: int = 0
    model_bits: float = 0.0


@dataclass
class Header:
    """What a ``.rnz`` file was coded with: the mode, and the adaptive model's table size or the
    trained run's identity (its checkpoint id, which weights, their file's sha256)."""

    mode: int = ADAPTIVE
    table_bits: int = 0
    checkpoint: str = ""
    weights: str = "best"
    sha256: bytes = b""

    def encode(self) -> bytes:
        fields = bytes([FORMAT_VERSION, self.mode, MODEL_VERSIONS[self.mode], self.table_bits])
        if self.mode == TRAINED_RUN:
            checkpoint = self.checkpoint.encode("ascii")
            fields += bytes([WEIGHTS.index(self.weights), len(checkpoint)]) + checkpoint + self.sha256
        coder = coder_version().encode("ascii")
        return MAGIC + fields + bytes([len(coder)]) + coder


def coder_version() -> str:
    """constriction's "major.minor": its quantization of probabilities is part of the format."""
    from importlib.metadata import version

    return ".".join(version("constriction").split(".")[:2])


def read_exact(source: BinaryIO, n: int, what: str) -> bytes:
    data = source.read(n)
    if len(data) != n:
        raise CorruptFile(f"truncated: the file ends inside {what}")
    return data


def read_header(source: BinaryIO) -> Header:
    """The header of a ``.rnz`` file of a format, mode, model and coder this rnnkit codes alike."""
    if source.read(4) != MAGIC:
        raise CorruptFile("not an rnnkit compressed file (it does not start as a .rnz file does)")
    version, mode, model = read_exact(source, 3, "the header")
    if version != FORMAT_VERSION:
        raise CorruptFile(f"made in .rnz format {version}; this rnnkit reads format {FORMAT_VERSION}")
    if MODEL_VERSIONS.get(mode) != model:
        raise CorruptFile(f"made with mode {mode}, model {model}; this rnnkit reads {_modes()}")
    header = Header(mode, table_bits=read_exact(source, 1, "the header")[0])
    if not MIN_TABLE_BITS <= header.table_bits <= TABLE_BITS:
        raise CorruptFile(f"corrupt: tables of 2**{header.table_bits} entries")
    if mode == TRAINED_RUN:
        weights, length = read_exact(source, 2, "the header")
        if weights >= len(WEIGHTS):
            raise CorruptFile(f"corrupt: weights {weights}")
        header.weights = WEIGHTS[weights]
        header.checkpoint = read_exact(source, length, "the header").decode("ascii", "replace")
        header.sha256 = read_exact(source, 32, "the header")
    length = read_exact(source, 1, "the header")[0]
    coder, here = read_exact(source, length, "the header").decode("ascii", "replace"), coder_version()
    if coder != here:
        raise CorruptFile(
            f"coded with constriction {coder}, and this machine has constriction {here}: "
            f"decompress it with constriction {coder}.*"
        )
    return header


def _modes() -> str:
    names = {ADAPTIVE: "adaptive", TRAINED_RUN: "a trained run"}
    return " and ".join(f"mode {mode} ({names[mode]}) with model {model}" for mode, model in MODEL_VERSIONS.items())


def coder_for(header: Header, model: str | os.PathLike | None, name: str = "the file") -> MixerCoder:
    """The coder that reads a file of this header; ``model``: the run it needs, if any (a run
    whose weights are not the ones the file names is refused, naming both)."""
    if header.mode == ADAPTIVE:
        return MixerCoder(header.table_bits)
    if model is None:
        raise RnnkitError(
            f"{name} was compressed with a trained run (checkpoint {header.checkpoint}); "
            "decompress it with --model RUN_DIR"
        )
    run = TrainedRun(model)
    if (run.checkpoint, run.sha256) != (header.checkpoint, header.sha256) or run.weights != header.weights:
        raise RnnkitError(
            f"{name} was compressed with checkpoint {header.checkpoint} ({header.weights} weights, sha256 "
            f"{header.sha256.hex()[:16]}…), and --model is {run.describe()}: give the run it was compressed with"
        )
    return MixerCoder(header.table_bits, NetworkPrior(run))


def compress_stream(
    source: BinaryIO,
    sink: BinaryIO,
    progress: Callable[[int], None] | None = None,
    size: int | None = None,
    model: str | os.PathLike | None = None,
) -> Totals:
    """Read ``source`` to its end and write it to ``sink`` as a ``.rnz`` stream: adaptive, or
    with the trained run ``model`` (a run directory). ``size``, where known, lets a short input
    use smaller tables."""
    load_constriction()
    if model is None:
        header = Header(ADAPTIVE, table_bits=table_bits_for(size))
        coder = MixerCoder(header.table_bits)
    else:
        run = TrainedRun(model)
        header = Header(TRAINED_RUN, table_bits_for(size), run.checkpoint, run.weights, run.sha256)
        coder = MixerCoder(header.table_bits, NetworkPrior(run))
    header_bytes = header.encode()
    sink.write(header_bytes)
    totals, crc = Totals(compressed=len(header_bytes)), 0
    while block := source.read(BLOCK_SIZE):
        words, bits = coder.encode(block)
        totals.model_bits += bits
        words = words.astype("<u4").tobytes()
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


def read_block(source: BinaryIO, coder: MixerCoder) -> bytes | None:
    """The next block's original bytes (decoded, or stored and read by the model); None at the end."""
    kind = read_exact(source, 1, "a block")[0]
    if kind == END:
        return None
    if kind not in (CODED, STORED):
        raise CorruptFile(f"corrupt: unknown block kind {kind}")
    count = struct.unpack("<I", read_exact(source, 4, "a block"))[0]
    if not 0 < count <= BLOCK_SIZE:
        raise CorruptFile(f"corrupt: a block of {count} bytes")
    if kind == STORED:
        block = read_exact(source, count, "a block")
        coder.learn(block)
        return block
    words = struct.unpack("<I", read_exact(source, 4, "a block"))[0]
    if words > 2 * BLOCK_SIZE:
        raise CorruptFile(f"corrupt: a block of {words} words")
    data = read_exact(source, 4 * words, "a block")
    try:
        return coder.decode(np.frombuffer(data, dtype="<u4").astype(np.uint32), count)
    except UndecodableBlock as exc:
        raise CorruptFile(str(exc)) from None


def decompress_stream(
    source: BinaryIO,
    sink: BinaryIO,
    progress: Callable[[int], None] | None = None,
    model: str | os.PathLike | None = None,
) -> Totals:
    """Read a ``.rnz`` stream from ``source`` and write the original bytes to ``sink``; the CRC and
    length in the trailer are checked (:class:`CorruptFile` otherwise). ``model``: the run
    directory a file compressed with ``--model`` needs."""
    load_constriction()
    coder, totals, crc = coder_for(read_header(source), model), Totals(), 0
    while (block := read_block(source, coder)) is not None:
        sink.write(block)
        crc = zlib.crc32(block, crc)
        totals.original += len(block)
        if progress:
            progress(len(block))
    expected_crc, expected_length = struct.unpack("<IQ", read_exact(source, 12, "the trailer"))
    if (expected_crc, expected_length) != (crc, totals.original):
        raise CorruptFile("corrupt: the decompressed bytes do not match the stored checksum")
    if source.read(1):
        raise CorruptFile("corrupt: bytes after the end of the compressed data")
    return totals
