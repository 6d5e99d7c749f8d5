"""Run directories and checkpoints.

A run directory holds ``config.json`` (config, vocabulary, format and rnnkit versions, and the
names of the checkpoint's files), the checkpoint's weights ``model-<id>.safetensors``, its
training state ``state-<id>.safetensors`` (optimizer, RNG states, completed epochs and their
history: what ``--resume`` needs), ``metrics.jsonl`` and ``curves.png``.

A save writes the new checkpoint's files under new names (each through a temp file, fsynced), and
then replaces ``config.json``, which names them, with one rename: the commit point. At every
instant the directory therefore loads as the previous checkpoint or the new one; the previous
checkpoint's files and temp files of killed saves are removed afterwards. :func:`commit_files` is
that protocol, for every writer of a run directory (``rnnkit timeseries`` too). Loading never
unpickles: tensors are read with safetensors, the rest is JSON, and a pickle or ``torch.save``
file is refused. Runs written by format 1 (``model.safetensors`` and ``state.safetensors``
renamed one by one) still load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from rnnkit import __version__
from rnnkit.config import TrainConfig
from rnnkit.errors import RnnkitError
from rnnkit.files import atomic_write, fsync_directory, remove_temp_files, write_temp
from rnnkit.models import RNNLM, build_model
from rnnkit.text import Vocab

FORMAT = "rnnkit-run"
FORMAT_VERSION = 2
CONFIG_FILE, METRICS_FILE, EVALS_FILE = "config.json", "metrics.jsonl", "evals.jsonl"
LEGACY_FILES = {"model": "model.safetensors", "state": "state.safetensors"}  # format 1
CHECKPOINT_FILE = re.compile(r"(model|state|best)-[0-9]+-[0-9a-f]{12}\.safetensors")

SAVE_FAILED = "cannot save checkpoint in {run_dir}: {reason}; the previous checkpoint, if any, is unchanged"

__all__ = [
    "atomic_write",
    "commit_files",
    "save_run",
    "load_run",
    "load_state",
    "read_config",
    "checkpoint_files",
    "checkpoint_path",
    "chosen_checkpoint",
]


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


def save_run(
    run_dir: str | os.PathLike,
    model: RNNLM,
    vocab: Vocab,
    config: TrainConfig,
    epoch: int,
    state: dict | None = None,
    corpus_sha1: str | None = None,
) -> None:
    """Write a checkpoint (module doc): weights and training state (if given) under new names, then
    ``config.json`` naming them, then remove what the previous checkpoint and killed saves left.

    With ``state`` (a :meth:`Trainer.state_dict`, possibly of an earlier epoch than the live model)
    the weights written are the state's. ``corpus_sha1`` (of the training text) lets a resume check
    that it reads the same corpus."""
    checkpoint = f"{epoch}-{uuid.uuid4().hex[:12]}"
    meta = {"format": FORMAT, "checkpoint": checkpoint}
    names = {"model": f"model-{checkpoint}.safetensors"}
    payload: dict[str, bytes] = {}
    if state is not None:
        tensors, skeleton = pack(state)
        names["state"] = f"state-{checkpoint}.safetensors"
        payload[names["state"]] = save_safetensors(tensors, metadata={**meta, "state": skeleton})
    weights = state["model"] if state is not None else model.state_dict()
    weights = {k: v.detach().to("cpu").clone() for k, v in weights.items()}  # tied weights: one copy per name
    payload[names["model"]] = save_safetensors(weights, metadata=meta)
    best = state.get("best") if state is not None else None
    if best is not None:  # the weights of the lowest validation loss so far
        names["best"] = f"best-{checkpoint}.safetensors"
        best_weights = {k: v.detach().to("cpu").contiguous() for k, v in best["model"].items()}
        payload[names["best"]] = save_safetensors(
            best_weights, metadata={**meta, "step": str(best["step"]), "val_loss": repr(best["val_loss"])}
        )
    config_json = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rnnkit_version": __version__,
        "checkpoint": checkpoint,
        "epoch": epoch,
        "step": state.get("step") if state is not None else None,
        "has_state": state is not None,
        "files": names,
        "best": None if best is None else {k: best[k] for k in ("step", "epoch", "val_loss")},
        "finished": state.get("finished") if state is not None else None,
        "corpus_sha1": corpus_sha1,
        "config": asdict(config),
        "vocab": {"idx_to_token": vocab.idx_to_token, "unk_token": vocab.unk_token},
    }
    extra = None if state is None else metrics_files(state["history"], state.get("evals", []))
    commit_files(run_dir, payload, (json.dumps(config_json, indent=1, ensure_ascii=False) + "\n").encode(), extra)


def commit_files(
    run_dir: str | os.PathLike,
    files: dict[str, bytes],
    config: bytes,
    extra: dict[str, bytes] | None = None,
    failure: str = SAVE_FAILED,
) -> None:
    """Commit a checkpoint to ``run_dir`` (module doc): each of ``files`` (name: bytes; names new to
    this checkpoint) through a temp file, an fsync of the directory, then ``config`` replacing
    ``config.json`` with one rename (the commit point), then ``extra`` (``metrics.jsonl`` and the
    like, each replaced atomically), and finally the removal of what the previous checkpoint and
    killed saves left.

    Every caller that writes a run directory goes through here, so they all keep one protocol: at
    every instant the directory loads as the previous checkpoint or the new one. ``config`` is given
    as bytes: its format is the caller's. An ``OSError`` becomes an :class:`RnnkitError` with
    ``failure`` (``{run_dir}``, ``{reason}``) as its text.

    Once committed, ``files`` are the checkpoint's files, whatever format ``config`` has (a
    timeseries run's too); before that, the ``config.json`` on disk says which files to keep."""
    run_dir = Path(run_dir)
    committed = False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            os.replace(write_temp(run_dir / name, data), run_dir / name)
        fsync_directory(run_dir)  # the new files are durable before config.json names them
        atomic_write(run_dir / CONFIG_FILE, config)  # the commit point
        committed = True
        for name, data in (extra or {}).items():
            atomic_write(run_dir / name, data)
    except OSError as exc:
        raise RnnkitError(failure.format(run_dir=run_dir, reason=exc.strerror or exc)) from None
    finally:
        remove_leftovers(run_dir, set(files) if committed else None)


