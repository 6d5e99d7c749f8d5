"""The figures of a finished run: the book's plot of k-step-ahead predictions for every model, and
held-out MSE against the horizon. Drawn with matplotlib through :func:`rnnkit.plot.new_figure`, which
refuses (:class:`~rnnkit.errors.RnnkitError`) where it is not installed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rnnkit.timeseries.training import SeriesTrainer


def render_predictions(trainer: SeriesTrainer, predictions: dict) -> bytes:
    """PNG: the series with each model's k-step-ahead predictions of the held-out part, one panel
    per model (the book's figure, for every model)."""
    from rnnkit.plot import new_figure, png_bytes

    names = list(predictions)
    fig = new_figure(figsize=(9, 2.3 * len(names)), dpi=100)
    axes = fig.subplots(len(names), 1, squeeze=False)
    values = trainer.series.values
    start = max(0, trainer.num_train - 100)
    time = torch.arange(len(values))
    for ax, name in zip(axes[:, 0], names, strict=True):
        ax.plot(time[start:], values[start:], color="0.6", linewidth=1, label="series")
        for i, (k, p) in enumerate(predictions[name].items()):
            ax.plot(time[trainer.num_train :], p, color=f"C{i}", linewidth=1, label=f"{k}-step")
        ax.axvline(trainer.num_train - 0.5, color="0.3", linestyle=":", linewidth=1)
        ax.set(title=f"{name}: k-step-ahead predictions of the held-out part", xlim=(start, len(values)))
        ax.legend(fontsize=7, ncol=len(predictions[name]) + 1, loc="upper left")
    return png_bytes(fig)


def render_mse(results: dict[str, dict[str, float]]) -> bytes:
    """PNG: held-out MSE against the horizon k, one line per model (log scales)."""
    from rnnkit.plot import new_figure, png_bytes

    fig = new_figure(figsize=(6, 3.6), dpi=100)
    ax = fig.subplots()
    for name, by_k in results.items():
        ks = [int(k) for k in by_k]
        ax.plot(ks, list(by_k.values()), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="k (steps ahead)", ylabel="MSE", title="held-out MSE by horizon")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_bytes(fig)
