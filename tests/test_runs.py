"""Runs a person can leave, interrupt, resume and trust: checkpoints, resume, faults, corpora, plots."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rnnkit import text
from rnnkit.checkpoint import checkpoint_path, load_run, load_state, save_run
from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.train import TrainConfig, Trainer

SMALL = [
    "--hidden",
    "24",
    "--batch-size",
    "128",
    "--num-steps",
    "16",
    "--num-train",
    "2048",
    "--num-val",
    "256",
    "--sample-every",
    "0",
]


def weights(run_dir):
    return load_file(str(checkpoint_path(run_dir)))


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k


def test_sigint_then_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    epochs = "20"
    # One thread, MKL's thread count fixed: on a loaded Intel machine two fresh processes at the
    # default thread count once differed already in epoch 1 (MKL may change its thread count with
    # the load, and with it the order of a GEMM's sums); what this test checks is the resume, and
    # benchmarks/determinism.py stresses fresh processes at the default thread count.
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MKL_DYNAMIC": "FALSE",
    }
    cmd = [
        sys.executable,
        "-m",
        "rnnkit.cli",
        "train",
        *SMALL,
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--model",
        "gru",
        "--epochs",
        epochs,
        "--save-every",
        "5",
    ]
    ref = tmp_path / "ref"  # the uninterrupted run, side by side with the one that is interrupted
    reference = subprocess.Popen([*cmd, "--out", str(ref)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*cmd, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:  # interrupt once a few epochs are done, mid-training
        if line.startswith("epoch    3"):
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, rest[-500:], err[-2000:])
    assert "rnnkit train --resume" in err and "Traceback" not in err
    meta = json.loads((run / "config.json").read_text())
    assert 3 <= meta["epoch"] < int(epochs)
    resumed = subprocess.run(
        [sys.executable, "-m", "rnnkit.cli", "train", "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=120) == 0, reference.stderr.read()[-2000:]
    ref_metrics = (ref / "metrics.jsonl").read_text().splitlines()
    run_metrics = (run / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [
        {k: v for k, v in json.loads(r).items() if k not in ("seconds", "tokens_per_s")} for r in rows
    ]
    first_diff = next(
        (i for i, (a, b) in enumerate(zip(strip(run_metrics), strip(ref_metrics), strict=False)) if a != b), None
    )
    assert first_diff is None and len(run_metrics) == int(epochs), (meta["epoch"], first_diff, err[-300:])
    assert_bitwise_equal(weights(run), weights(ref))


def test_resume_with_more_epochs_equals_one_longer_run(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "5", "--out", str(tmp_path / "long"), "--quiet"]) == 0
    assert main(["train", *SMALL, "--epochs", "3", "--out", str(tmp_path / "short"), "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "short"), "--epochs", "5", "--quiet"]) == 0
    assert_bitwise_equal(weights(tmp_path / "short"), weights(tmp_path / "long"))
    assert main(["train", "--resume", str(tmp_path / "short"), "--hidden", "8"]) == 2
    assert "--resume continues a run" in capsys.readouterr().err


def test_resume_with_max_steps_not_above_the_steps_done_trains_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    steps = load_state(run, load_run(run)[3])["step"]
    before = weights(run)
    for max_steps in (2, steps):
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--max-steps", str(max_steps)]) == 0
        assert f"already at step {steps}; pass a --max-steps above it" in capsys.readouterr().out
        assert_bitwise_equal(weights(run), before)
    assert main(["train", "--resume", str(run), "--max-steps", str(steps + 1), "--quiet"]) == 0
    assert load_state(run, load_run(run)[3])["step"] == steps + 1


def test_existing_run_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    before = checkpoint_path(out).read_bytes()
    assert main(["train", *SMALL, "--epochs", "1", "--seed", "3", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert checkpoint_path(out).read_bytes() == before
    assert main(["train", *SMALL, "--epochs", "1", "--seed", "3", "--out", str(out), "--force", "--quiet"]) == 0
    assert checkpoint_path(out).read_bytes() != before


@pytest.fixture()
def small_trainer(tm_text):
    config = TrainConfig(hidden=8, batch_size=64, num_steps=8, epochs=1, num_train=256, num_val=64)
    trainer = Trainer(config, text=tm_text)
    trainer.fit()
    return trainer


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, small_trainer):
    t = small_trainer
    save_run(tmp_path, t.model, t.vocab, t.config, 1, t.state_dict())
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():  # a later state to save
        t.model.head.bias.add_(1)

    real_fsync = os.fsync
    for fail_at in (1, 2, 3, 4):  # the disk fills at the state file, the weights, the best weights, config.json
        calls = []

        def full(fd, fail_at=fail_at, calls=calls):
            if stat.S_ISREG(os.fstat(fd).st_mode):  # count the files' fsyncs, not the directory's
                calls.append(fd)
            if len(calls) == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(RnnkitError, match="No space left on device.*unchanged"):
            save_run(tmp_path, t.model, t.vocab, t.config, 2, t.state_dict())
        monkeypatch.undo()
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # no temp files, nothing changed
    model, _, _, meta = load_run(tmp_path)
    assert meta["epoch"] == 1


def _save_killed_at(run_dir, trainer, epoch, kill_at):
    """Fork; the child saves a checkpoint of ``epoch`` and dies (``os._exit``, as under SIGKILL:
    no cleanup runs) just before its ``kill_at``-th filesystem operation of the save (creating a
    temp file, writing, fsync, rename, unlink), or half-way through it if that is a write.
    Returns the number of operations the child performed (all of them if it was not killed)."""
    import tempfile

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        signal.alarm(30)  # never hang the suite
        real_write, count = os.write, [0]

        def counted(name, real):
            def operation(*args, **kwargs):
                count[0] += 1
                real_write(write_end, b".")
                if count[0] == kill_at:
                    if name == "write":
                        real(args[0], bytes(args[1][: len(args[1]) // 2]))
                    os._exit(137)
                return real(*args, **kwargs)

            return operation

        for module, name in ((os, "write"), (os, "fsync"), (os, "replace"), (os, "unlink"), (tempfile, "mkstemp")):
            setattr(module, name, counted(name, getattr(module, name)))
        try:
            save_run(run_dir, trainer.model, trainer.vocab, trainer.config, epoch, trainer.state_dict())
        finally:
            os._exit(0)
    os.close(write_end)
    done = b""
    while chunk := os.read(read_end, 4096):
        done += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 137), status
    return len(done)


def test_a_kill_at_any_point_of_a_save_leaves_a_run_that_loads_and_resumes(tmp_path, small_trainer, tm_text):
    """Fault injection: kill the saving process before each filesystem operation of a save in turn
    (and half-way through each write). Every time, the run directory must load as the previous
    checkpoint or the new one, resume, and the next save must clean up what the killed one left."""
    t = small_trainer
    save_run(tmp_path / "count", t.model, t.vocab, t.config, 1, t.state_dict())
    total = _save_killed_at(tmp_path / "count", t, 2, kill_at=10**9)
    # 4 files (state, weights, config.json, metrics.jsonl) x (temp file, write, fsync, rename),
    # fsyncs of the directory, removal of the previous checkpoint's 2 files
    assert total >= 4 * 4 + 2
    for kill_at in range(1, total + 1):
        run = tmp_path / f"kill{kill_at}"
        save_run(run, t.model, t.vocab, t.config, 1, t.state_dict())
        _save_killed_at(run, t, 2, kill_at)
        model, vocab, config, meta = load_run(run)
        state = load_state(run, meta)
        assert meta["epoch"] in (1, 2) and state["epoch"] == len(t.history)
        config.epochs = len(t.history) + 1  # resume: one more epoch, then save again
        resumed = Trainer(config, text=tm_text, vocab=vocab)
        resumed.load_state_dict(state)
        resumed.fit()
        save_run(run, resumed.model, vocab, config, config.epochs, resumed.state_dict())
        meta = load_run(run)[3]
        assert meta["epoch"] == config.epochs
        names = {p.name for p in run.iterdir()}
        assert names == {"config.json", "metrics.jsonl", "evals.jsonl", *meta["files"].values()}, (kill_at, names)


def test_mixed_checkpoint_files_are_refused(tmp_path, small_trainer):
    t = small_trainer
    save_run(tmp_path / "a", t.model, t.vocab, t.config, 1, t.state_dict())
    save_run(tmp_path / "b", t.model, t.vocab, t.config, 1, t.state_dict())
    checkpoint_path(tmp_path / "a", "state").write_bytes(checkpoint_path(tmp_path / "b", "state").read_bytes())
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(RnnkitError, match="interrupted"):
        load_state(tmp_path / "a", meta)


def test_state_round_trip_restores_optimizer_and_rng(tmp_path, tm_text):
    config = TrainConfig(
        model="gru",
        hidden=8,
        batch_size=64,
        num_steps=8,
        epochs=2,
        num_train=256,
        num_val=64,
        optimizer="adamw",
        lr=0.01,
        dropout=0.0,
    )
    a = Trainer(config, text=tm_text)
    a.fit()
    save_run(tmp_path, a.model, a.vocab, config, 2, a.state_dict())
    _, vocab, config2, meta = load_run(tmp_path)
    b = Trainer(config2, text=tm_text, vocab=vocab)
    b.load_state_dict(load_state(tmp_path, meta))
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
    for k in sa["state"]:
        for name, value in sa["state"][k].items():
            assert value.equal(sb["state"][k][name]), name
    assert [h.train_loss for h in b.history] == [h.train_loss for h in a.history]


def test_gutenberg_stripping():
    book = (
        "The Project Gutenberg eBook of X\nlicence blah\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n"
        "Chapter 1\nIt was.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore licence\n"
    )
    assert text.strip_gutenberg(book) == "Chapter 1\nIt was.\n"
    assert text.strip_gutenberg("no markers here") == "no markers here\n"


@pytest.fixture()
def fake_book(tmp_path, monkeypatch):
    """An unpinned built-in entry whose file sits in RNNKIT_DATA_DIR."""
    entry = text.CorpusEntry(
        "fake_book", "fake_book.txt", "http://example.invalid/fake.txt", None, "A fake book", gutenberg=True
    )
    monkeypatch.setitem(text.CORPORA, "fake_book", entry)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("RNNKIT_DATA_DIR", str(data))
    body = (
        "*** START OF THE PROJECT GUTENBERG EBOOK FAKE ***\n"
        + "the war of the worlds. " * 200
        + "Zebra!\n*** END OF THE PROJECT GUTENBERG EBOOK FAKE ***\nlicence\n"
    )
    (data / "fake_book.txt").write_text(body)
    return data / "fake_book.txt"


def test_unpinned_corpus_is_recorded_at_first_use_then_verified(fake_book, capsys):
    assert main(["corpora"]) == 0
    assert "fake_book" in capsys.readouterr().out
    first = text.load_corpus_text("fake_book")
    assert first.startswith("the war") and "licence" not in first  # Gutenberg parts stripped
    assert text.recorded_pins()["fake_book"] == text.sha1_of(fake_book)
    assert main(["corpora"]) == 0
    listing = capsys.readouterr().out
    assert "recorded at first use" in listing and "(pinned)" in listing  # timemachine is pinned
    fake_book.write_text("different bytes now")
    with pytest.raises(RnnkitError, match="recorded at first use"):
        text.load_corpus_text("fake_book")


def test_eval_on_another_book_counts_unknown_characters(tmp_path, fake_book, capsys, suite_corpora):
    d2l_run, raw_run = tmp_path / "d2l", tmp_path / "raw"
    timemachine = str(suite_corpora["timemachine"]["path"])
    assert main(["train", *SMALL, "--corpus", timemachine, "--epochs", "1", "--out", str(d2l_run), "--quiet"]) == 0
    corpus = tmp_path / "lower.txt"
    corpus.write_text("the time machine, by h. g. wells. " * 300)
    assert (
        main(
            [
                "train",
                *SMALL,
                "--corpus",
                str(corpus),
                "--preprocess",
                "raw",
                "--epochs",
                "1",
                "--out",
                str(raw_run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(d2l_run), "--corpus", "fake_book", "--json"]) == 0
    d2l_result = json.loads(capsys.readouterr().out)
    assert d2l_result["skipped"] == 0 and d2l_result["tokens"] > 4000 and d2l_result["ppl"] > 1
    assert main(["eval", str(raw_run), "--corpus", "fake_book", "--json"]) == 0
    raw_result = json.loads(capsys.readouterr().out)
    book = text.load_corpus_text("fake_book")
    trained_on = set(corpus.read_text())
    unknown = [c for c in book if c not in trained_on]
    assert set(raw_result["unknown_chars"]) == set(unknown) >= {"Z", "!", "r"}
    assert raw_result["skipped"] == len(unknown) and raw_result["tokens"] == len(book) - len(unknown) - 1


def test_curves_and_plot_command(tmp_path, capsys, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(a), "--quiet"]) == 0
    assert main(["train", *SMALL, "--epochs", "2", "--lr", "2", "--out", str(b), "--quiet"]) == 0
    assert (a / "curves.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert main(["plot", str(a), "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install 'rnnkit[plot]'" in capsys.readouterr().err
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "curves.png not drawn" in capsys.readouterr().err and checkpoint_path(tmp_path / "c").exists()


def test_empty_prefix_generates_from_a_fresh_state(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prefix", "", "-n", "30", "--seed", "2"]) == 0
    assert len(capsys.readouterr().out.rstrip("\n")) == 30


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hidden", "1000000"], "parameters"),
        (["--num-steps", "-3"], "num_steps"),
        (["--batch-size", "0"], "batch_size"),
        (["--epochs", "-1"], "epochs"),
        (["--lr", "nan"], "lr"),
        (["--dropout", "1.5"], "dropout"),
    ],
)
def test_absurd_sizes(tmp_path, capsys, args, message):
    assert main(["train", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_random_bytes_file(tmp_path, capsys):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes((i * 7919) % 256 for i in range(5000)))
    assert main(["train", "--corpus", str(noise), "--out", str(tmp_path / "o")]) == 2
    assert "not a text file" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--corpus", "EMPTY"], ["--num-steps", "0"], ["--hidden", "1000000"]])
def test_bad_input_with_force_leaves_the_earlier_run_intact(tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty.txt").write_text("")
    bad = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in bad]
    assert main(["train", *bad, "--out", str(out), "--force"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "split,model,stop_at",
    [
        ("d2l", "rnn", 7),
        ("sequential", "lstm", 150),
        ("random", "gru", 9),
        ("fraction", "lstm", 5),
        ("sample", "rnn", 30),
    ],
)
def test_a_run_stopped_mid_epoch_resumes_from_its_checkpoint_bitwise(tmp_path, tm_text, split, model, stop_at):
    """A stop request lands between two steps; the checkpoint written there (weights, optimizer,
    RNG, the batch reached, partial sums, the carried state) continues exactly as if never stopped."""
    import signal as signals

    from rnnkit.errors import Stop

    layers = 2 if model == "lstm" else 1
    config = dict(
        model=model,
        hidden=12,
        layers=layers,
        dropout=0.2 if layers > 1 else 0.0,
        batch_size=16,
        num_steps=8,
        epochs=2,
        num_train=300,
        num_val=32,
        split=split,
        optimizer="adam",
        lr=0.01,
        eval_every=4,
        seed=3,
    )
    corpus = tm_text[:12000]
    reference = Trainer(TrainConfig(**config), text=corpus)
    reference.fit()
    stopped = Trainer(TrainConfig(**config), text=corpus)
    per_epoch = len(stopped.data.train)
    assert stop_at % per_epoch and stop_at < 2 * per_epoch  # strictly inside an epoch

    def on_batch(tokens, loss):
        if stopped.step == stop_at:
            stopped.stop_requested = signals.SIGTERM

    with pytest.raises(Stop):
        stopped.fit(on_batch=on_batch)
    position = stopped.snapshot["position"]
    assert (stopped.snapshot["step"], position["epoch"], position["batch"]) == (
        stop_at,
        stop_at // per_epoch,
        stop_at % per_epoch,
    )
    assert (position["carry"] is not None) == (split == "sequential")
    save_run(
        tmp_path,
        stopped.model,
        stopped.vocab,
        stopped.config,
        stopped.snapshot["epoch"],
        stopped.snapshot,
        stopped.corpus_sha1,
    )
    _, vocab, saved_config, meta = load_run(tmp_path)
    resumed = Trainer(saved_config, text=corpus, vocab=vocab)
    resumed.load_state_dict(load_state(tmp_path, meta))
    resumed.fit()
    assert_bitwise_equal(
        {k: v.contiguous() for k, v in resumed.model.state_dict().items()},
        {k: v.contiguous() for k, v in reference.model.state_dict().items()},
    )
    timeless = lambda rows: [{k: v for k, v in vars(r).items() if k not in ("seconds", "tokens_per_s")} for r in rows]
    assert timeless(resumed.history) == timeless(reference.history)
    assert timeless(resumed.evals) == timeless(reference.evals) and len(reference.evals) > 4


def test_a_killed_run_resumes_from_its_last_mid_epoch_save_bitwise(tmp_path):
    """SIGKILL (no handler runs) after some --save-steps saves: the run continues from the last one
    exactly, mid-epoch, as if it had never stopped."""
    # the uninterrupted run trains side by side with the killed one: one thread each, as in
    # test_sigint_then_resume_is_bitwise_equal_to_uninterrupted
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MKL_DYNAMIC": "FALSE",
    }
    cmd = [
        sys.executable,
        "-m",
        "rnnkit.cli",
        "train",
        *SMALL,
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--model",
        "gru",
        "--epochs",
        "6",
        "--save-every",
        "0",
        "--save-steps",
        "7",
        "--quiet",
    ]
    ref = tmp_path / "ref"
    reference = subprocess.Popen([*cmd, "--out", str(ref)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    run = tmp_path / "run"
    proc = subprocess.Popen([*cmd, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if json.loads((run / "config.json").read_text())["step"] >= 30:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    meta = json.loads((run / "config.json").read_text())
    assert meta["step"] % 7 == 0 and 30 <= meta["step"] < 6 * 16, meta["step"]
    assert subprocess.run([*cmd[:3], "train", "--resume", str(run), "--quiet"], env=env).returncode == 0
    assert reference.wait(timeout=120) == 0, reference.stderr.read()[-2000:]
    assert_bitwise_equal(weights(run), weights(ref))
    strip = lambda path: [
        {k: v for k, v in json.loads(r).items() if k not in ("seconds", "tokens_per_s")}
        for r in path.read_text().splitlines()
    ]
    assert strip(run / "metrics.jsonl") == strip(ref / "metrics.jsonl")
    assert strip(run / "evals.jsonl") == strip(ref / "evals.jsonl")
