"""Run directories: ``model.safetensors`` (weights) + ``config.json`` (config, vocabulary, versions).

Every file is written atomically (temp file in the same folder, flush + fsync, rename), so a crash
or a full disk leaves the previous version intact. Loading never unpickles: weights are read with
safetensors only, and a file that is a pickle or a ``torch.save`` archive is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
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
MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.jsonl"


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_run(run_dir: str | os.PathLike, model: RNNLM, vocab: Vocab, config: TrainConfig, epoch: int) -> None:
    """Write the weights, then the config that describes them, into ``run_dir``."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        atomic_write(run_dir / MODEL_FILE, save_safetensors(tensors, metadata={"format": FORMAT}))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "rnnkit_version": __version__,
            "epoch": epoch,
            "config": asdict(config),
            "vocab": {"idx_to_token": vocab.idx_to_token, "unk_token": vocab.unk_token},
        }
        atomic_write(run_dir / CONFIG_FILE, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
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


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; refuses pickles and truncated or corrupt files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RnnkitError(f"{path}: missing") from None
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise RnnkitError(f"{path}: is a pickle / torch.save file, not safetensors; rnnkit never unpickles")
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise RnnkitError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


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
    tensors = read_tensors(run_dir / MODEL_FILE)
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [f"{k}: {tuple(tensors[k].shape)} vs config {tuple(v.shape)}"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise RnnkitError(f"{run_dir}: weights do not match config.json ({'; '.join(problems[:4])})")
    model.load_state_dict(tensors)
    return model.to(device).eval(), vocab, config, meta
