"""Tried as a hostile user would: every case ends in one line and a documented exit status, and
loses nothing (issue "Hardening"). Each case here failed before its fix."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import rnnkit.train
import rnnkit.training.device
from rnnkit.checkpoint import checkpoint_path, load_run, load_state
from rnnkit.cli import build_parser, given_train_options, main
from rnnkit.errors import RnnkitError
from rnnkit.files import UMASK, DirectoryLock
from rnnkit.text import read_text
from rnnkit.train import TrainConfig, Trainer, perplexity

TINY = [
    "--hidden",
    "8",
    "--batch-size",
    "16",
    "--num-steps",
    "8",
    "--num-train",
    "64",
    "--num-val",
    "16",
    "--sample-every",
    "0",
]


def one_line_error(capsys, status, expected_status=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert status == expected_status and len(err) == 1 and err[0].startswith("rnnkit: error: "), err
    return err[0]


def test_an_option_given_with_its_default_value_counts_as_given(tmp_path, capsys):
    parser = build_parser()
    assert "epochs" in given_train_options(parser, ["train", "--resume", "r", "--epochs", "100"])
    assert given_train_options(parser, ["train", "--resume", "r"]) == {"resume"}
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "100", "--quiet"]) == 0  # 100 is the default
    assert load_run(run)[3]["epoch"] == 100
    assert main(["train", "--resume", str(run), "--lr", "1"]) == 2  # --lr 1 is the default, still refused
    assert "remove lr" in capsys.readouterr().err


def test_a_diverging_run_stops_with_status_3_and_keeps_the_last_good_epoch(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(["train", *TINY, "--lr", "1e6", "--clip", "0", "--epochs", "20", "--out", str(run), "--quiet"])
    line = one_line_error(capsys, status, 3)
    assert "diverged in epoch" in line and "--clip" in line and "saved as of epoch" in line
    _, _, _, meta = load_run(run)
    state = load_state(run, meta)
    assert all(math.isfinite(h["train_loss"]) for h in state["history"])
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert perplexity(800.0, 1) == math.inf and perplexity(float("nan"), 1) != perplexity(float("nan"), 1)


def test_out_that_cannot_be_written_is_found_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    status = main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "afile" / "sub")])
    assert "cannot write" in one_line_error(capsys, status) and "epoch" not in capsys.readouterr().out


def test_a_run_directory_in_use_is_refused_with_its_holder(tmp_path, capsys):
    run = tmp_path / "run"
    with DirectoryLock(run):
        status = main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"])
        line = one_line_error(capsys, status)
        assert "in use by another rnnkit process" in line and f"pid {os.getpid()}" in line
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]) == 0  # free again


def test_a_refused_start_leaves_no_empty_run_directory(tmp_path, capsys):
    status = main(["train", *TINY, "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "new")])
    one_line_error(capsys, status)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_like_ctrl_c(tmp_path, signum):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "rnnkit.cli",
        "train",
        "--hidden",
        "16",
        "--batch-size",
        "64",
        "--num-steps",
        "8",
        "--num-train",
        "2048",
        "--num-val",
        "64",
        "--epochs",
        "500",
        "--save-every",
        "0",
        "--out",
        str(run),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    for line in proc.stdout:
        if line.startswith("epoch    2"):
            proc.send_signal(signum)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-1000:]
    assert "Traceback" not in err and f"continue with: rnnkit train --resume {run}" in err
    assert 2 <= load_run(run)[3]["epoch"] < 500
    assert main(["train", "--resume", str(run), "--epochs", str(load_run(run)[3]["epoch"] + 1), "--quiet"]) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_before_training_starts_stops_at_once_and_leaves_nothing(tmp_path, monkeypatch, capsys, signum):
    import rnnkit.sizing

    def signalled(*args, **kwargs):  # SIGTERM while the budget's sizing measures this machine
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the start")

    monkeypatch.setattr(rnnkit.sizing, "choose_config", signalled)
    corpus = tmp_path / "own.txt"
    corpus.write_text("the time traveller was one of those men who are too clever to be believed. " * 100)
    status = main(["train", "--corpus", str(corpus), "--time-budget", "30s", "--out", str(tmp_path / "run")])
    assert status == 128 + signum and f"stopped by {signal.Signals(signum).name}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the directory this start created is gone, lock file and all
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_long_epoch_still_saves_every_few_minutes(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("rnnkit.cli.time.monotonic", lambda: clock.__setitem__(0, clock[0] + 200) or clock[0])
    run = tmp_path / "run"
    saves = []
    import rnnkit.run.saving

    real = rnnkit.run.saving.save_run
    monkeypatch.setattr(rnnkit.run.saving, "save_run", lambda *a, **k: saves.append(a[4]) or real(*a, **k))
    assert (
        main(
            ["train", *TINY, "--epochs", "4", "--save-every", "0", "--save-minutes", "10", "--out", str(run), "--quiet"]
        )
        == 0
    )
    assert len(saves) >= 3  # epochs that found the last save 10 minutes old, and the end


def weights_file(run):
    return checkpoint_path(run)


@pytest.fixture()
def trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    return run


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    return str(tmp_path / "fifo")


def _config_field(run, **changes):
    meta = json.loads((run / "config.json").read_text())
    meta["config"].update(changes)
    (run / "config.json").write_text(json.dumps(meta))
    return str(run)


def _nan_weights(run):
    from safetensors.torch import load_file, save_file

    path = weights_file(run)
    tensors = load_file(str(path))
    meta = json.loads((run / "config.json").read_text())
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in tensors.items()},
        str(path),
        metadata={"format": "rnnkit-run", "checkpoint": meta["checkpoint"]},
    )
    return str(run)


def _weights_dir(run):
    path = weights_file(run)
    path.unlink()
    path.mkdir()
    return str(run)


def _metrics(run, line):
    (run / "metrics.jsonl").write_text(line + "\n")
    return str(run)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, r: ["train", *TINY, "--corpus", _fifo(d), "--out", str(d / "o")], "not a regular file"),
        (lambda d, r: ["train", *TINY, "--corpus", "/dev/zero", "--out", str(d / "o")], "not a regular file"),
        (lambda d, r: ["generate", str(r), "--seed", "100000000000000000000"], "seed must be an integer"),
        (lambda d, r: ["train", *TINY, "--seed", "-1", "--out", str(d / "o")], "seed"),
        (lambda d, r: ["train", *TINY, "--weight-decay", "-1", "--out", str(d / "o")], "weight_decay"),
        (lambda d, r: ["eval", _config_field(r, dropout="0.1")], "dropout must be of type float"),
        (lambda d, r: ["eval", _config_field(r, hidden=8.0)], "hidden must be of type int"),
        (lambda d, r: ["train", *TINY, "--device", "mps", "--out", str(d / "o")], "mps"),
        (lambda d, r: ["train", *TINY, "--device", "meta", "--out", str(d / "o")], "cannot train"),
        (lambda d, r: ["train", *TINY, "--device", "tpu", "--out", str(d / "o")], "unknown device"),
        (lambda d, r: ["generate", str(r), "--temperature", "1e-310"], "temperature must be between"),
        (lambda d, r: ["generate", str(r), "--alpha", "1e300"], "alpha must be between"),
        (
            lambda d, r: ["generate", _nan_weights(r), "-n", "5", "--checkpoint", "last"],
            "not a probability distribution",
        ),
        (lambda d, r: ["generate", _nan_weights(r), "-n", "5", "--greedy", "--checkpoint", "last"], "NaN"),
        (lambda d, r: ["generate", _weights_dir(r), "--checkpoint", "last"], "cannot read"),
        (lambda d, r: ["plot", _metrics(r, "{}"), "--out", str(d / "p.png")], "not a metrics row"),
        (lambda d, r: ["plot", _metrics(r, "5"), "--out", str(d / "p.png")], "not a metrics row"),
        (lambda d, r: ["train", "--model", "lstm", "--dropout", "0.2", *TINY, "--out", str(d / "o")], "--layers 2"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, trained, make_args, message):
    status = main(make_args(tmp_path, trained))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("rnnkit: error: ") and message in err[0], err


def test_argparse_errors_are_status_2(trained, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage line, then status 2
        main(["generate", str(trained), "--seed", "1e20"])
    assert exit_info.value.code == 2 and "invalid int value: '1e20'" in capsys.readouterr().err


def test_the_memory_a_run_needs_is_checked_before_allocating(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rnnkit.training.device, "available_memory", lambda device: 8 << 30)
    status = main(["train", "--hidden", "40000", "--out", str(tmp_path / "o")])
    line = one_line_error(capsys, status)
    assert "needs about" in line and "8.0 GiB free" in line and "weights and gradients" in line


def test_a_tiny_corpus_with_no_validation_part(tmp_path, capsys):
    (tmp_path / "nine.txt").write_text("abcdefghi")
    status = main(
        [
            "train",
            "--corpus",
            str(tmp_path / "nine.txt"),
            "--split",
            "fraction",
            "--val-fraction",
            "0",
            "--num-steps",
            "4",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert status == 0  # trains: there are windows; validation is simply absent
    status = main(
        [
            "train",
            "--corpus",
            str(tmp_path / "nine.txt"),
            "--split",
            "fraction",
            "--val-fraction",
            "0",
            "--num-steps",
            "20",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert "shorter than one window" in one_line_error(capsys, status)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-le"])
def test_wide_encodings_are_decoded_before_the_binary_check(tmp_path, encoding):
    text = "The Time Traveller (for so it will be convenient to speak of him)\n" * 20
    (tmp_path / "wide.txt").write_bytes(text.encode(encoding))
    assert read_text(tmp_path / "wide.txt", encoding) == text
    (tmp_path / "nul.txt").write_bytes(("abc\x00def" * 10).encode(encoding))
    with pytest.raises(RnnkitError, match="binary"):
        read_text(tmp_path / "nul.txt", encoding)


def test_files_get_the_umask_permissions(trained):
    expected = 0o666 & ~UMASK
    for name in ("config.json", "metrics.jsonl", weights_file(trained).name, checkpoint_path(trained, "state").name):
        assert (trained / name).stat().st_mode & 0o777 == expected, name


def test_generate_reads_the_prefix_as_training_read_its_text(trained, capsys):
    assert main(["generate", str(trained), "--prefix", "Time Traveller", "-n", "5", "--greedy"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("time traveller") and "'Time Traveller' -> 'time traveller'" in err
    assert "<unk>" not in out


def test_resume_refuses_a_changed_corpus(tmp_path, capsys):
    corpus = tmp_path / "book.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 40)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--corpus", str(corpus), "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    corpus.write_text("the quick brown fox jumps over the lazy cat " * 40)
    status = main(["train", "--resume", str(run), "--epochs", "2"])
    line = one_line_error(capsys, status)
    assert "not the text this run was trained on" in line and line.count("sha1") == 2
    DirectoryLock(run).acquire().release()  # a refused resume let go of the run directory's lock


def test_the_trainer_leaves_the_callers_random_state_alone(tm_text):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    trainer = Trainer(
        TrainConfig(
            model="lstm",
            hidden=8,
            layers=2,
            dropout=0.3,
            batch_size=16,
            num_steps=8,
            num_train=64,
            num_val=16,
            epochs=1,
        ),
        text=tm_text[:3000],
    )
    trainer.fit()
    assert torch.equal(torch.get_rng_state(), before)


def test_huge_seeds_train_and_shuffle_without_overflow(tm_text):
    from rnnkit.data import epoch_generator

    assert torch.randperm(5, generator=epoch_generator((1 << 63) - 1, 7)).sort().values.tolist() == list(range(5))
    config = TrainConfig(hidden=8, batch_size=16, num_steps=8, num_train=64, num_val=16, epochs=1, seed=20000000000000)
    assert len(Trainer(config, text=tm_text[:3000]).fit()) == 1
