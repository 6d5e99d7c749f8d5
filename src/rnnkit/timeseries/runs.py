"""Run directories of ``rnnkit timeseries``: ``config.json`` (the commit point), the trainer's
state in safetensors, ``metrics.jsonl``, and the scores and plots of a finished run.

Saving goes through :func:`rnnkit.checkpoint.commit_files`, as every run directory's does, so
that an interrupted save leaves the previous checkpoint whole; loading reads the series again and
refuses one that changed, since the saved state would not belong to it."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from pathlib import Path

from rnnkit.errors import RnnkitError
from rnnkit.timeseries.config import SeriesConfig, load_series
from rnnkit.timeseries.plots import render_mse, render_predictions
from rnnkit.timeseries.training import SeriesTrainer

FORMAT, FORMAT_VERSION = "rnnkit-timeseries", 1


def save_series_run(run_dir: Path, trainer: SeriesTrainer) -> None:
    """``config.json`` (the commit point, renamed last) naming ``state-<id>.safetensors`` (weights,
    optimizer states, progress), and ``metrics.jsonl``: committed by :func:`rnnkit.checkpoint.commit_files`,
    as every run directory is."""
    from safetensors.torch import save as save_safetensors

    from rnnkit.checkpoint import commit_files, pack

    checkpoint = f"{sum(trainer.done.values())}-{uuid.uuid4().hex[:12]}"
    tensors, skeleton = pack(trainer.state_dict())
    name = f"state-{checkpoint}.safetensors"
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "checkpoint": checkpoint,
        "files": {"state": name},
        "config": asdict(trainer.config),
        "series": {
            "source": trainer.series.source,
            "sha1": trainer.series.sha1,
            "length": len(trainer.series.values),
            "notes": trainer.series.notes,
        },
        "done": trainer.done,
    }
    data = save_safetensors(tensors, metadata={"format": FORMAT, "checkpoint": checkpoint, "state": skeleton})
    metrics = "".join(json.dumps(r) + "\n" for r in trainer.history).encode()
    commit_files(
        run_dir,
        {name: data},
        (json.dumps(meta, indent=1) + "\n").encode(),
        {"metrics.jsonl": metrics},
        failure="cannot save in {run_dir}: {reason}; the previous checkpoint is unchanged",
    )


def open_series_run(
    run_dir: Path, config: SeriesConfig | None, epochs: int | None = None, force: bool = False
) -> SeriesTrainer:
    """The trainer of a new run in ``run_dir`` (``config`` given; an existing run there is refused
    unless ``force``) or of the run there, resumed (``config`` None) with ``epochs`` if given (never
    fewer than it has). Call with the directory's lock held."""
    if config is None:
        if not (run_dir / "config.json").is_file():
            raise RnnkitError(f"{run_dir}: not a timeseries run (no config.json)")
        trainer, _ = load_series_run(run_dir)
        if epochs is not None:
            if epochs < trainer.config.epochs:
                raise RnnkitError(f"--epochs {epochs} is below the run's {trainer.config.epochs}")
            trainer.config.epochs = epochs
        return trainer
    if (run_dir / "config.json").exists() and not force:
        raise RnnkitError(f"{run_dir} already holds a run (--resume {run_dir} to continue, --force to overwrite)")
    config.validate()
    return SeriesTrainer(config, load_series(config))


def write_series_results(run_dir: Path, trainer: SeriesTrainer) -> tuple[dict, str]:
    """Score every model at every horizon into ``results.json`` and draw ``predictions.png`` and
    ``mse.png`` (where matplotlib is there); returns the scores and what was drawn."""
    from rnnkit.files import atomic_write

    predictions = trainer.predictions()
    results = trainer.evaluate(predictions)
    atomic_write(run_dir / "results.json", (json.dumps({"mse": results}, indent=1) + "\n").encode())
    try:
        atomic_write(run_dir / "predictions.png", render_predictions(trainer, predictions))
        atomic_write(run_dir / "mse.png", render_mse(results))
        plots = "predictions.png, mse.png"
    except RnnkitError as exc:  # no matplotlib: the numbers still stand
        plots = f"no plots ({exc})"
    return results, plots


def load_series_run(run_dir: Path) -> tuple[SeriesTrainer, dict]:
    """A trainer restored from a run directory, and its ``config.json``; the series is read again
    and must be the one the run trained on."""
    from rnnkit.checkpoint import read_tensors, unpack

    path = Path(run_dir) / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RnnkitError(f"{run_dir}: not a timeseries run (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RnnkitError(f"{path}: cannot read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RnnkitError(f"{path}: not an rnnkit timeseries run")
    try:
        config = SeriesConfig.from_dict(meta["config"])
        state_file = Path(run_dir) / meta["files"]["state"]
    except (KeyError, TypeError) as exc:
        raise RnnkitError(f"{path}: incomplete ({exc})") from None
    series = load_series(config)
    if series.sha1 != meta.get("series", {}).get("sha1"):
        raise RnnkitError(
            f"{config.csv}: changed since the run started (sha1 {series.sha1}, the run read {meta['series']['sha1']})"
        )
    trainer = SeriesTrainer(config, series)
    tensors, metadata = read_tensors(state_file, meta.get("checkpoint"))
    try:
        trainer.load_state_dict(unpack(tensors, metadata["state"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RnnkitError(f"{state_file}: does not match config.json ({exc})") from None
    return trainer, meta
