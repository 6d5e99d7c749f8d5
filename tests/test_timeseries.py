"""rnnkit timeseries: §9.1's series and linear AR model, recurrent regressors, k-step prediction."""

import json
import math

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.timeseries import (
    LinearAR,
    RecurrentAR,
    SeriesConfig,
    SeriesTrainer,
    k_step_predictions,
    load_series_run,
    read_csv_series,
    synthetic_d2l,
)

QUICK = ["--hidden", "8", "--epochs", "20", "--quiet"]


def test_synthetic_series_is_the_books():
    series = synthetic_d2l(seed=3)
    t = torch.arange(1, 1001, dtype=torch.float64)
    noise = (series.values - torch.sin(0.01 * t)) / 0.2
    assert series.values.shape == (1000,) and series.values.dtype == torch.float64
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.06  # N(0, 1) noise, scaled by 0.2
    assert torch.equal(series.values, synthetic_d2l(seed=3).values)
    assert not torch.equal(series.values, synthetic_d2l(seed=4).values)


def test_linear_ar_is_the_least_squares_solution():
    x = synthetic_d2l(seed=0).values[:600]
    model = LinearAR(tau=4)
    model.fit(x)
    design = np.stack([x.numpy()[i : 600 - 4 + i] for i in range(4)] + [np.ones(596)], axis=1)
    expected, *_ = np.linalg.lstsq(design, x.numpy()[4:], rcond=None)
    assert np.allclose(model.linear.weight.detach().numpy()[0], expected[:4], atol=1e-10)
    assert model.linear.bias.item() == pytest.approx(expected[4], abs=1e-10)
    # the normal equations hold: the residual is orthogonal to every feature
    fitted = np.concatenate([model.linear.weight.detach().numpy()[0], [model.linear.bias.item()]])
    residual = x.numpy()[4:] - design @ fitted
    assert np.abs(design.T @ residual).max() < 1e-8
    for _ in range(100):  # and bit for bit the same every time (the default gelsy driver is not)
        again = LinearAR(tau=4)
        again.fit(x)
        assert torch.equal(again.linear.weight, model.linear.weight)
        assert torch.equal(again.linear.bias, model.linear.bias)


@pytest.mark.parametrize("kind", ["linear", "gru"])
def test_k_step_prediction_sees_nothing_after_t_minus_k(kind):
    torch.manual_seed(0)
    z = torch.randn(700, dtype=torch.float64)
    model = LinearAR(4) if kind == "linear" else RecurrentAR("gru", 8)
    if kind == "linear":
        model.fit(z[:600])
    k, t0 = 16, 650
    targets = torch.arange(600, 700)
    before = k_step_predictions(model, z, targets, k)
    leaked = z.clone()
    leaked[t0 - k + 1 :] = 100.0  # everything a 16-step prediction of x_t0 must not see
    after = k_step_predictions(model, leaked, targets, k)
    assert torch.equal(after[: t0 - 600 + 1], before[: t0 - 600 + 1])  # predictions of x_600..x_t0: unchanged
    assert not torch.allclose(after[t0 - 600 + 1], before[t0 - 600 + 1])  # x_{t0+1} sees x_{t0-15}: it changes
    one_step = k_step_predictions(model, z, targets, 1)
    assert not torch.allclose(one_step, before)  # feeding predictions back is not reading the data


def test_k_step_rollout_matches_a_step_by_step_loop():
    torch.manual_seed(1)
    z = torch.randn(120, dtype=torch.float64)
    model = RecurrentAR("lstm", 6, layers=2)
    t, k = 100, 5
    with torch.no_grad():
        _, state = model(z[: t - k + 1].float().view(-1, 1))
        prediction = model.head(state[0][-1]).squeeze()
        for _ in range(k - 1):
            out, state = model(prediction.view(1, 1), state)
            prediction = out[0, 0]
    batched = k_step_predictions(model, z, torch.tensor([t, t + 3]), k)
    assert float(batched[0]) == pytest.approx(float(prediction), abs=1e-6)


