"""Time budgets, learning-rate schedules, step evaluations, the best checkpoint and early stopping."""

import argparse
import json
import math
import time

import pytest
import torch

from rnnkit.checkpoint import load_run, read_config
from rnnkit.cli import duration, main
from rnnkit.errors import RnnkitError
from rnnkit.text import CORPORA, find_corpus, sha1_of
from rnnkit.train import TrainConfig, Trainer, lr_factor, make_optimizer

SMALL = dict(hidden=16, batch_size=16, num_steps=16, split="fraction", preprocess="raw", optimizer="adam", lr=3e-3)


def test_durations():
    assert [duration(t) for t in ("90", "90s", "3m", "1.5h", "0.5min", "1h30m", "2m30s", " 1h 5s ")] == [
        90,
        90,
        180,
        5400,
        30,
        5400,
        150,
        3605,
    ]
    for bad in ("", "3 minutes", "-5s", "1e3", "m", "3m3m", "1h-5m", "5s3", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(schedule="cosine", warmup=0.1, min_lr_ratio=0.1)
    points = [lr_factor(config, p) for p in (0.0, 0.05, 0.1, 0.55, 1.0)]
    assert points[0] < 0.02 and 0.4 < points[1] < 0.6 and points[2] == pytest.approx(1.0)
    assert points[3] == pytest.approx(0.1 + 0.9 * 0.5) and points[4] == pytest.approx(0.1)
    linear = TrainConfig(schedule="linear", min_lr_ratio=0.0)
    assert [lr_factor(linear, p) for p in (0, 0.25, 1)] == pytest.approx([1, 0.75, 0])
    assert lr_factor(TrainConfig(), 0.7) == 1.0  # the book's constant rate


def test_adamw_decays_matrices_only():
    from rnnkit.models import build_model

    model = build_model("lstm", 10, 8, layers=2)
    optimizer = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.1), model)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_a_time_budget_stops_on_time_with_evaluations_and_the_best_weights(tm_text):
    config = TrainConfig(**SMALL, time_budget=6.0, schedule="cosine", warmup=0.05)
    trainer = Trainer(config, text=tm_text[:60000])
    trainer.model.prepare_kernel()  # a kernel build, if one is due, is not part of the budget
    started = time.perf_counter()
    trainer.fit()
    took = time.perf_counter() - started
    assert 6.0 <= trainer.evals[-1].seconds < 6.0 + 1.0 and took < 6.0 + 3.0 and "time budget" in trainer.finished
    assert len(trainer.evals) >= 8  # about ten per budget, and one at the end
    assert [e.step for e in trainer.evals] == sorted(e.step for e in trainer.evals)
    assert trainer.evals[-1].lr < config.lr * 0.2  # the cosine ran over the budget, down to its floor
    best = min(trainer.evals, key=lambda e: e.val_loss)
    assert trainer.best.step == best.step and trainer.best.val_loss == best.val_loss
    assert trainer.evals[-1].val_loss < trainer.evals[0].val_loss  # it learned


def test_eval_every_and_patience(tm_text):
    config = TrainConfig(**SMALL, epochs=50, eval_every=5, patience=2, val_fraction=0.3)
    trainer = Trainer(config, text=tm_text[:4000])
    trainer.fit()
    steps = {e.step for e in trainer.evals}
    assert set(range(5, trainer.step + 1, 5)) <= steps  # and the epoch ends' evaluations beside them
    assert "no better validation loss in 2 evaluations" in trainer.finished and len(trainer.history) < 50
    losses = [e.val_loss for e in trainer.evals]
    assert min(losses[-2:]) >= min(losses)  # it stopped because the last two were no better


