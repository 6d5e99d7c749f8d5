"""Lossless compression with an adaptive model and arithmetic coding (``rnnkit compress``).

A model that predicts the next bit with probability ``p`` lets a range coder store that bit in
``-log2 p`` bits, exactly recoverable: compressing is modelling. The model here
is one of two (:mod:`rnnkit.compress.coders`):

- adaptive (the default): :class:`~rnnkit.compress.mixer.ContextMixer` starts from the same fixed
  state for every file and learns as it codes; the decompressor runs the same model and so sees the
  same probabilities. Integer arithmetic: the same bits on every machine.
- a trained run (``model=RUN_DIR``, ``--model``): the run's network predicts each character, as a
  shared dictionary that both sides hold; the file names the run's checkpoint and the sha256 of its
  weights, and decompressing refuses any other. :class:`~rnnkit.compress.network.PortableLM`
  computes it in a fixed order of float32 operations: the same bits on every machine too.

The coder is constriction's range coder (``rnnkit[compress]``). The format is in
:mod:`rnnkit.compress.container`.

From Python::

    from rnnkit.compress import compress_bytes, decompress_bytes
    packed = compress_bytes(b"any bytes")
    assert decompress_bytes(packed) == b"any bytes"
    packed = compress_bytes(b"some text", model="runs/shakespeare")  # a run directory
    assert decompress_bytes(packed, model="runs/shakespeare") == b"some text"

Files follow gzip's conventions (:func:`compress_file`): ``FILE`` becomes ``FILE.rnz`` and is
removed unless kept, no file is overwritten unless forced, and the output appears whole (temp file
and rename) or not at all.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from contextlib import ExitStack
from pathlib import Path

from rnnkit.compress.container import (
    BLOCK_SIZE,
    CorruptFile,
    Totals,
    compress_stream,
    decompress_stream,
)
from rnnkit.errors import RnnkitError

SUFFIX = ".rnz"

__all__ = [
    "BLOCK_SIZE",
    "SUFFIX",
    "CorruptFile",
    "Totals",
    "compress_bytes",
    "compress_file",
    "compress_stream",
    "decompress_bytes",
    "decompress_stream",
    "output_path",
]


def compress_bytes(data: bytes, model: str | os.PathLike | None = None) -> bytes:
    """``data`` as a ``.rnz`` file's bytes (``model``: a run directory to code with)."""
    sink = io.BytesIO()
    compress_stream(io.BytesIO(data), sink, size=len(data), model=model)
    return sink.getvalue()


def decompress_bytes(packed: bytes, model: str | os.PathLike | None = None) -> bytes:
    """The original bytes of a ``.rnz`` file's bytes (:class:`CorruptFile` if damaged; ``model``:
    the run directory it was compressed with, if any)."""
    sink = io.BytesIO()
    decompress_stream(io.BytesIO(packed), sink, model=model)
    return sink.getvalue()


def output_path(path: str | os.PathLike, decompress: bool = False) -> Path:
    """Where ``path`` goes by default: ``FILE`` -> ``FILE.rnz``, ``FILE.rnz`` -> ``FILE``."""
    path = Path(path)
    if decompress:
        if path.suffix != SUFFIX or path.name == SUFFIX:
            raise RnnkitError(f"{path}: no {SUFFIX} suffix to remove; name the output with -o")
        return path.with_suffix("")
    if path.suffix == SUFFIX:
        raise RnnkitError(f"{path} already has the {SUFFIX} suffix (rename it, or name the output with -o)")
    return path.with_name(path.name + SUFFIX)


def _check_input(path: Path) -> int:
    """The size of a regular file that can be read (one line of error otherwise)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise RnnkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RnnkitError(f"{path} is not a regular file")
    return info.st_size


def compress_file(
    path: str | os.PathLike,
    *,
    decompress: bool = False,
    output: str | os.PathLike | None = None,
    keep: bool = False,
    force: bool = False,
    progress: bool = True,
    model: str | os.PathLike | None = None,
) -> Totals:
    """Compress (or decompress) ``path`` (``"-"``: standard input) into ``output`` (default:
    :func:`output_path`; ``"-"``: standard output, and standard input always goes there unless
    ``output`` is given). An existing output is refused unless ``force``; the input is removed
    after success unless ``keep``, or the output is standard output, or the input standard input.
    ``model``: a run directory to compress with (and that decompressing such a file needs)."""
    from tqdm import tqdm

    from rnnkit.files import atomic_output

    from_stdin = str(path) == "-"
    size = None if from_stdin else _check_input(Path(path))
    if output is None:
        output = "-" if from_stdin else output_path(path, decompress)
    to_stdout = str(output) == "-"
    if to_stdout and not decompress and not force and sys.stdout.isatty():
        raise RnnkitError("compressed data not written to a terminal (-f forces it, -o names a file)")
    if not to_stdout:
        output = Path(output)
        if not from_stdin and output.resolve() == Path(path).resolve():
            raise RnnkitError(f"{output} is the input itself")
        if (output.exists() or output.is_symlink()) and not force:
            raise RnnkitError(f"{output} already exists (-f overwrites it)")
    try:
        with ExitStack() as stack:
            source = sys.stdin.buffer if from_stdin else stack.enter_context(open(path, "rb"))  # noqa: SIM115
            sink = sys.stdout.buffer if to_stdout else stack.enter_context(atomic_output(output))
            bar = stack.enter_context(
                tqdm(total=size, unit="B", unit_scale=True, disable=None if progress else True, leave=False)
            )
            if decompress:
                totals = decompress_stream(source, sink, bar.update, model)
            else:
                totals = compress_stream(source, sink, bar.update, size, model)
            sink.flush()
    except OSError as exc:  # a full disk, a closed pipe, an unreadable input
        where = "standard output" if to_stdout else output
        verb = "decompress" if decompress else "compress"
        raise RnnkitError(f"cannot {verb} {path} into {where}: {exc.strerror or exc}") from None
    if not (keep or from_stdin or to_stdout):
        os.unlink(path)
    return totals
