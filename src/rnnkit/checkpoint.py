"""Run directories and checkpoints.

A run directory holds ``model.safetensors`` (weights), ``state.safetensors`` (optimizer, RNG
states, completed epochs and their history: what ``--resume`` needs), ``config.json`` (config,
vocabulary, format and rnnkit versions) and ``metrics.jsonl``.

A save writes every file to a temp file in the same folder (flush + fsync) and renames them only
when all are written, so a crash or a full disk leaves the previous checkpoint intact; all files of
one save carry the same checkpoint id, and loading refuses a mixture. Loading never unpickles:
tensors are read with safetensors, the rest is JSON, and a pickle or ``torch.save`` file is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rnnkit import __version__
from rnnkit.errors import RnnkitError
from rnnkit.models import RNNLM, build_model
from rnnkit.text import Vocab
from rnnkit.train import TrainConfig

FORMAT = "rnnkit-run"
FORMAT_VERSION = 1
MODEL_FILE, STATE_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "state.safetensors", "config.json", \
    "metrics.jsonl"


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    write_files({Path(path): data})


def write_files(files: dict[Path, bytes]) -> None:
    """Replace several files as one: first every new version goes to a temp file beside it (flush,
    fsync), and only when all are on disk are they renamed over the old ones, in the given order.
    A failure while writing (a full disk) leaves every old file as it was; Ctrl-C is held back
    until the renames are done."""
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            fd, temps[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        with _sigint_deferred():
            for path, tmp in temps.items():
                os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    for directory in {path.parent for path in files}:  # make the renames themselves durable
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a SIGINT that arrives inside the block and deliver it after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def pack(obj) -> tuple[dict[str, torch.Tensor], str]:
    """Split a nest of dicts/lists/scalars/tensors into flat tensors + a JSON skeleton (no pickle)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().to("cpu").contiguous()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot checkpoint a {type(x).__name__}")

    return tensors, json.dumps(walk(obj, "s"))


def unpack(tensors: dict[str, torch.Tensor], skeleton: str):
    """Inverse of :func:`pack`."""

    def walk(x):
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            return {k: walk(v) for k, v in x["__dict__"]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(json.loads(skeleton))


def metrics_lines(history: list[dict]) -> bytes:
    """``metrics.jsonl``: one JSON object per epoch (NaN written as null)."""
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()} for row in history]
    return "".join(json.dumps(row) + "\n" for row in clean).encode()


def save_run(run_dir: str | os.PathLike, model: RNNLM, vocab: Vocab, config: TrainConfig, epoch: int,
             state: dict | None = None) -> None:
    """Write a checkpoint: training state (if given), weights, metrics, then the config naming them.

    With ``state`` (a :meth:`Trainer.state_dict`, possibly of an earlier epoch than the live
    model), the weights written are the state's."""
    run_dir = Path(run_dir)
    checkpoint = f"{epoch}-{uuid.uuid4().hex[:12]}"
    meta = {"format": FORMAT, "checkpoint": checkpoint}
    files: dict[Path, bytes] = {}
    if state is not None:
        tensors, skeleton = pack(state)
        files[run_dir / STATE_FILE] = save_safetensors(tensors, metadata={**meta, "state": skeleton})
        files[run_dir / METRICS_FILE] = metrics_lines(state["history"])
    weights = state["model"] if state is not None else model.state_dict()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    files[run_dir / MODEL_FILE] = save_safetensors(weights, metadata=meta)
    config_json = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnnkit_version": __version__,
        "checkpoint": checkpoint,
        "epoch": epoch,
        "has_state": state is not None,
        "config": asdict(config),
        "vocab": {"idx_to_token": vocab.idx_to_token, "unk_token": vocab.unk_token},
    }
    files[run_dir / CONFIG_FILE] = (json.dumps(config_json, indent=1, ensure_ascii=False) + "\n").encode()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_files(files)  # config.json last: it names the checkpoint the other files belong to
    except OSError as exc:
        raise RnnkitError(f"cannot save checkpoint in {run_dir}: {exc.strerror or exc}; "
                          "the previous checkpoint, if any, is unchanged") from None


def read_config(run_dir: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a run directory, checked for format and version."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RnnkitError(f"{run_dir}: not a run directory (no such directory)")
    if not path.is_file():
        raise RnnkitError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RnnkitError(f"{path}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RnnkitError(f"{path}: not an rnnkit run config")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RnnkitError(f"{path}: checkpoint format {version} is newer than this rnnkit "
                          f"({__version__}) reads (format {FORMAT_VERSION}); upgrade rnnkit")
    return meta


def read_tensors(path: str | os.PathLike, checkpoint: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file; refuses pickles, truncated or corrupt files and
    (given ``checkpoint``) a file from another save than the config's."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RnnkitError(f"{path}: missing") from None
    looks_like_safetensors = len(data) >= 10 and data[8:9] == b"{"  # u64 header length, then a JSON header
    if not looks_like_safetensors and (data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"):
        raise RnnkitError(f"{path}: is a pickle / torch.save file, not safetensors; rnnkit never unpickles")
    try:
        # clone: the loaded tensors would otherwise be unaligned views of immutable Python bytes,
        # which the optimizer then updates in place
        tensors = {name: tensor.clone() for name, tensor in load_safetensors(data).items()}
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise RnnkitError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    metadata = header.get("__metadata__") or {}
    if checkpoint is not None and metadata.get("checkpoint") != checkpoint:
        raise RnnkitError(f"{path}: belongs to checkpoint {metadata.get('checkpoint')}, but config.json names "
                          f"{checkpoint} (a save was interrupted?); the run cannot be loaded consistently")
    return tensors, metadata


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[RNNLM, Vocab, TrainConfig, dict]:
    """Rebuild (model, vocab, config, meta) from a run directory, checking weights against config."""
    run_dir = Path(run_dir)
    meta = read_config(run_dir)
    try:
        config = TrainConfig.from_dict(meta["config"])
        vocab = Vocab.from_tokens_list(meta["vocab"]["idx_to_token"], meta["vocab"]["unk_token"])
    except (KeyError, TypeError) as exc:
        raise RnnkitError(f"{run_dir / CONFIG_FILE}: incomplete config ({exc})") from None
    model = build_model(config.model, len(vocab), config.hidden, config.layers, config.dropout,
                        config.embedding, config.activation)
    tensors, _ = read_tensors(run_dir / MODEL_FILE, meta.get("checkpoint"))
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [f"{k}: {tuple(tensors[k].shape)} vs config {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise RnnkitError(f"{run_dir}: weights do not match config.json ({'; '.join(problems[:4])})")
    model.load_state_dict(tensors)
    return model.to(device).eval(), vocab, config, meta


def load_state(run_dir: str | os.PathLike, meta: dict) -> dict:
    """The training state saved with the checkpoint that ``meta`` (its config.json) describes."""
    if not meta.get("has_state"):
        raise RnnkitError(f"{run_dir}: this checkpoint has no training state to resume from")
    tensors, metadata = read_tensors(Path(run_dir) / STATE_FILE, meta.get("checkpoint"))
    try:
        return unpack(tensors, metadata["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RnnkitError(f"{Path(run_dir) / STATE_FILE}: corrupt training state ({exc})") from None
