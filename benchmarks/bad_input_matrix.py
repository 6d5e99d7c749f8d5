#!/usr/bin/env python3
"""Run the ``rnnkit`` command on each bad input of the robustness matrix and print a Markdown
table: input -> the message it prints -> exit status (and whether an earlier good run survived).

Everything happens in a temporary directory; The Time Machine comes from ``$RNNKIT_DATA_DIR``.

    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/bad_input_matrix.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--num-steps",
    "8",
    "--num-train",
    "512",
    "--num-val",
    "128",
    "--sample-every",
    "0",
]


def rnnkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], cwd=cwd, capture_output=True, text=True)


def digest(run: Path) -> str:
    """sha1 of a run's files (not its lock file, which every attempt to write there takes)."""
    return hashlib.sha1(
        b"".join(p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock")
    ).hexdigest()


def weights(run: Path) -> Path:
    """A run's weights file (the one its ``config.json`` names)."""
    return run / json.loads((run / "config.json").read_text())["files"]["model"]


def truncate(run: Path) -> None:
    """Cut a run's weights file in half."""
    data = weights(run).read_bytes()
    weights(run).write_bytes(data[: len(data) // 2])


def config_field(name: str, value):
    """An edit that sets ``config.json``'s config field ``name`` to ``value``."""

    def edit(run: Path) -> None:
        meta = json.loads((run / "config.json").read_text())
        meta["config"][name] = value
        (run / "config.json").write_text(json.dumps(meta))

    return edit


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        good = d / "good"
        assert rnnkit("train", *TINY, "--epochs", "2", "--out", str(good), "--quiet", cwd=d).returncode == 0
        raw_corpus = d / "abc.txt"
        raw_corpus.write_text("abc abd abe " * 300)
        raw = d / "raw"
        assert (
            rnnkit(
                "train",
                *TINY,
                "--corpus",
                str(raw_corpus),
                "--preprocess",
                "raw",
                "--epochs",
                "1",
                "--out",
                str(raw),
                "--quiet",
                cwd=d,
            ).returncode
            == 0
        )
        before = digest(good)
        with_run = str(d / "book.txt.rnz")  # compressed with the run `good`
        (d / "book.txt").write_bytes(b"the time traveller smiled round at us\n" * 20)
        assert rnnkit("compress", "-q", "--model", str(good), str(d / "book.txt"), cwd=d).returncode == 0

        def file(name: str, data: bytes) -> str:
            (d / name).write_bytes(data)
            return str(d / name)

        def broken_run(name: str, edit) -> str:
            run = d / name
            run.mkdir()
            for p in good.iterdir():
                (run / p.name).write_bytes(p.read_bytes())
            edit(run)
            return str(run)

        def nan_weights(run: Path) -> None:
            import torch
            from safetensors.torch import load_file, save_file

            meta = json.loads((run / "config.json").read_text())
            tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(weights(run))).items()}
            save_file(tensors, str(weights(run)), metadata={"format": "rnnkit-run", "checkpoint": meta["checkpoint"]})

        def weights_dir(run: Path) -> None:
            weights(run).unlink()
            weights(run).mkdir()

        def metrics(line: str):
            def edit(run: Path) -> None:
                (run / "metrics.jsonl").write_text(line + "\n")

            return edit

        def hidden_edit(run: Path) -> None:
            meta = json.loads((run / "config.json").read_text())
            meta["config"]["hidden"] = 64
            (run / "config.json").write_text(json.dumps(meta))

        def pickled(run: Path) -> None:
            import torch

            torch.save({"w": torch.zeros(3)}, weights(run))

        os.mkfifo(d / "fifo")
        fifo = str(d / "fifo")
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        cases = [
            ("empty file", ["train", "--corpus", file("empty.txt", b""), "--out", str(good), "--force"]),
            (
                "binary file (random bytes)",
                ["train", "--corpus", file("noise.bin", os.urandom(4096)), "--out", str(good), "--force"],
            ),
            ("binary file (PNG)", ["train", "--corpus", file("image.png", png), "--out", str(good), "--force"]),
            (
                "Latin-1 file",
                [
                    "train",
                    "--corpus",
                    file("latin1.txt", "déjà vu, garçon".encode("latin-1") * 50),
                    "--out",
                    str(good),
                    "--force",
                ],
            ),
            (
                "corpus shorter than one window",
                ["train", "--corpus", file("short.txt", b"tiny text"), "--out", str(good), "--force"],
            ),
            ("--num-steps 0", ["train", "--num-steps", "0", "--out", str(good), "--force"]),
            ("--batch-size -5", ["train", "--batch-size", "-5", "--out", str(good), "--force"]),
            ("--hidden 1000000", ["train", "--hidden", "1000000", "--out", str(d / "new")]),
            ("--out of an existing run", ["train", *TINY, "--epochs", "1", "--out", str(good)]),
            ("prefix with unseen characters (raw model)", ["generate", str(raw), "--prefix", "abZ!"]),
            (
                "prefix with unseen characters (d2l model, has <unk>)",
                ["generate", str(good), "--prefix", "Hi!", "-n", "10"],
            ),
            ("empty prefix", ["generate", str(good), "--prefix", "", "-n", "20", "--seed", "0"]),
            ("not a run directory", ["generate", str(d)]),
            ("truncated checkpoint", ["generate", broken_run("truncated", truncate), "--checkpoint", "last"]),
            ("config edited to another hidden size", ["eval", broken_run("edited", hidden_edit)]),
            (
                "torch.save pickle renamed to the weights file",
                ["generate", broken_run("pickle", pickled), "--checkpoint", "last"],
            ),
            ("a FIFO as --corpus", ["train", "--corpus", fifo, "--out", str(d / "new")]),
            ("/dev/zero as --corpus", ["train", "--corpus", "/dev/zero", "--out", str(d / "new")]),
            (
                "train --seed 20000000000000 (valid: trains)",
                ["train", *TINY, "--epochs", "1", "--seed", "20000000000000", "--out", str(d / "seeded"), "--quiet"],
            ),
            ("train --seed 2^64", ["train", *TINY, "--seed", str(2**64), "--out", str(d / "new")]),
            ("generate --seed 1e20", ["generate", str(good), "--seed", "1e20"]),
            ("generate --seed 10^20", ["generate", str(good), "--seed", str(10**20)]),
            ("--weight-decay -1", ["train", *TINY, "--weight-decay", "-1", "--out", str(d / "new")]),
            ("eval --dynamic nan", ["eval", str(good), "--dynamic", "nan"]),
            ("eval --dynamic -1", ["eval", str(good), "--dynamic", "-1"]),
            ("eval --dynamic 1e10", ["eval", str(good), "--dynamic", "1e10"]),
            ("eval --dynamic before the run directory", ["eval", "--dynamic", str(good)]),
            ('config.json "dropout": "0.1"', ["eval", broken_run("wrongtype", config_field("dropout", "0.1"))]),
            ("--device mps", ["train", *TINY, "--device", "mps", "--out", str(d / "new")]),
            ("--device meta", ["train", *TINY, "--device", "meta", "--out", str(d / "new")]),
            ("generate --temperature 1e-310", ["generate", str(good), "--temperature", "1e-310"]),
            ("model with NaN weights", ["generate", broken_run("nan", nan_weights), "-n", "5", "--checkpoint", "last"]),
            ("--hidden 40000 (memory check)", ["train", "--hidden", "40000", "--out", str(d / "new")]),
            (
                "9-character corpus, --split fraction --val-fraction 0",
                [
                    "train",
                    "--corpus",
                    file("nine.txt", b"abcdefghi"),
                    "--split",
                    "fraction",
                    "--val-fraction",
                    "0",
                    "--out",
                    str(d / "new"),
                ],
            ),
            ("weights file is a directory", ["generate", broken_run("wdir", weights_dir), "--checkpoint", "last"]),
            ("metrics.jsonl line {}", ["plot", broken_run("m1", metrics("{}")), "--out", str(d / "p.png")]),
            ("metrics.jsonl line 5", ["plot", broken_run("m2", metrics("5")), "--out", str(d / "p.png")]),
            (
                "UTF-16 file with --encoding utf-16 (valid: trains)",
                [
                    "train",
                    *TINY,
                    "--epochs",
                    "1",
                    "--corpus",
                    file("wide.txt", ("the time machine by h g wells " * 40).encode("utf-16")),
                    "--encoding",
                    "utf-16",
                    "--out",
                    str(d / "wide"),
                    "--quiet",
                ],
            ),
            (
                "--model lstm --dropout 0.2 (one layer)",
                ["train", "--model", "lstm", "--dropout", "0.2", "--out", str(d / "new")],
            ),
            ("--out afile/sub", ["train", *TINY, "--out", str(Path(file("afile", b"x")) / "sub")]),
            (
                "--lr 1e6 --clip 0 (diverges)",
                [
                    "train",
                    *TINY,
                    "--lr",
                    "1e6",
                    "--clip",
                    "0",
                    "--epochs",
                    "5",
                    "--out",
                    str(d / "diverged"),
                    "--quiet",
                ],
            ),
            (
                "generate 'Time Traveller' (d2l model: lower-cased)",
                ["generate", str(good), "--prefix", "Time Traveller", "-n", "10", "--greedy"],
            ),
            (
                "--resume --epochs 100 (the default value) after 2 epochs",
                ["train", "--resume", broken_run("more", lambda run: None), "--epochs", "100", "--quiet"],
            ),
            ("--save-steps -1", ["train", *TINY, "--save-steps", "-1", "--out", str(d / "new")]),
            ("--dist-timeout 0", ["train", *TINY, "--dist-timeout", "0", "--out", str(d / "new")]),
            ("--dist-timeout nan", ["train", *TINY, "--dist-timeout", "nan", "--out", str(d / "new")]),
            ("--time-budget soon", ["train", "--time-budget", "soon", "--out", str(d / "new")]),
            ("--time-budget=-3m", ["train", "--time-budget=-3m", "--out", str(d / "new")]),
            ("--time-budget 0", ["train", "--time-budget", "0", "--out", str(d / "new")]),
            ("--time-budget 3m3m", ["train", "--time-budget", "3m3m", "--out", str(d / "new")]),
            (
                "--time-budget 1s (shorter than ten validations)",
                ["train", *TINY, "--time-budget", "1s", "--out", str(d / "new")],
            ),
            (
                "--time-budget 1m, a 300-character corpus, no sizes",
                [
                    "train",
                    "--corpus",
                    file("small.txt", b"a few words " * 25),
                    "--time-budget",
                    "1m",
                    "--out",
                    str(d / "new"),
                ],
            ),
            (
                "--time-budget 4s, a 20,000-character corpus, no sizes (sizing's seconds count)",
                [
                    "train",
                    "--corpus",
                    file("own.txt", b"the time traveller smiled round at us. " * 500),
                    "--time-budget",
                    "4s",
                    "--out",
                    str(d / "new"),
                ],
            ),
            ("--ema 1", ["train", *TINY, "--ema", "1", "--out", str(d / "new")]),
            ("--weight-drop 1", ["train", *TINY, "--weight-drop", "1", "--out", str(d / "new")]),
            (
                "--weight-drop with --model scratch",
                ["train", *TINY, "--model", "scratch", "--weight-drop", "0.3", "--out", str(d / "new")],
            ),
            (
                "--tensorboard into a file",
                ["train", *TINY, "--tensorboard", file("events.txt", b"not a directory"), "--out", str(d / "new")],
            ),
            ("--resume with a model option", ["train", "--resume", str(good), "--hidden", "32"]),
            ("compress a missing file", ["compress", str(d / "missing.txt")]),
            ("compress a directory", ["compress", str(d)]),
            ("compress a FIFO", ["compress", fifo]),
            ("compress onto an existing output", ["compress", "-k", file("c.txt", b"x"), "-o", file("c.out", b"y")]),
            ("compress a .rnz file", ["compress", file("again.rnz", b"x")]),
            ("decompress a file without .rnz", ["decompress", file("plain.txt", b"x")]),
            ("decompress a gzip file", ["decompress", "-c", file("g.rnz", b"\x1f\x8b\x08\x00" + bytes(20))]),
            (
                "decompress a truncated .rnz",
                ["decompress", "-c", file("cut.rnz", b"RNZ\x1a\x01\x00\x02\x0c\x030.5\x01\x10\x00")],
            ),
            (
                "decompress a .rnz of an older model",
                ["decompress", "-c", file("m1.rnz", b"RNZ\x1a\x01\x00\x01\x0c\x030.5\x01\x10\x00")],
            ),
            (
                "decompress a .rnz of another format version",
                ["decompress", "-c", file("v9.rnz", b"RNZ\x1a\x09\x00\x01\x0c\x030.5")],
            ),
            (
                "compress --model of a directory that holds no run",
                ["compress", "-c", "--model", str(d), file("m.txt", b"x")],
            ),
            ("decompress a --model file without --model", ["decompress", "-c", with_run]),
            ("decompress a --model file with another run", ["decompress", "-c", "--model", str(raw), with_run]),
        ]
        print("| input | what rnnkit prints | exit status |")
        print("| --- | --- | --- |")
        for name, args in cases:
            proc = rnnkit(*args, cwd=d)
            shown = (proc.stderr.strip() or proc.stdout.strip()).replace(str(d), "TMP")
            if shown.startswith("usage:"):  # argparse: its usage lines, then the one that says what is wrong
                shown = "usage: ... / " + shown.splitlines()[-1]
            shown = shown.replace("\n", " / ")
            assert "Traceback" not in proc.stderr, proc.stderr
            print(f"| {name} | `{shown[:230]}` | {proc.returncode} |")

        # torchrun's variables, as a process started by hand might have them
        port = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
        for name, env in (
            ("RANK=0 alone (torchrun's variables half set)", {"RANK": "0"}),
            ("rank 1 of that (says nothing: rank 0 does)", {"RANK": "1"}),
            ("WORLD_SIZE=2 and --batch-size 63", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **port}),
            ("WORLD_SIZE=two", {"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", **port}),
        ):
            clean = {
                k: v
                for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
            }
            proc = subprocess.run(
                [sys.executable, "-m", "rnnkit", "train", *TINY, "--batch-size", "63", "--out", str(d / "new")],
                cwd=d,
                capture_output=True,
                text=True,
                env={**clean, **env},
            )
            assert "Traceback" not in proc.stderr, proc.stderr
            print(f"| {name} | `{proc.stderr.strip().replace(str(d), 'TMP')[:230]}` | {proc.returncode} |")

        from rnnkit.files import DirectoryLock

        with DirectoryLock(d / "busy"):
            proc = rnnkit("train", *TINY, "--out", str(d / "busy"), cwd=d)
        print(f"| --out held by another process | `{proc.stderr.strip().replace(str(d), 'TMP')}` | {proc.returncode} |")
        book = d / "book.txt"
        book.write_text("the quick brown fox jumps over the lazy dog " * 40)
        assert (
            rnnkit("train", *TINY, "--corpus", str(book), "--epochs", "1", "--out", str(d / "bk"), cwd=d).returncode
            == 0
        )
        book.write_text("the quick brown fox jumps over the lazy cat " * 40)
        proc = rnnkit("train", "--resume", str(d / "bk"), "--epochs", "2", cwd=d)
        print(
            f"| --resume after the corpus changed | `{proc.stderr.strip().replace(str(d), 'TMP')[:230]}` | "
            f"{proc.returncode} |"
        )

        # signals mid-epoch, then --resume
        for signum, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP")):
            run = d / name
            proc = subprocess.Popen(
                [sys.executable, "-m", "rnnkit", "train", *TINY, "--epochs", "2000", "--out", str(run)],
                cwd=d,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            for line in proc.stdout:
                if line.startswith("epoch    5"):
                    proc.send_signal(signum)
                    break
            _, err = proc.communicate()
            shown = err.strip().replace(str(d), "TMP").replace("\n", " / ")
            print(f"| {name} mid-training | `{shown}` | {proc.returncode} |")

        # Ctrl-C mid-epoch, then --resume
        run = d / "interrupted"
        # SIGINT at its default disposition in the child even where this script runs in the background
        # (a shell starts background jobs with SIGINT ignored, and children inherit that)
        proc = subprocess.Popen(
            [sys.executable, "-m", "rnnkit", "train", *TINY, "--epochs", "200", "--out", str(run)],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        for line in proc.stdout:
            if line.startswith("epoch    5"):
                time.sleep(0.02)
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate()
        shown = err.strip().replace(str(d), "TMP").replace("\n", " / ")
        print(f"| SIGINT mid-training | `{shown}` | {proc.returncode} |")
        resumed = rnnkit("train", "--resume", str(run), "--quiet", cwd=d)
        print(
            f"| then `--resume` | `{resumed.stdout.strip().splitlines()[0].replace(str(d), 'TMP')}` ... "
            f"| {resumed.returncode} |"
        )
        print(f"\nearlier good run unchanged by all of the above: {digest(good) == before}")


if __name__ == "__main__":
    main()