def test_best_checkpoint_is_kept_used_by_generate_and_eval_and_either_can_be_picked(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("the cat sat on the mat. " * 150)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--corpus",
                str(corpus),
                "--preprocess",
                "raw",
                "--split",
                "fraction",
                "--hidden",
                "32",
                "--batch-size",
                "8",
                "--num-steps",
                "16",
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--epochs",
                "6",
                "--eval-every",
                "10",
                "--sample-every",
                "0",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    meta = read_config(run)
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    best = min(evals, key=lambda e: e["val_loss"])
    assert meta["best"]["step"] == best["step"] and "best: val loss" in out
    best_model = load_run(run, checkpoint="best")[0]
    last_model = load_run(run)[0]
    assert (
        any(
            not torch.equal(a, b)
            for a, b in zip(best_model.state_dict().values(), last_model.state_dict().values(), strict=True)
        )
        or best["step"] == evals[-1]["step"]
    )
    assert main(["eval", str(run), "--json"]) == 0
    captured = capsys.readouterr()
    assert "using the best checkpoint" in captured.err
    assert main(["eval", str(run), "--json", "--checkpoint", "last"]) == 0
    assert "using the last checkpoint" in capsys.readouterr().err
    assert main(["generate", str(run), "--prefix", "the ", "-n", "5", "--seed", "0"]) == 0
    assert "using the best checkpoint" in capsys.readouterr().err


def test_a_finished_budget_run_is_not_resumed(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("the cat sat on the mat. " * 200)
    run = tmp_path / "run"
    args = [
        "train",
        "--corpus",
        str(corpus),
        "--preprocess",
        "raw",
        "--split",
        "fraction",
        "--hidden",
        "16",
        "--batch-size",
        "8",
        "--num-steps",
        "16",
        "--time-budget",
        "5s",
        "--sample-every",
        "0",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(args) == 0
    assert "time budget of 5 s spent" in read_config(run)["finished"]
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished (time budget" in capsys.readouterr().out


@pytest.mark.parametrize("budget, message", [("0", "positive duration"), ("0.5s", "too short")])
def test_bad_budgets(tmp_path, capsys, budget, message):
    status = main(["train", "--time-budget", budget, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err


def test_a_budget_that_is_not_a_duration_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--time-budget", "soon"])
    assert exit_info.value.code == 2 and "not a duration" in capsys.readouterr().err


def test_tiny_shakespeare_is_a_pinned_built_in_corpus():
    entry = CORPORA["tinyshakespeare"]
    assert entry.sha1 == "04486597058d11dcc2c556b1d0433891eb639d2e" and entry.url.endswith("input.txt")
    path = find_corpus("tinyshakespeare", download=False)
    assert sha1_of(path) == entry.sha1 and path.stat().st_size == 1_115_394


def test_schedules_are_deterministic_and_resume_exactly(tm_text):
    config = TrainConfig(**SMALL, epochs=4, schedule="cosine", warmup=0.1, eval_every=7)
    a = Trainer(config, text=tm_text[:20000])
    a.fit()
    b = Trainer(TrainConfig(**SMALL, epochs=4, schedule="cosine", warmup=0.1, eval_every=7), text=tm_text[:20000])

    def interrupt(stats):
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.fit(interrupt)
    c = Trainer(TrainConfig(**SMALL, epochs=4, schedule="cosine", warmup=0.1, eval_every=7), text=tm_text[:20000])
    c.load_state_dict(b.snapshot)
    c.fit()
    for x, y in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert math.isclose(a.evals[-1].val_loss, c.evals[-1].val_loss)


def test_time_budget_config_is_checked():
    with pytest.raises(RnnkitError, match="time_budget"):
        TrainConfig(time_budget=-1.0).validate()
    with pytest.raises(RnnkitError, match="warmup"):
        TrainConfig(warmup=1.0).validate()


SPEEDS = {128: 60_000, 256: 40_000, 384: 25_000, 512: 15_000, 768: 8_000, 1024: 4_000}  # a CPU's tokens/s by width


@pytest.fixture
def no_measuring(monkeypatch):
    """The sizing module, with measuring this machine's speed made an error: a test that passes
    ``speeds`` must not depend on how fast (or busy) the machine is."""
    import rnnkit.sizing as sizing

    def measure(*args, **kwargs):
        raise AssertionError("choose_config measured this machine although speeds were given")

    monkeypatch.setattr(sizing, "measure_tokens_per_second", measure)
    return sizing


def test_sizing_picks_the_widest_model_the_budget_can_train(no_measuring):
    sizing = no_measuring
    from rnnkit.sizing import trained_weights

    config, report = sizing.choose_config(TrainConfig(), 1_000_000, 65, budget_s=480, speeds=SPEEDS)
    # 512 wide: 15k tok/s x 480 s = 7.2M tokens >= 8 x 1.09M weights? no; 384: 25k x 480 = 12M >= 8 x 0.62M: yes
    need = sizing.TOKENS_PER_PARAMETER
    assert trained_weights(65, 512) * need > 15_000 * 480 and 25_000 * 480 >= trained_weights(65, 384) * need
    assert config.hidden == 384
    assert config.model == "lstm" and config.optimizer == "adamw" and config.schedule == "cosine"
    assert report["tokens_per_s"][512] == 15_000 and 768 not in report["tokens_per_s"]
    big, _ = sizing.choose_config(TrainConfig(), 2_000_000, 65, budget_s=36000, speeds=SPEEDS)
    assert big.hidden == 1024
    small, _ = sizing.choose_config(TrainConfig(), 60_000, 65, budget_s=3600, speeds=SPEEDS)  # a small text caps it
    assert trained_weights(65, small.hidden) <= 4 * 60_000 < trained_weights(65, small.hidden * 2)
    with pytest.raises(RnnkitError, match="sizing a model needs at least"):
        sizing.choose_config(TrainConfig(), 500, 20, budget_s=60, speeds=SPEEDS)


@pytest.mark.parametrize(
    "train_tokens, vocab_size, budget_s, hidden, weight_drop, dropout_and_ema",
    [
        (1_000_000, 65, 480, 384, True, False),  # 0.62 weights per character, 12 passes: DropConnect alone
        (1_000_000, 65, 100, 256, False, False),  # 0.28 weights per character: nothing
        (50_000, 65, 60, 128, True, True),  # capped at 128 by the text, 72 passes: all three
        (98_000, 165, 4, 128, False, False),  # 0.89 weights per character but 2.4 passes: nothing
    ],
)
def test_sizing_chooses_from_given_speeds_without_measuring(
    no_measuring, train_tokens, vocab_size, budget_s, hidden, weight_drop, dropout_and_ema
):
    sizing = no_measuring
    config, report = sizing.choose_config(TrainConfig(), train_tokens, vocab_size, budget_s, speeds=SPEEDS)
    assert config.hidden == report["hidden"] == hidden
    assert config.weight_drop == (sizing.WEIGHT_DROP if weight_drop else 0.0)
    assert (config.io_dropout, config.ema) == ((sizing.IO_DROPOUT, sizing.EMA) if dropout_and_ema else (0.0, 0.0))
    assert report["speeds"] == "given" and report["measuring_s"] == 0
    assert report["tokens_per_s"] == {w: SPEEDS[w] for w in report["tokens_per_s"]} and hidden in report["tokens_per_s"]


def test_given_speeds_follow_the_measured_rule_and_are_checked(monkeypatch):
    import rnnkit.sizing as sizing

    monkeypatch.setattr(sizing, "measure_tokens_per_second", lambda width, *a, **k: SPEEDS[width])
    for case in ((1_000_000, 65, 480), (160_000, 65, 100), (60_000, 1400, 100), (98_000, 165, 45)):
        measured = sizing.choose_config(TrainConfig(), *case)
        given = sizing.choose_config(TrainConfig(), *case, speeds=SPEEDS)
        assert given[0] == measured[0], case
        assert measured[1]["speeds"] == "measured"
        assert {**given[1], "speeds": "measured", "measuring_s": measured[1]["measuring_s"]} == measured[1]
    # the given widths are the candidates: none wider, and any width
    assert sizing.choose_config(TrainConfig(), 2_000_000, 65, 36000, speeds={128: 1e6, 256: 1e6})[0].hidden == 256
    assert sizing.choose_config(TrainConfig(), 2_000_000, 65, 36000, speeds={64: 1e6, 96: 1e6})[0].hidden == 96
    for bad in ({}, {128: 0}, {128: float("nan")}, {0: 1000}, {"128": 1000}, {128: True}):
        with pytest.raises(RnnkitError, match="speeds must"):
            sizing.choose_config(TrainConfig(), 100_000, 65, 60, speeds=bad)


def test_sizing_measures_on_the_device_the_run_trains_on(monkeypatch):
    import rnnkit.sizing as sizing

    seen = []
    monkeypatch.setattr(
        sizing, "measure_tokens_per_second", lambda width, *a, device, **k: seen.append(device) or 60_000
    )
    config, report = sizing.choose_config(TrainConfig(device="cpu"), 100_000, 65, budget_s=60)
    assert seen and all(device == torch.device("cpu") for device in seen) and report["device"] == "cpu"
    with pytest.raises(RnnkitError, match="unknown device"):
        sizing.choose_config(TrainConfig(device="tpu"), 100_000, 65, budget_s=60)
    speed = sizing.measure_tokens_per_second(32, 20, 4, 8, steps=1, device="cpu")  # a real measurement
    assert 0 < speed < float("inf")


def test_sizing_does_not_count_the_devices_start_against_its_cap(monkeypatch):
    import types

    import rnnkit.sizing as sizing

    clock = [0.0]
    costs = iter([6.7, 0.1, 0.1, 0.1, 0.1, 0.1])  # the first measurement starts CUDA (seen on an H200: 6.7 s)

    def measure(width, *args, **kwargs):
        clock[0] += next(costs)
        return 500_000  # a GPU: every width as fast

    monkeypatch.setattr(sizing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(sizing, "measure_tokens_per_second", measure)
    config, report = sizing.choose_config(TrainConfig(), 1_000_000, 65, budget_s=60)  # cap: 3 s
    assert len(report["tokens_per_s"]) > 1 and config.hidden > sizing.WIDTHS[0]
    assert report["measuring_s"] == round(clock[0], 2)  # all of it still comes out of the budget


def test_zero_configuration_budget_run_sizes_itself(tmp_path, capsys, fixed_clock):
    """The sizing's speeds and the trainer's clock are fixed (conftest's ``fixed_clock``): the test
    passes or fails by the rule, not by how busy the machine is."""
    corpus = tmp_path / "own.txt"
    corpus.write_text("It was a bright cold day in April, and the clocks were striking thirteen.\n" * 60)
    run = tmp_path / "run"
    fixed_clock()
    assert (
        main(["train", "--corpus", str(corpus), "--time-budget", "8s", "--sample-every", "0", "--out", str(run)]) == 0
    )
    out = capsys.readouterr().out
    meta = read_config(run)
    config = meta["config"]
    assert "sized for 8 s" in out and "measured tokens/s by width" in out
    assert config["model"] == "lstm" and config["preprocess"] == "raw" and config["split"] == "sequential"
    assert config["time_budget"] == 8.0 and meta["finished"] == "time budget of 8 s spent"
    assert config["hidden"] == 128 and config["batch_size"] == 8  # 1x256 would need 8 s x 12,000 tok/s > 8/weight


def test_a_budget_too_short_is_refused_before_a_run_directory_stays(tmp_path, capsys):
    corpus = tmp_path / "own.txt"
    corpus.write_text("It was a bright cold day in April, and the clocks were striking thirteen.\n" * 60)
    status = main(["train", "--corpus", str(corpus), "--time-budget", "4s", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "a time budget of 4 s is too short" in err[0]
    minimum = int(err[0].rsplit("give at least ", 1)[1].split()[0])
    assert "went to sizing the model" in err[0] and minimum >= 6  # 5 s of training after the sizing's seconds
    assert not (tmp_path / "run").exists()
    status = main(
        [
            "train",
            "--corpus",
            str(corpus),
            "--hidden",
            "16",
            "--batch-size",
            "8",
            "--time-budget",
            "4s",
            "--out",
            str(tmp_path / "run"),
        ]
    )  # explicit sizes: nothing measured first
    err = capsys.readouterr().err
    assert status == 2 and "sizing" not in err and "give at least 5 s" in err and not (tmp_path / "run").exists()


def test_io_dropout_acts_in_training_only_and_keeps_the_kernel_out(tm_text):
    from rnnkit.models import build_model, choose_path

    torch.manual_seed(0)
    model = build_model("rnn", 28, 16)
    model.io_dropout = 0.5
    X = torch.randint(0, 28, (4, 10))
    model.train()
    assert choose_path(model, X).name != "kernel"  # the fused kernel has no dropout
    a, _ = model.hidden(X)
    assert (a == 0).float().mean() > 0.3  # about half the outputs dropped
    model.eval()
    b, _ = model.hidden(X)
    c, _ = model.hidden(X)
    assert torch.equal(b, c) and (b != 0).all()  # no dropout when evaluating
    config = TrainConfig(**SMALL, epochs=2, io_dropout=0.3)
    assert not config.graphs_possible()
    trainer = Trainer(config, text=tm_text[:8000])
    assert trainer.model.io_dropout == 0.3
    history = trainer.fit()
    assert history[-1].train_loss < history[0].train_loss  # it still learns
    with pytest.raises(RnnkitError, match="io_dropout"):
        TrainConfig(io_dropout=1.0).validate()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_weight_drop_is_dropconnect_on_the_recurrent_weights_in_training_only(kind):
    """The layer's output equals the same layer with its hidden-to-hidden weights multiplied by
    an independently drawn dropout mask (one mask for the call), and nothing is dropped in eval."""
    import copy

    from rnnkit.models import build_model, choose_path

    torch.manual_seed(0)
    model = build_model(kind, 12, 16, layers=2 if kind == "lstm" else 1)
    model.weight_drop = 0.5
    X = torch.randint(0, 12, (3, 7))
    model.train()
    assert choose_path(model, X).name != "kernel"  # the fused kernel has no weight drop
    torch.manual_seed(1)
    dropped, _ = model.hidden(X)
    torch.manual_seed(1)
    masked = copy.deepcopy(model)
    masked.weight_drop = 0.0
    rnn = masked.rnn.rnn
    names = [n for n in rnn._flat_weights_names if n.startswith("weight_hh")]
    masks = {}
    for name in names:  # the masks in the order the layer draws them
        masks[name] = torch.nn.functional.dropout(torch.ones_like(getattr(rnn, name)), 0.5)
    assert 0.3 < float((masks[names[0]] == 0).float().mean()) < 0.7
    with torch.no_grad():
        for name in names:
            getattr(rnn, name).mul_(masks[name])
    expected, _ = masked.hidden(X)
    torch.testing.assert_close(dropped, expected)
    loss = dropped.square().sum()
    loss.backward()
    grad = model.rnn.rnn.weight_hh_l0.grad
    assert (grad[masks[names[0]] == 0] == 0).all() and grad.abs().sum() > 0  # dropped weights learn nothing this step
    model.eval()
    plain = copy.deepcopy(model)
    plain.weight_drop = 0.0
    torch.testing.assert_close(model.hidden(X)[0], plain.hidden(X)[0], rtol=0, atol=0)


def test_weight_drop_trains_and_is_checked(tm_text, tmp_path):
    config = TrainConfig(**{**SMALL, "model": "lstm"}, epochs=2, weight_drop=0.3)
    assert not config.graphs_possible()
    trainer = Trainer(config, text=tm_text[:8000])
    assert trainer.model.weight_drop == 0.3
    history = trainer.fit()
    assert history[-1].train_loss < history[0].train_loss
    for bad, message in (
        (dict(weight_drop=1.0), "weight_drop must be in"),
        (dict(weight_drop=-0.1), "weight_drop"),
        (dict(weight_drop=0.2, model="scratch"), "not scratch"),
    ):
        with pytest.raises(RnnkitError, match=message):
            TrainConfig(**bad).validate()
    corpus = tmp_path / "t.txt"
    corpus.write_text(tm_text[:6000])
    assert (
        main(
            [
                "train",
                "--corpus",
                str(corpus),
                "--model",
                "lstm",
                "--hidden",
                "16",
                "--epochs",
                "1",
                "--weight-drop",
                "0.25",
                "--split",
                "fraction",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    assert read_config(tmp_path / "run")["config"]["weight_drop"] == 0.25
    for bad in (["--weight-drop", "1"], ["--weight-drop", "nan"], ["--model", "scratch", "--weight-drop", "0.2"]):
        assert main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "bad"), *bad]) == 2
        assert not (tmp_path / "bad").exists()


def test_sizing_adds_regularisation_where_the_model_is_large_for_its_text(no_measuring):
    sizing = no_measuring
    speeds = {width: 60_000 if width <= 256 else 1 for width in sizing.WIDTHS}

    def choose_config(*args, **kwargs):
        return sizing.choose_config(*args, **kwargs, speeds=speeds)

    # Tiny Shakespeare's case: 1x256 reads a million characters 6 times with 0.28 weights each: nothing
    few, report = choose_config(TrainConfig(), 1_000_000, 65, budget_s=100)
    assert few.hidden == 256 and report["epochs"] == 6.0 and report["weights_per_character"] == 0.28
    assert (few.weight_drop, few.io_dropout, few.ema) == (0.0, 0.0, 0.0)
    # the Vim manual's case: 0.51 weights per character (a larger alphabet, a smaller text), 4.4 passes
    vim, report = choose_config(TrainConfig(), 577_000, 117, budget_s=42.5)
    assert vim.hidden == 256 and report["weights_per_character"] == 0.51 and report["epochs"] == 4.4
    assert (vim.weight_drop, vim.io_dropout, vim.ema) == (sizing.WEIGHT_DROP, 0.0, 0.0)
    weights = sizing.trained_weights(65, 256)
    # The Time Machine's case: 37.5 passes, 1.76 weights per character: DropConnect alone
    many, report = choose_config(TrainConfig(), 160_000, 65, budget_s=100)
    assert many.hidden == 256 and report["epochs"] == 37.5
    assert report["weights_per_character"] == round(weights / 160_000, 2) == 1.76
    assert many.weight_drop == sizing.WEIGHT_DROP and many.io_dropout == 0.0 and many.ema == 0.0
    assert many.batch_size == sizing.ROWS_ON_CPU == 8 and many.model == "lstm"
    # the Cyrillic tutors' case: more weights per character than 2.5 (from a larger alphabet)
    dense, report = choose_config(TrainConfig(), 98_000, 165, budget_s=45)  # 27.6 passes
    assert dense.hidden == 256 and report["weights_per_character"] >= sizing.WEIGHTS_PER_CHARACTER_FOR_DROPOUT
    assert report["epochs"] < sizing.EPOCHS_FOR_DROPOUT
    assert (dense.weight_drop, dense.io_dropout, dense.ema) == (sizing.WEIGHT_DROP, sizing.IO_DROPOUT, sizing.EMA)
    # a very small text read more than fifty times: 1x128 (256 is over the corpus cap), 1.49 per character
    small, report = choose_config(TrainConfig(), 50_000, 65, budget_s=60)  # 72 passes
    assert small.hidden == 128 and report["weights_per_character"] < sizing.WEIGHTS_PER_CHARACTER_FOR_DROPOUT
    assert (small.io_dropout, small.ema) == (sizing.IO_DROPOUT, sizing.EMA)
    # many weights per character but fewer than 3 passes (the narrowest width, kept whatever its speed)
    brief, report = choose_config(TrainConfig(), 98_000, 165, budget_s=4)
    assert report["epochs"] < sizing.EPOCHS_FOR_WEIGHT_DROP and (brief.weight_drop, brief.io_dropout) == (0.0, 0.0)


def test_sizing_keeps_32_rows_on_a_gpu(monkeypatch):
    import rnnkit.sizing as sizing
    import rnnkit.training.device

    rows = []
    monkeypatch.setattr(
        sizing, "measure_tokens_per_second", lambda width, vocab, batch, *a, **k: rows.append(batch) or 500_000
    )
    monkeypatch.setattr(rnnkit.training.device, "select_device", lambda name: torch.device("cuda"))
    config, report = sizing.choose_config(TrainConfig(device="cuda"), 1_000_000, 65, budget_s=60)
    assert config.batch_size == 32 and set(rows) == {32} and report["device"] == "cuda"


def test_sizing_does_not_count_the_one_hot_table_and_always_measures(monkeypatch):
    import rnnkit.sizing as sizing
    from rnnkit.models import parameter_count

    # the input table is vocab x 4 width: a lookup, one row per character read
    assert parameter_count("lstm", 1400, 128) - sizing.trained_weights(1400, 128) == 1400 * 4 * 128
    monkeypatch.setattr(sizing, "measure_tokens_per_second", lambda width, *a, **k: 40_000 if width == 128 else 1)
    # a small text in a large alphabet (Chinese, say): 128 wide even so, measured, and dropout for 66 passes
    config, report = sizing.choose_config(TrainConfig(), 60_000, 1400, budget_s=100)
    assert config.hidden == 128 and report["tokens_per_s"] == {128: 40_000}
    assert report["epochs"] == 66.7 and config.io_dropout == sizing.IO_DROPOUT


def test_ema_keeps_a_moving_average_that_validation_and_the_best_checkpoint_use(tm_text):
    from rnnkit.models import build_model
    from rnnkit.train import stream_nll

    config = TrainConfig(**SMALL, epochs=1, max_steps=3, ema=0.9)
    trainer = Trainer(config, text=tm_text[:20000])
    start = [p.detach().clone() for p in trainer.model.parameters()]
    weights, expected = [], [p.clone() for p in start]
    trainer.optimizer.register_step_post_hook(
        lambda *a: weights.append([p.detach().clone() for p in trainer.model.parameters()])
    )
    trainer.fit()
    for taken, after in enumerate(weights, start=1):  # an independent average: decay (1 + t) / (10 + t) after
        decay = min(0.9, (1 + taken) / (10 + taken))  # t steps, capped at --ema
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, after, strict=True)]
    assert len(weights) == 3
    for kept, mine in zip(trainer.average, expected, strict=True):
        torch.testing.assert_close(kept, mine)
    live = [p.detach().clone() for p in trainer.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(live, weights[-1], strict=True))  # training weights untouched
    val_nll, val_count = trainer.evaluate_val()
    assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), live, strict=True))  # put back
    averaged = build_model(config.model, len(trainer.vocab), config.hidden)
    with torch.no_grad():
        for p, a in zip(averaged.parameters(), trainer.average, strict=True):
            p.copy_(a)
    assert val_nll == pytest.approx(stream_nll(averaged, trainer.data.val_text)[0], rel=1e-6)
    best = trainer.best.model  # the evaluation's weights: the average, not the last step's
    assert all(
        torch.equal(best[name], a)
        for (name, _), a in zip(trainer.model.named_parameters(), trainer.average, strict=True)
    )


def test_ema_is_saved_resumed_exactly_and_checked(tm_text, tmp_path, capsys):
    config = dict(**SMALL, epochs=3, ema=0.95, eval_every=9)
    a = Trainer(TrainConfig(**config), text=tm_text[:20000])
    a.fit()
    b = Trainer(TrainConfig(**config), text=tm_text[:20000])

    def interrupt(stats):
        if stats.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.fit(interrupt)
    c = Trainer(TrainConfig(**config), text=tm_text[:20000])
    c.load_state_dict(b.snapshot)
    c.fit()
    assert all(torch.equal(x, y) for x, y in zip(a.average, c.average, strict=True))
    assert a.best.val_loss == c.best.val_loss
    without = dict(b.snapshot, average=None)  # a state saved before --ema existed: the average starts at the weights
    d = Trainer(TrainConfig(**config), text=tm_text[:20000])
    d.load_state_dict(without)
    assert all(torch.equal(x, y) for x, y in zip(d.average, d.model.parameters(), strict=True))
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(RnnkitError, match="ema must be a decay"):
            TrainConfig(ema=bad).validate()
    assert main(["train", "--ema", "1", "--out", str(tmp_path / "run")]) == 2
    assert "ema must be a decay in [0, 1)" in capsys.readouterr().err
    run = tmp_path / "ema"  # through the CLI and a checkpoint on disk
    assert (
        main(
            [
                "train",
                "--corpus",
                "timemachine",
                "--preprocess",
                "raw",
                "--split",
                "fraction",
                "--hidden",
                "16",
                "--batch-size",
                "16",
                "--num-steps",
                "16",
                "--max-steps",
                "12",
                "--eval-every",
                "4",
                "--ema",
                "0.9",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    from rnnkit.checkpoint import load_state

    state, saved = load_state(run, read_config(run)), load_run(run)[0]
    assert read_config(run)["config"]["ema"] == 0.9 and len(state["average"]) == len(list(saved.parameters()))


def test_each_validation_line_says_whether_it_is_the_best_so_far(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--corpus",
                "timemachine",
                "--preprocess",
                "raw",
                "--split",
                "fraction",
                "--hidden",
                "16",
                "--batch-size",
                "16",
                "--num-steps",
                "16",
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--max-steps",
                "30",
                "--eval-every",
                "10",
                "--sample-every",
                "0",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert len(lines) == len(evals) >= 3 and "(best)" in lines[0]
    for line, point in zip(lines, evals, strict=True):
        best_so_far = point["val_loss"] <= min(e["val_loss"] for e in evals[: evals.index(point) + 1])
        assert ("(best)" in line) == best_so_far, line
