"""Training curves (``curves.png``, ``rnnkit plot``): training loss and perplexities per epoch.

Needs matplotlib (the ``plot`` extra); without it, a clear :class:`~rnnkit.errors.RnnkitError`
instead of an import crash. Figures are drawn without pyplot (:func:`new_figure`), so that rnnkit
never changes the backend of the process that uses it: plots in a notebook still show after a run
has drawn its curves.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from rnnkit.errors import RnnkitError

INSTALL_HINT = "matplotlib is not installed; install the plot extra: pip install 'rnnkit[plot]'"


def new_figure(**options):
    """A matplotlib ``Figure`` of its own (``figsize``, ``dpi``, ...), outside pyplot: nothing keeps it
    alive, and the process's backend is left as it is."""
    try:
        import matplotlib  # noqa: F401 - the package itself, whatever of it was imported before
        from matplotlib.figure import Figure
    except ImportError:
        raise RnnkitError(INSTALL_HINT) from None
    return Figure(**options)


def png_bytes(fig) -> bytes:
    """The figure, laid out, as PNG bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


METRIC_KEYS = ("epoch", "train_loss", "train_ppl")  # what every row must have to be plotted


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, each checked to be an object with numeric
    ``epoch``, ``train_loss`` and ``train_ppl`` (``val_ppl`` may be null)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise RnnkitError(f"{run_dir}: no metrics.jsonl (not a run directory, or no epoch finished yet)")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RnnkitError(f"{path}: corrupt ({exc})") from None
    except OSError as exc:
        raise RnnkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for number, row in enumerate(rows, 1):
        numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        if not (
            isinstance(row, dict)
            and all(numeric(row.get(k)) for k in METRIC_KEYS)
            and (row.get("val_ppl") is None or numeric(row["val_ppl"]))
        ):
            raise RnnkitError(
                f"{path}: line {number} is not a metrics row (an object with numeric "
                f"{', '.join(METRIC_KEYS)}): {json.dumps(row)[:80]}"
            )
    return rows


def render_curves(runs: list[tuple[str, list[dict]]]) -> bytes:
    """PNG bytes: training loss (left) and training/validation perplexity (right) against epoch."""
    fig = new_figure(figsize=(9, 3.4), dpi=110)
    ax_loss, ax_ppl = fig.subplots(1, 2)
    for i, (label, rows) in enumerate(runs):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], color=color, label=label)
        ax_ppl.plot(
            epochs,
            [r["train_ppl"] for r in rows],
            color=color,
            linestyle="--",
            label=f"{label} train" if len(runs) > 1 else "train ppl",
        )
        val = [(e, r.get("val_ppl")) for e, r in zip(epochs, rows, strict=True)]
        val = [(e, v) for e, v in val if v is not None and math.isfinite(v)]
        if val:
            ax_ppl.plot(*zip(*val, strict=True), color=color, label=f"{label} val" if len(runs) > 1 else "val ppl")
    ax_loss.set(xlabel="epoch", ylabel="training loss (nats/char)", title="training loss")
    ax_ppl.set(xlabel="epoch", ylabel="perplexity", title="perplexity")
    for ax in (ax_loss, ax_ppl):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png_bytes(fig)


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Overlay the curves of several runs into one PNG file, written atomically."""
    from rnnkit.checkpoint import atomic_write

    runs = [(Path(d).name or str(d), read_metrics(d)) for d in run_dirs]
    out = Path(out)
    try:
        atomic_write(out, render_curves(runs))
    except OSError as exc:
        raise RnnkitError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
