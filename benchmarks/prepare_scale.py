#!/usr/bin/env python3
"""Corpora bigger than memory: ``rnnkit prepare`` time and peak memory, and training from the
memory map (``--data``): peak memory and tokens/s, as the corpus grows 1x, 10x, 100x, 1000x Tiny
Shakespeare (1.1 MB to 1.1 GB, made here by concatenation and deleted afterwards). Prints JSON.

Each step runs as its own process; its peak resident memory is the kernel's ``ru_maxrss`` for
it. Training: a fixed 2x128 LSTM for a fixed wall-clock time (``--time-budget``), validating on
the first 20,000 held-out tokens.

    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/prepare_scale.py > benchmarks/results/prepare_scale.json
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model

TRAIN = [
    "--model",
    "lstm",
    "--layers",
    "2",
    "--hidden",
    "128",
    "--embedding",
    "32",
    "--optimizer",
    "adamw",
    "--lr",
    "0.003",
    "--batch-size",
    "32",
    "--num-steps",
    "64",
    "--val-tokens",
    "20000",
    "--quiet",
    "--sample-every",
    "0",
]


def run_measured(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB, stdout) of one rnnkit process."""
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the rnnkit command itself, its output to a file
        with open(f"/tmp/rnnkit-scale-{os.getpid()}.out", "w") as out:
            os.dup2(out.fileno(), 1)
            os.execv(sys.executable, [sys.executable, "-m", "rnnkit.cli", *args])
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    output = Path(f"/tmp/rnnkit-scale-{pid}.out")
    text = output.read_text()
    output.unlink()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rnnkit {args[0]} failed ({os.waitstatus_to_exitcode(status)}): {text}")
    return seconds, round(usage.ru_maxrss / 1024), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--train-seconds", type=float, default=30.0)
    args = parser.parse_args()
    source = Path(os.environ.get("RNNKIT_DATA_DIR", "../shared/data")) / "tinyshakespeare.txt"
    text = source.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="rnnkit-scale-"))
    rows = []
    try:
        for copies in args.copies:
            corpus = work / f"shakespeare-x{copies}.txt"
            with open(corpus, "wb") as f:
                for _ in range(copies):
                    f.write(text)
            data = work / f"data-x{copies}"
            prep_s, prep_mib, _ = run_measured(["prepare", str(corpus), "--out", str(data)])
            corpus.unlink()
            run = work / f"run-x{copies}"
            train_s, train_mib, _ = run_measured(
                ["train", "--data", str(data), *TRAIN, "--time-budget", f"{args.train_seconds}s", "--out", str(run)]
            )
            evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            manifest = json.loads((data / "manifest.json").read_text())
            row = {
                "copies": copies,
                "corpus_bytes": manifest["source_bytes"],
                "train_tokens": manifest["files"]["train"]["tokens"],
                "prepare_seconds": round(prep_s, 2),
                "prepare_peak_rss_mib": prep_mib,
                "prepare_mb_per_s": round(manifest["source_bytes"] / prep_s / 1e6, 1),
                "train_wall_seconds": round(train_s, 1),
                "train_peak_rss_mib": train_mib,
                "train_tokens_per_s": metrics[-1]["tokens_per_s"] if metrics else None,
                "steps": evals[-1]["step"],
                "final_val_loss": round(evals[-1]["val_loss"], 4),
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            shutil.rmtree(data)
            shutil.rmtree(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "train": TRAIN,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