def test_an_rnn_learns_a_noiseless_sine():
    t = torch.arange(500, dtype=torch.float64)
    series = synthetic_d2l(0)
    series.values = torch.sin(0.1 * t)
    config = SeriesConfig(models=("rnn",), hidden=16, epochs=150, lr=0.02, ks=(1, 4))
    trainer = SeriesTrainer(config, series)
    trainer.fit()
    mse = trainer.evaluate()["rnn"]
    assert mse["1"] < 1e-3, mse


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_missing_values_are_interpolated_ordered_and_said(tmp_path):
    path = write(
        tmp_path,
        "s.csv",
        "# from somewhere\nwhen,value\n2001-01-03,3\n2001-01-01,\n2001-01-02,2\n"
        "2001-01-04,NA\n2001-01-05,5\n2001-01-06,\n",
    )
    series = read_csv_series(path, "value", "when")
    assert series.values.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert any("time order" in n for n in series.notes)
    assert any("1 missing values inside" in n for n in series.notes)
    assert any("2 missing values at the ends" in n for n in series.notes)
    dropped = read_csv_series(path, "value", missing="drop")
    assert dropped.values.tolist() == [3.0, 2.0, 5.0]
    with pytest.raises(RnnkitError, match="3 missing values"):
        read_csv_series(path, "value", missing="error")


CSV_ERRORS = [
    ("missing file", None, ["--column", "v"], "no such file"),
    ("non-numeric", "v\n1\n2\nabc\n", ["--column", "v"], "not numeric"),
    ("no such column", "v\n1\n", ["--column", "w"], "no column 'w'"),
    ("infinite", "v\n1\ninf\n", ["--column", "v"], "holds 'inf'"),
    ("too short", "v\n" + "".join(f"{i}\n" for i in range(50)), ["--column", "v"], "too short"),
    ("repeated times", "t,v\n1,1\n1,2\n", ["--column", "v", "--time-column", "t"], "repeated times"),
    ("bad time", "t,v\nsoon,1\n", ["--column", "v", "--time-column", "t"], "cannot read time"),
    ("no column given", "v\n1\n", [], "--csv needs --column"),
    ("empty", "", ["--column", "v"], "empty"),
    ("gaps refused", "v\n1\n\n3\n", ["--column", "v", "--missing", "error"], "missing values"),
    ("NaN refused", "v\n1\nNaN\n3\n", ["--column", "v", "--missing", "error"], "1 missing values"),
    ("all NaN", "v\nnan\nNaN\n", ["--column", "v"], "has no values"),
]


