"""Corpora larger than memory: ``rnnkit prepare`` writes token ids to flat files that training
reads through a memory map (nanoGPT's ``train.bin``/``val.bin`` idea).

A data directory holds ``train.bin`` and ``val.bin`` (token ids, little-endian uint8, uint16 or
uint32 by vocabulary size), ``vocab.json``, and ``manifest.json`` (format version, the source's
sha1 and size, each file's token count, dtype and sha1), written last: the commit point.

Two passes over the source, each in bounded memory (chunks of :data:`CHUNK` bytes): the first
finds the vocabulary and the token count, the second writes the ids. ``char`` tokens are the
characters of the decoded text exactly as they are (no newline translation, a byte-order mark is
a character), so ``decode(ids) == text``; ``bytes`` tokens are the file's bytes (256 of them,
whatever the file holds).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnkit.errors import RnnkitError

FORMAT, FORMAT_VERSION = "rnnkit-data", 1
CHUNK = 1 << 22  # bytes read at a time (4 MiB: the working memory of a pass is a few times this)
PREPARED_TOKENS = ("char", "bytes")
UNICODE = 0x110000  # code points


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u1" if vocab_size <= 1 << 8 else "<u2" if vocab_size <= 1 << 16 else "<u4")


def _chunks(path: Path):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


def _texts(path: Path, encoding: str):
    """The decoded text of ``path`` in pieces, without newline translation."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise RnnkitError(f"unknown encoding '{encoding}'") from None
    offset = 0
    try:
        for block in _chunks(path):
            yield decoder.decode(block)
            offset += len(block)
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise RnnkitError(
            f"{path}: not valid {encoding} near byte {offset + exc.start}; pass --encoding, or "
            "--tokens bytes for any file"
        ) from None


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _check_source(path: Path) -> None:
    from rnnkit.text import check_regular_file

    check_regular_file(path)
    if path.stat().st_size == 0:
        raise RnnkitError(f"{path}: file is empty")


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    tokens: str = "char",
    encoding: str = "utf-8",
    val_fraction: float = 0.1,
) -> dict:
    """Write a data directory for ``source`` (module doc) and return its manifest."""
    from rnnkit.files import atomic_write, fsync_directory

    source, out = Path(source), Path(out)
    if tokens not in PREPARED_TOKENS:
        raise RnnkitError(f"--tokens must be one of {', '.join(PREPARED_TOKENS)}, got {tokens!r}")
    if not 0 <= val_fraction < 1:
        raise RnnkitError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    _check_source(source)
    sha1, size, count, idx_to_token = _first_pass(source, tokens, encoding)
    if count < 2:
        raise RnnkitError(f"{source}: {count} tokens; nothing to train on")
    dtype = _dtype_for(len(idx_to_token))
    num_train = count - int(count * val_fraction)
    table = _id_table(idx_to_token, dtype) if tokens == "char" else None
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)  # the directory is not a data directory until it is done
        pieces = _chunks(source) if tokens == "bytes" else (_codepoints(t) for t in _texts(source, encoding))
        ids = (np.frombuffer(piece, dtype="<u1") if tokens == "bytes" else table[piece] for piece in pieces)
        files = _write_ids(out, ids, num_train, count)
        vocab = {"tokens": tokens, "idx_to_token": idx_to_token}
        vocab_bytes = (json.dumps(vocab, ensure_ascii=False) + "\n").encode()
        atomic_write(out / "vocab.json", vocab_bytes)
        fsync_directory(out)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": str(source),
            "source_sha1": sha1,
            "source_bytes": size,
            "tokens": tokens,
            "encoding": encoding,
            "dtype": dtype.str,
            "vocab_size": len(idx_to_token),
            "vocab_sha1": hashlib.sha1(vocab_bytes).hexdigest(),
            "files": files,
        }
        atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    except OSError as exc:
        raise RnnkitError(f"cannot write {out}: {exc.strerror or exc}") from None
    return manifest


def _first_pass(source: Path, tokens: str, encoding: str) -> tuple[str, int, int, list]:
    """Pass 1: the source's sha1 and size, its token count and vocabulary (``idx_to_token``).

    Characters are found by a flag per code point, set from a count per chunk of code points:
    O(n), whatever the alphabet."""
    sha1, size = hashlib.sha1(), 0
    for block in _chunks(source):
        sha1.update(block)
        size += len(block)
    if tokens == "bytes":
        return sha1.hexdigest(), size, size, list(range(256))
    used, count = np.zeros(UNICODE, dtype=bool), 0
    for text in _texts(source, encoding):
        points = _codepoints(text)
        count += len(points)
        used |= np.bincount(points, minlength=UNICODE).astype(bool)
    return sha1.hexdigest(), size, count, [chr(c) for c in np.flatnonzero(used).tolist()]


def _id_table(idx_to_token: list, dtype: np.dtype) -> np.ndarray:
    """Code point -> id: one table lookup per character turns a chunk of code points into ids."""
    table = np.zeros(UNICODE, dtype=dtype)
    table[[ord(t) for t in idx_to_token]] = np.arange(len(idx_to_token), dtype=dtype)
    return table


