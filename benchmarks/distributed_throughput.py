#!/usr/bin/env python3
"""Training throughput from one process to two (``torchrun``, gloo, data parallel) on this machine.
Prints JSON.

Three ways to spend the same cores, on the same run (the same global batch):
``1 process x 1 thread``, ``1 process x N threads`` (PyTorch's intra-op threads) and
``N processes x 1 thread`` (``torchrun --standalone --nproc-per-node N``). Tokens/s is what the
run itself reports per epoch in ``metrics.jsonl`` (training time only, validation excluded); each
setting is repeated, alternating, and the median kept. Two models: the book's (one-hot RNN, hidden
32, batch 1024 x 32, The Time Machine) and a 2x256 LSTM from a prepared memory-mapped directory of
Tiny Shakespeare (batch 64 x 128).

    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/distributed_throughput.py \\
        > benchmarks/results/distributed_throughput.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model

MODELS = {
    "book": ["--epochs", "8"],  # the book's configuration otherwise
    "lstm-2x256-data": [
        "--model",
        "lstm",
        "--layers",
        "2",
        "--hidden",
        "256",
        "--embedding",
        "64",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--batch-size",
        "64",
        "--num-steps",
        "128",
        "--max-steps",
        "30",
        "--val-tokens",
        "5000",
    ],
}


def tokens_per_s(command: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*command, "--out", str(out), "--quiet", "--sample-every", "0", "--force"],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["tokens_per_s"] for row in rows[1:] or rows)  # epoch 1 warms caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    n = args.processes
    work = Path(tempfile.mkdtemp(prefix="rnnkit-dist-"))
    source = Path(os.environ.get("RNNKIT_DATA_DIR", "../shared/data")) / "tinyshakespeare.txt"
    subprocess.run(
        [sys.executable, "-m", "rnnkit.cli", "prepare", str(source), "--out", str(work / "data")],
        check=True,
        capture_output=True,
    )
    rnnkit = [sys.executable, "-m", "rnnkit.cli", "train"]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "-m",
        "rnnkit.cli",
        "train",
    ]
    settings = {
        "1 process x 1 thread": (rnnkit, 1),
        f"1 process x {n} threads": (rnnkit, n),
        f"{n} processes x 1 thread": (torchrun, 1),
    }
    results = {}
    for model in args.models:
        options = MODELS[model]
        options = [*options, "--data", str(work / "data")] if model.endswith("-data") else options
        samples: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, (launcher, threads) in settings.items():
                samples[name].append(tokens_per_s([*launcher, *options], threads, work / "run"))
        medians = {name: round(statistics.median(values)) for name, values in samples.items()}
        one = medians["1 process x 1 thread"]
        results[model] = {
            "tokens_per_s_median": medians,
            "tokens_per_s_all": samples,
            "speedup_vs_1_process_1_thread": {k: round(v / one, 2) for k, v in medians.items()},
        }
        print(json.dumps({model: medians}), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "distributed_throughput",
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "processes": n,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d"),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