@pytest.mark.parametrize("case,text,options,words", CSV_ERRORS, ids=[c[0] for c in CSV_ERRORS])
def test_csv_problems_are_one_line_and_exit_2(tmp_path, capsys, case, text, options, words):
    path = str(tmp_path / "missing.csv") if text is None else write(tmp_path, "s.csv", text)
    status = main(["timeseries", "--csv", path, *options, *QUICK, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and words in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "options,words",
    [
        (["--tau", "0"], "--tau"),
        (["--train", "1.5"], "--train"),
        (["--lr", "nan"], "--lr"),
        (["--ks", "0"], "--ks"),
        (["--column", "x"], "--column needs --csv"),
    ],
)
def test_bad_settings_are_refused(tmp_path, capsys, options, words):
    assert main(["timeseries", *options, *QUICK, "--out", str(tmp_path / "run")]) == 2
    assert words in capsys.readouterr().err


def test_command_writes_results_plots_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["timeseries", "--models", "linear", "rnn", *QUICK, "--json", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    mse = json.loads(last)["mse"]
    assert set(mse) == {"linear", "rnn"} and set(mse["linear"]) == {"1", "4", "16", "64"}
    assert all(math.isfinite(v) and v > 0 for by_k in mse.values() for v in by_k.values())
    assert mse["linear"]["1"] < mse["linear"]["64"]  # the book's point: errors grow with the horizon
    assert json.loads((out / "results.json").read_text())["mse"] == mse
    for name in ("predictions.png", "mse.png", "config.json", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0
    state = json.loads((out / "config.json").read_text())["files"]["state"]
    assert [p.name for p in out.glob("state-*")] == [state]  # each save removed the one before
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["model"] == "linear" and rows[-1] == {**rows[-1], "model": "rnn", "epoch": 20}
    assert main(["timeseries", *QUICK, "--out", str(out)]) == 2  # an existing run is not overwritten
    assert "--force" in capsys.readouterr().err


def test_a_save_that_cannot_be_written_is_one_error(tmp_path):
    from rnnkit.timeseries import save_series_run

    (tmp_path / "afile").write_text("x")
    trainer = SeriesTrainer(SeriesConfig(models=("linear",), ks=(1,)), synthetic_d2l())
    with pytest.raises(RnnkitError, match=r"^cannot save in .*afile/run: .*; the previous checkpoint is unchanged$"):
        save_series_run(tmp_path / "afile" / "run", trainer)


def weights(run_dir):
    trainer, _ = load_series_run(run_dir)
    return {name: {k: v.clone() for k, v in model.state_dict().items()} for name, model in trainer.models.items()}


def test_resume_and_interrupt_end_equal_to_one_run(tmp_path, capsys, monkeypatch):
    import rnnkit.timeseries.training

    monkeypatch.setattr(rnnkit.timeseries.training, "SAVE_EVERY", 5)  # saves within a model's 12 epochs
    options = ["--models", "linear", "gru", "lstm", "--hidden", "6", "--quiet", "--json"]
    assert main(["timeseries", *options, "--epochs", "12", "--out", str(tmp_path / "straight")]) == 0
    straight = capsys.readouterr().out.splitlines()[-1]
    assert main(["timeseries", *options, "--epochs", "6", "--out", str(tmp_path / "resumed")]) == 0
    capsys.readouterr()
    assert main(["timeseries", "--resume", str(tmp_path / "resumed"), "--epochs", "12", "--json", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == straight
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])

    import rnnkit.timeseries as timeseries

    real_save, saves = timeseries.save_series_run, []

    def interrupted_save(run_dir, trainer):  # Ctrl-C right after the second save: the GRU's epoch 5
        real_save(run_dir, trainer)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(timeseries, "save_series_run", interrupted_save)
    assert main(["timeseries", *options, "--epochs", "12", "--out", str(tmp_path / "cut")]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(timeseries, "save_series_run", real_save)
    assert main(["timeseries", "--resume", str(tmp_path / "cut"), "--json", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == straight


def test_resume_refuses_a_changed_csv(tmp_path, capsys):
    path = write(tmp_path, "s.csv", "v\n" + "".join(f"{math.sin(i / 5):.4f}\n" for i in range(200)))
    out = str(tmp_path / "run")
    assert (
        main(
            ["timeseries", "--csv", path, "--column", "v", "--models", "linear", "--ks", "1", "4", *QUICK, "--out", out]
        )
        == 0
    )
    with open(path, "a") as f:
        f.write("0.5\n")
    assert main(["timeseries", "--resume", out]) == 2
    assert "changed since the run started" in capsys.readouterr().err


def test_the_package_exports_every_public_name_of_its_modules():
    """``from rnnkit.timeseries import X`` is the interface (cli.py, the tests): every public class,
    function and constant of the package's modules is there, as the module's own object."""
    import importlib
    import inspect

    import rnnkit.timeseries as timeseries

    public = {}
    for part in ("series", "config", "models", "training", "runs", "plots"):
        module = importlib.import_module(f"rnnkit.timeseries.{part}")
        for name, value in vars(module).items():
            defined_here = (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__
            if (defined_here and not name.startswith("_")) or (name.isupper() and name != "TYPE_CHECKING"):
                public[name] = value
    assert sorted(timeseries.__all__) == sorted(public)
    for name, value in public.items():
        assert getattr(timeseries, name) is value, name


def test_a_short_row_in_a_time_ordered_csv_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "short.csv", "value,date\n1,2003-09-19\n2\n")
    status = main(
        ["timeseries", "--csv", str(path), "--column", "value", "--time-column", "date", "--out", str(tmp_path / "run")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "line 3: cannot read time None" in err[0]
