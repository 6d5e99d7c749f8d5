"""The regressors: §9.1's linear AR(tau) model, fitted exactly, and recurrent ones that read one
value per step; and their k-step-ahead predictions, in which a model's own predictions stand in
for the k - 1 values it has not observed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from rnnkit.errors import RnnkitError

if TYPE_CHECKING:
    from rnnkit.timeseries.config import SeriesConfig


class LinearAR(nn.Module):
    """§9.1's linear model: ``x_t = w . (x_{t-tau}, ..., x_{t-1}) + b``."""

    def __init__(self, tau: int) -> None:
        super().__init__()
        self.tau = tau
        self.linear = nn.Linear(tau, 1, dtype=torch.float64)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Predictions (N,) from windows (N, tau), oldest value first."""
        return self.linear(windows).squeeze(-1)

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window of ``x`` (N, tau) and the value that follows each (N,)."""
        return x.unfold(0, self.tau, 1)[:-1], x[self.tau :]

    def fit(self, x: torch.Tensor) -> None:
        """Least squares on every window of ``x`` (the training part): the minimum of the squared
        error that the book's SGD approaches."""
        windows, targets = self.pairs(x)
        design = torch.cat([windows, torch.ones(len(windows), 1, dtype=x.dtype)], dim=1)
        # gelsd (SVD), not the default gelsy: on the CPU gelsy's result depends on the memory it is
        # given (about 1 call in 25 differed in the last bits here; pytorch/pytorch#71222, #187411)
        solution = torch.linalg.lstsq(design, targets.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        with torch.no_grad():
            self.linear.weight.copy_(solution[:-1].unsqueeze(0))
            self.linear.bias.copy_(solution[-1:])


class RecurrentAR(nn.Module):
    """One value per step in, the next value out: ``nn.RNN``/``GRU``/``LSTM`` and a linear head."""

    def __init__(self, kind: str, hidden: int, layers: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](1, hidden, layers)
        self.head = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor, state=None):
        """Predictions (T, B) of the next value after each value of ``z`` (T, B), and the state."""
        outputs, state = self.rnn(z.unsqueeze(-1), state)
        return self.head(outputs).squeeze(-1), state


def build_models(config: SeriesConfig) -> dict[str, nn.Module]:
    """The models of ``config``, initialised from its seed (each from its own position in it)."""
    models = {}
    for index, name in enumerate(config.models):
        torch.manual_seed(config.seed * 1000 + index)
        models[name] = LinearAR(config.tau) if name == "linear" else RecurrentAR(name, config.hidden, config.layers)
    return models


def k_step_predictions(
    model: nn.Module, z: torch.Tensor, targets: torch.Tensor, k: int, states: list | None = None
) -> torch.Tensor:
    """The prediction of ``z[t]`` for each ``t`` of ``targets`` from ``z[:t-k+1]`` (what was
    observed up to ``t - k``) and the model's own predictions after that (k - 1 of them fed back).
    ``z``: the series (T,) on the model's scale; returns (len(targets),). ``states``: a recurrent
    model's :func:`observed_states` of ``z``, if already computed."""
    starts = targets - k  # the last observed index of each prediction
    if int(starts.min()) < 0:
        raise RnnkitError(f"a {k}-step prediction of index {int(targets.min())} needs earlier values")
    with torch.no_grad():
        if isinstance(model, LinearAR):
            if int(starts.min()) < model.tau - 1:
                raise RnnkitError(f"a {k}-step prediction needs {model.tau} observed values before it")
            offsets = torch.arange(-model.tau + 1, 1)
            window = z[starts.unsqueeze(1) + offsets]  # (N, tau) observed
            for _ in range(k):
                prediction = model(window)
                window = torch.cat([window[:, 1:], prediction.unsqueeze(1)], dim=1)
            return prediction
        if states is None or len(states) <= int(starts.max()):
            states = observed_states(model, z, int(starts.max()) + 1)
        state = gather_states(states, starts)
        prediction = model.head(state_output(state)).squeeze(-1)
        for _ in range(k - 1):
            prediction, state = model(prediction.unsqueeze(0).float(), state)
            prediction = prediction[0]
        return prediction.double()


def observed_states(model: RecurrentAR, z: torch.Tensor, length: int) -> list:
    """The state after reading ``z[0..s]``, for s < length (one pass, one step at a time)."""
    states, state = [], None
    inputs = z[:length].float().view(-1, 1, 1)
    for x in inputs:
        _, state = model.rnn(x.unsqueeze(0), state)
        states.append(state)
    return states


def gather_states(states: list, indices: torch.Tensor):
    """The states at ``indices`` stacked along the batch dimension (dimension 1)."""
    chosen = [states[i] for i in indices.tolist()]
    if isinstance(chosen[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*chosen, strict=True))
    return torch.cat(chosen, dim=1)


def state_output(state) -> torch.Tensor:
    """The last layer's hidden state (B, H): what the head reads."""
    return (state[0] if isinstance(state, tuple) else state)[-1]