def metrics_files(history: list[dict], evals: list[dict]) -> dict[str, bytes]:
    """``metrics.jsonl`` (one row per epoch) and, where there are any, ``evals.jsonl`` (one row per
    validation): file name -> bytes."""
    files = {METRICS_FILE: metrics_lines(history)}
    if evals:
        files[EVALS_FILE] = metrics_lines(evals)
    return files


def write_metrics(run_dir: Path, history: list[dict], evals: list[dict]) -> None:
    """``metrics.jsonl`` (one row per epoch) and ``evals.jsonl`` (one row per validation)."""
    for name, data in metrics_files(history, evals).items():
        atomic_write(run_dir / name, data)


def checkpoint_files(meta: dict) -> dict[str, str]:
    """File names of the checkpoint a parsed ``config.json`` describes: ``{"model": .., "state": ..}``."""
    files = meta.get("files", LEGACY_FILES if meta.get("format_version") == 1 else None)
    if not isinstance(files, dict) or not all(isinstance(v, str) and "/" not in v for v in files.values()):
        raise RnnkitError(f"{CONFIG_FILE}: names no checkpoint files")
    return files


def checkpoint_path(run_dir: str | os.PathLike, kind: str = "model") -> Path:
    """Path of the current checkpoint's ``model`` (weights) or ``state`` file in a run directory."""
    files = checkpoint_files(read_config(run_dir))
    if kind not in files:
        raise RnnkitError(f"{run_dir}: the checkpoint has no {kind} file")
    return Path(run_dir) / files[kind]


def remove_leftovers(run_dir: Path, keep: set[str] | None = None) -> None:
    """Remove checkpoint files that ``config.json`` does not name (a previous checkpoint, a save
    killed before its commit) and temp files of killed writes; ``keep``: the names to keep, where
    the caller knows them (it just committed them). Call with the run directory's lock held (the
    CLI takes it for the whole run)."""
    if not run_dir.is_dir():
        return
    try:
        keep = set(checkpoint_files(read_config(run_dir)).values()) if keep is None else keep
    except RnnkitError:
        return  # no readable config: nothing can be known to be unreferenced
    for path in run_dir.iterdir():
        if CHECKPOINT_FILE.fullmatch(path.name) and path.name not in keep:
            with contextlib.suppress(OSError):
                path.unlink()
    remove_temp_files(run_dir)


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
        raise RnnkitError(
            f"{path}: checkpoint format {version} is newer than this rnnkit "
            f"({__version__}) reads (format {FORMAT_VERSION}); upgrade rnnkit"
        )
    return meta


