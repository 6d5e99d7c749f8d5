"""Training and scoring: :class:`SeriesTrainer` fits every model of a :class:`SeriesConfig` on the
training part of a series and scores its k-step-ahead predictions of the held-out part.

Values are standardised with the training part's mean and standard deviation for the recurrent
models; errors are reported in the series' own units."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.timeseries.config import SeriesConfig, split_point
from rnnkit.timeseries.models import build_models, k_step_predictions, observed_states
from rnnkit.timeseries.series import Series

SAVE_EVERY = 50  # epochs between checkpoints within a model's training


@dataclass
class Standardise:
    """``z = (x - mean) / std`` with the training part's statistics."""

    mean: float
    std: float

    @classmethod
    def of(cls, x: torch.Tensor) -> Standardise:
        std = float(x.std())
        return cls(float(x.mean()), std if std > 0 else 1.0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeriesTrainer:
    """Fits the linear model, trains the recurrent ones (backpropagation through the whole
    standardised training part, Adam, gradient clipping), and evaluates every model at every
    horizon, carrying their state along the whole series.

    ``state_dict()``/``load_state_dict()`` carry everything a resume needs; ``on_save`` is called
    every :data:`SAVE_EVERY` epochs and after each model."""

    def __init__(self, config: SeriesConfig, series: Series) -> None:
        config.validate()
        self.config, self.series = config, series
        self.num_train = split_point(config, len(series.values))
        self.scale = Standardise.of(series.values[: self.num_train])
        self.z = self.scale(series.values)
        self.models = build_models(config)
        self.optimizers = {
            name: torch.optim.Adam(model.parameters(), lr=config.lr)
            for name, model in self.models.items()
            if name != "linear"
        }
        self.done: dict[str, int] = {name: 0 for name in self.models}  # epochs done (linear: 1 once fitted)
        self.history: list[dict] = []
        self.on_save: Callable[[], None] | None = None

    def fit(self) -> None:
        z_train = self.z[: self.num_train]
        for name, model in self.models.items():
            if name == "linear":
                if not self.done[name]:
                    model.fit(z_train)
                    self.done[name] = 1
                    with torch.no_grad():
                        windows, targets = model.pairs(z_train)
                        mse = float(((model(windows) - targets) ** 2).mean())
                    self.history.append({"model": name, "epoch": 1, "train_mse": mse * self.scale.std**2})
                    self._save()
                continue
            # the whole training part as one sequence: the state is carried along it in training
            # as in evaluation (trained on short windows from a fresh state, a GRU's state drifted
            # over the 1000-step series: held-out 1-step MSE 0.28 instead of 0.06)
            inputs, targets = z_train[:-1].float().unsqueeze(1), z_train[1:].float().unsqueeze(1)
            optimizer = self.optimizers[name]
            while self.done[name] < self.config.epochs:
                prediction, _ = model(inputs)
                loss = ((prediction - targets) ** 2).mean()
                if not torch.isfinite(loss):
                    raise RnnkitError(
                        f"{name}: the training loss is {loss.item()} at epoch {self.done[name] + 1} "
                        "(try a lower --lr or --clip 1)"
                    )
                optimizer.zero_grad()
                loss.backward()
                if self.config.clip:
                    nn.utils.clip_grad_norm_(model.parameters(), self.config.clip)
                optimizer.step()
                self.done[name] += 1
                epoch = self.done[name]
                if epoch % 10 == 0 or epoch == self.config.epochs:
                    self.history.append({"model": name, "epoch": epoch, "train_mse": loss.item() * self.scale.std**2})
                if epoch % SAVE_EVERY == 0 or epoch == self.config.epochs:
                    self._save()

    def _save(self) -> None:
        if self.on_save is not None:
            self.on_save()

    def predictions(self) -> dict[str, dict[int, torch.Tensor]]:
        """Per model and horizon k, the k-step-ahead predictions of every held-out value (in the
        series' units)."""
        targets = torch.arange(self.num_train, len(self.z))
        out = {}
        for name, model in self.models.items():
            model.eval()
            states = None if name == "linear" else observed_states(model, self.z, len(self.z))
            out[name] = {
                k: k_step_predictions(model, self.z, targets, k, states) * self.scale.std + self.scale.mean
                for k in self.config.ks
            }
        return out

    def evaluate(self, predictions: dict | None = None) -> dict[str, dict[str, float]]:
        """MSE (in the series' units) of the k-step-ahead predictions of every held-out value."""
        predictions = predictions or self.predictions()
        held = self.series.values[self.num_train :]
        return {
            name: {str(k): float(((p - held) ** 2).mean()) for k, p in by_k.items()}
            for name, by_k in predictions.items()
        }

    def state_dict(self) -> dict:
        return {
            "models": {name: model.state_dict() for name, model in self.models.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "done": dict(self.done),
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.done = {name: int(state["done"][name]) for name in self.models}
        self.history = list(state["history"])
