"""Autoregressive time series: §9.1's setting, and §9.6's exercise "implement the autoregressive
model of :numref:`sec_sequence` using an RNN".

§9.1 generates ``x_t = sin(0.01 t) + N(0, 0.2^2)`` for t = 1..1000, regresses each value on the
previous tau = 4 with a linear model trained on the first 600, and shows that 1-step-ahead
predictions are good while k-step-ahead ones (predictions fed back in) decay quickly. Here the
linear AR(tau) model is fitted exactly (least squares, which the book's SGD approximates), and
RNN/GRU/LSTM regressors read one value per step and predict the next, their state carried along
the whole series. Every model is scored on the held-out part (everything after the training
part) by the mean squared error of its k-step-ahead predictions: the prediction of ``x_t`` from
the observations up to ``x_{t-k}`` and the model's own predictions after them.

Values are standardised with the training part's mean and standard deviation for the recurrent
models; errors are reported in the series' own units.

One module per part: :mod:`.series` (the synthetic series and CSV files), :mod:`.config` (the
knobs and the training split), :mod:`.models` (linear and recurrent regressors, k-step
prediction), :mod:`.training` (:class:`SeriesTrainer`), :mod:`.runs` (run directories) and
:mod:`.plots`. Everything public is re-exported here: import from ``rnnkit.timeseries``.
"""

from rnnkit.timeseries.config import KS, SERIES_MODELS, SeriesConfig, load_series, split_point
from rnnkit.timeseries.models import (
    LinearAR,
    RecurrentAR,
    build_models,
    gather_states,
    k_step_predictions,
    observed_states,
    state_output,
)
from rnnkit.timeseries.plots import render_mse, render_predictions
from rnnkit.timeseries.runs import (
    FORMAT,
    FORMAT_VERSION,
    load_series_run,
    open_series_run,
    save_series_run,
    write_series_results,
)
from rnnkit.timeseries.series import (
    D2L_FREQUENCY,
    D2L_NOISE,
    D2L_STEPS,
    D2L_TRAIN,
    MISSING,
    NA,
    Series,
    read_csv_series,
    synthetic_d2l,
)
from rnnkit.timeseries.training import SAVE_EVERY, SeriesTrainer, Standardise

__all__ = [
    "D2L_FREQUENCY",
    "D2L_NOISE",
    "D2L_STEPS",
    "D2L_TRAIN",
    "FORMAT",
    "FORMAT_VERSION",
    "KS",
    "MISSING",
    "NA",
    "SAVE_EVERY",
    "SERIES_MODELS",
    "LinearAR",
    "RecurrentAR",
    "Series",
    "SeriesConfig",
    "SeriesTrainer",
    "Standardise",
    "build_models",
    "gather_states",
    "k_step_predictions",
    "load_series",
    "load_series_run",
    "observed_states",
    "open_series_run",
    "read_csv_series",
    "render_mse",
    "render_predictions",
    "save_series_run",
    "split_point",
    "state_output",
    "synthetic_d2l",
    "write_series_results",
]