def read_tensors(path: str | os.PathLike, checkpoint: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file; refuses pickles, truncated or corrupt files and
    (given ``checkpoint``) a file from another save than the config's."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RnnkitError(f"{path}: missing") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise RnnkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    looks_like_safetensors = len(data) >= 10 and data[8:9] == b"{"  # u64 header length, then a JSON header
    if not looks_like_safetensors and (data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"):
        raise RnnkitError(f"{path}: is a pickle / torch.save file, not safetensors; rnnkit never unpickles")
    try:
        # clone: the loaded tensors would otherwise be unaligned views of immutable Python bytes,
        # which the optimizer then updates in place
        tensors = {name: tensor.clone() for name, tensor in load_safetensors(data).items()}
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise RnnkitError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    metadata = header.get("__metadata__") or {}
    if checkpoint is not None and metadata.get("checkpoint") != checkpoint:
        raise RnnkitError(
            f"{path}: belongs to checkpoint {metadata.get('checkpoint')}, but config.json names "
            f"{checkpoint} (a save was interrupted?); the run cannot be loaded consistently"
        )
    return tensors, metadata


def load_run(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", checkpoint: str = "last"
) -> tuple[RNNLM, Vocab, TrainConfig, dict]:
    """Rebuild (model, vocab, config, meta) from a run directory, checking weights against config.

    ``checkpoint``: ``last`` (the weights at the end of training, what ``--resume`` continues) or
    ``best`` (those of the lowest validation loss, kept where the run evaluated)."""
    run_dir = Path(run_dir)
    meta = read_config(run_dir)
    try:
        config = TrainConfig.from_dict(meta["config"])
        vocab = Vocab.from_tokens_list(meta["vocab"]["idx_to_token"], meta["vocab"]["unk_token"])
    except (KeyError, TypeError) as exc:
        raise RnnkitError(f"{run_dir / CONFIG_FILE}: incomplete config ({exc})") from None
    model = build_model(
        config.model,
        len(vocab),
        config.hidden,
        config.layers,
        config.dropout,
        config.embedding,
        config.activation,
        config.tie_weights,
    )
    files = checkpoint_files(meta)
    if checkpoint not in ("last", "best"):
        raise RnnkitError(f"checkpoint must be last or best, got {checkpoint!r}")
    if checkpoint == "best" and "best" not in files:
        raise RnnkitError(f"{run_dir}: this run kept no best checkpoint (it has no validation data)")
    tensors, _ = read_tensors(run_dir / files["model" if checkpoint == "last" else "best"], meta.get("checkpoint"))
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [
        f"{k}: {tuple(tensors[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        raise RnnkitError(f"{run_dir}: weights do not match config.json ({'; '.join(problems[:4])})")
    model.load_state_dict(tensors)
    return model.to(device).eval(), vocab, config, meta


def chosen_checkpoint(meta: dict, choice: str | None = None) -> str:
    """Which checkpoint ``generate``, ``eval`` and ``serve`` use: ``choice`` where given, else the
    best one where the run kept one (the weights of its lowest validation loss: a run that went on
    past its best is not served its overfitted end), else the last."""
    return choice or ("best" if meta.get("best") else "last")


def load_state(run_dir: str | os.PathLike, meta: dict) -> dict:
    """The training state saved with the checkpoint that ``meta`` (its config.json) describes."""
    if not meta.get("has_state"):
        raise RnnkitError(f"{run_dir}: this checkpoint has no training state to resume from")
    path = Path(run_dir) / checkpoint_files(meta).get("state", "")
    tensors, metadata = read_tensors(path, meta.get("checkpoint"))
    try:
        return unpack(tensors, metadata["state"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RnnkitError(f"{path}: corrupt training state ({exc})") from None
