"""Training across processes with torchrun (gloo on the CPU): the same weights as one process,
two "machines" on localhost, a stop and a resume with another process count, a process that dies,
and bad input said once."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.checkpoint import checkpoint_path, load_run
from rnnkit.cli import main

BOOK = [
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--num-steps",
    "8",
    "--num-train",
    "1001",
    "--num-val",
    "64",
    "--epochs",
    "2",
    "--sample-every",
    "0",
    "--quiet",
]  # 1001 windows: the last batch of 41 splits 20/21
LSTM = [
    "--model",
    "lstm",
    "--layers",
    "2",
    "--hidden",
    "16",
    "--embedding",
    "8",
    "--batch-size",
    "32",
    "--num-steps",
    "16",
    "--split",
    "sequential",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--max-steps",
    "20",
    "--eval-every",
    "7",
    "--sample-every",
    "0",
    "--quiet",
]  # lanes carry their state from batch to batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(launcher: list[str], train: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "rnnkit", "train", *train]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(train: list[str], nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(["--standalone", f"--nproc-per-node={nproc}"], train),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
    )


def assert_close(run_a, run_b, rtol: float) -> None:
    """Every weight tensor equal within ``rtol`` relative: ||a - b|| <= rtol ||a||."""
    a, b = load_file(str(checkpoint_path(run_a))), load_file(str(checkpoint_path(run_b)))
    assert a.keys() == b.keys()
    for name in a:
        error = (torch.linalg.vector_norm(a[name] - b[name]) / torch.linalg.vector_norm(a[name])).item()
        assert error <= rtol, (name, error)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rnnkit: error")]


@pytest.mark.parametrize("options", [BOOK, LSTM], ids=["book-rnn-uneven-last-batch", "lstm-sequential-lanes"])
def test_two_processes_train_the_weights_of_one(tmp_path, options):
    assert main(["train", *options, "--out", str(tmp_path / "one")]) == 0
    two = torchrun([*options, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    assert_close(tmp_path / "one", tmp_path / "two", rtol=1e-6)
    one_meta, two_meta = load_run(tmp_path / "one")[3], load_run(tmp_path / "two")[3]
    assert one_meta["epoch"] == two_meta["epoch"] and one_meta["best"]["step"] == two_meta["best"]["step"]


def test_two_machines_on_localhost_train_together_from_a_prepared_directory(tmp_path, tm_text):
    corpus = tmp_path / "book.txt"
    corpus.write_text(tm_text[:60000], encoding="utf-8")
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "data")]) == 0
    options = [
        "--data",
        str(tmp_path / "data"),
        "--hidden",
        "16",
        "--batch-size",
        "32",
        "--num-steps",
        "16",
        "--max-steps",
        "30",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--sample-every",
        "0",
        "--quiet",
    ]
    assert main(["train", *options, "--out", str(tmp_path / "one")]) == 0
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            torchrun_command(
                ["--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1", f"--rdzv-endpoint={endpoint}"],
                [*options, "--out", str(tmp_path / "two")],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-1500:] for _, err in outputs]
    assert "done:" in outputs[0][0] and outputs[1][0] == ""  # rank 0 reports, rank 1 is quiet
    assert_close(tmp_path / "one", tmp_path / "two", rtol=1e-6)


def test_sigterm_under_torchrun_saves_once_and_resumes_with_another_process_count(tmp_path):
    options = [
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
        "--max-steps",
        "400",
        "--save-every",
        "0",
        "--sample-every",
        "0",
    ]
    run = tmp_path / "run"
    job = subprocess.Popen(
        torchrun_command(["--standalone", "--nproc-per-node=2"], [*options, "--out", str(run)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    for line in job.stdout:
        if line.startswith("epoch    3"):
            job.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to every process
            break
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert len(errors(err)) == 0 and err.count("saved the run at step") == 1, err[-2000:]
    meta = load_run(run)[3]
    assert 3 <= meta["epoch"] and 96 <= meta["step"] < 400
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # one process now
    assert main(["train", *options, "--out", str(tmp_path / "uninterrupted"), "--quiet"]) == 0
    assert load_run(run)[3]["step"] == 400
    # the 2-process steps add the two halves' gradients in another order: equal to float rounding,
    # which 400 SGD steps with lr 1 let grow (at most 8e-7 measured here)
    assert_close(run, tmp_path / "uninterrupted", rtol=1e-5)


def test_a_process_that_dies_takes_the_job_down_with_a_message(tmp_path):
    run = tmp_path / "run"
    options = [
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
        "1000",
        "--save-every",
        "2",
        "--sample-every",
        "0",
        "--out",
        str(run),
    ]
    job = subprocess.Popen(
        torchrun_command(["--standalone", "--nproc-per-node=2"], options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        start_new_session=True,
    )
    for line in job.stdout:
        if line.startswith("epoch    3"):
            break
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    started = time.monotonic()
    os.kill(int(workers[-1]), signal.SIGKILL)
    try:
        _, err = job.communicate(timeout=60)
    finally:
        with pytest.raises(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # nothing of the job is left running
    assert job.returncode != 0 and time.monotonic() - started < 60
    assert "another training process stopped answering" in err or "SIGKILL" in err, err[-2000:]
    assert 2 <= load_run(run)[3]["epoch"]  # the last checkpoint is whole


def test_a_batch_that_the_processes_cannot_share_is_said_once(tmp_path):
    job = torchrun([*BOOK, "--batch-size", "63", "--out", str(tmp_path / "run")], nproc=2)
    assert job.returncode != 0
    assert errors(job.stderr) == [
        "rnnkit: error: --batch-size 63 is the batch of all 2 processes together and must be a multiple of their number"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank", ["0", "1"])
def test_bad_torchrun_environments_exit_2_said_by_rank_0_only(tmp_path, monkeypatch, capsys, rank):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", rank)  # half set
    assert main(["train", *BOOK, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    if rank == "0":
        assert errors(err) == [err.strip()] and "half set (RANK set, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR" in err
    else:
        assert err == ""
    for name, value in (
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", rank),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(free_port())),
    ):
        monkeypatch.setenv(name, value)
    assert main(["train", *BOOK, "--batch-size", "63", "--out", str(tmp_path / "b")]) == 2  # before joining
    assert ("multiple of their number" in capsys.readouterr().err) == (rank == "0")
    monkeypatch.setenv("WORLD_SIZE", "x")
    assert main(["train", *BOOK, "--out", str(tmp_path / "c")]) == 2
    assert ("must be integers" in capsys.readouterr().err) == (rank == "0")
    assert not any((tmp_path / name).exists() for name in "abc")