def _write_ids(out: Path, pieces, num_train: int, count: int) -> dict:
    """Pass 2: the ids (arrays, in order) into ``train.bin`` (the first ``num_train``) and
    ``val.bin`` (the rest, up to ``count``), each written to a temporary file, synced and renamed
    into place, so that a file under its final name is always whole; returns the manifest's
    ``files`` entry."""
    from rnnkit.files import write_temp

    files, written = {}, 0
    temps = {name: write_temp(out / f"{name}.bin", b"") for name in ("train", "val")}
    handles = {name: open(temp, "r+b") for name, temp in temps.items()}
    hashes = {name: hashlib.sha1() for name in temps}
    for ids in pieces:
        for name, lo, hi in (("train", 0, num_train), ("val", num_train, count)):
            part = ids[max(lo - written, 0) : max(hi - written, 0)]
            if len(part):
                data = part.tobytes()
                handles[name].write(data)
                hashes[name].update(data)
        written += len(ids)
    for name, handle in handles.items():
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temps[name], out / f"{name}.bin")
        files[name] = {
            "name": f"{name}.bin",
            "tokens": num_train if name == "train" else count - num_train,
            "sha1": hashes[name].hexdigest(),
        }
    return files


class MappedTokens:
    """Token ids in a file, read through a memory map: ``len``, ``[index tensor]`` and
    ``[a:b]`` give int64 tensors of just those tokens (the rest stays on disk).

    The map is made for each lookup and dropped after it (as nanoGPT does): a map kept open counts
    every page it ever touched as the process's memory, and the kernel's fault-around brings in
    neighbouring cached pages too, so random batches make all of the file resident (a 1 GB file
    within a few thousand batches); a map per batch costs a few microseconds."""

    device = torch.device("cpu")

    def __init__(self, path: Path, dtype: str, count: int) -> None:
        self.path, self.dtype, self.count = path, np.dtype(dtype), count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if not self.count:
            return torch.zeros(0, dtype=torch.int64)[index]
        array = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count,))
        try:
            return torch.from_numpy(np.array(array[index], dtype=np.int64))
        finally:
            array._mmap.close()


@dataclass
class PreparedData:
    manifest: dict
    idx_to_token: list
    train: MappedTokens
    val: MappedTokens


def open_prepared(data_dir: str | os.PathLike, verify: bool = True) -> PreparedData:
    """A data directory, checked: its manifest, the files' sizes and (``verify``) their sha1."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise RnnkitError(f"{data_dir}: not a prepared data directory (no manifest.json; rnnkit prepare makes one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        vocab_bytes = (data_dir / "vocab.json").read_bytes()
        vocab = json.loads(vocab_bytes)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RnnkitError(f"{data_dir}: unreadable manifest or vocabulary ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RnnkitError(f"{path}: not an rnnkit data manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RnnkitError(
            f"{path}: data format {manifest.get('format_version')} is not {FORMAT_VERSION}; prepare it again"
        )
    if hashlib.sha1(vocab_bytes).hexdigest() != manifest.get("vocab_sha1"):
        raise RnnkitError(f"{data_dir / 'vocab.json'}: does not match manifest.json (sha1)")
    try:
        dtype = np.dtype(manifest["dtype"])
        parts = {}
        for name in ("train", "val"):
            entry = manifest["files"][name]
            file = data_dir / entry["name"]
            if "/" in entry["name"] or not file.is_file():
                raise RnnkitError(f"{data_dir}: {entry['name']} is missing")
            expected = entry["tokens"] * dtype.itemsize
            if file.stat().st_size != expected:
                raise RnnkitError(
                    f"{file}: {file.stat().st_size} bytes, but manifest.json says {entry['tokens']} "
                    f"tokens of {dtype.itemsize} bytes ({expected}); truncated or foreign"
                )
            if verify:
                digest = hashlib.sha1()
                for block in _chunks(file):
                    digest.update(block)
                if digest.hexdigest() != entry["sha1"]:
                    raise RnnkitError(
                        f"{file}: sha1 {digest.hexdigest()} does not match manifest.json's "
                        f"{entry['sha1']}; prepare again"
                    )
            parts[name] = MappedTokens(file, dtype.str, entry["tokens"])
        idx_to_token = vocab["idx_to_token"]
    except (KeyError, TypeError) as exc:
        raise RnnkitError(f"{path}: incomplete ({exc})") from None
    if len(idx_to_token) != manifest.get("vocab_size"):
        raise RnnkitError(
            f"{data_dir}: vocab.json has {len(idx_to_token)} tokens, manifest.json says {manifest.get('vocab_size')}"
        )
    return PreparedData(manifest, idx_to_token, parts["train"], parts["val"])


def decode(idx_to_token: list, ids) -> str | bytes:
    """Text (char tokens) or bytes (byte tokens: ``vocab.json`` lists them as numbers) of ids."""
    ids = [int(i) for i in ids]
    if idx_to_token and isinstance(idx_to_token[0], int):
        return bytes(idx_to_token[i] for i in ids)
    return "".join(idx_to_token[i] for i in ids)
