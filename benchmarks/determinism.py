#!/usr/bin/env python3
"""Do fresh CPU training processes repeat bit for bit at the default thread count? Prints JSON.

For each model kind, ``--processes`` fresh processes each run the same small ``rnnkit train``
(through the CLI's own ``main``: The Time Machine, fixed seed, default threads) and print the sha1
of the weights it saved; a kind passes when all its processes give one digest.

    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/determinism.py --processes 40
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import time

CHILD = """
import hashlib, sys, tempfile, torch
from safetensors.torch import load_file
from rnnkit.checkpoint import checkpoint_path
from rnnkit.cli import main
kind, out = sys.argv[1], tempfile.mkdtemp()
layers = "2" if kind in ("gru", "lstm") else "1"
status = main(["train", "--model", kind, "--hidden", "64", "--layers", layers, "--batch-size", "128",
               "--num-steps", "16", "--num-train", "4096", "--num-val", "256", "--epochs", "3",
               "--optimizer", "adam", "--lr", "0.01", "--seed", "0", "--out", out, "--quiet"])
assert status == 0, status
weights = load_file(str(checkpoint_path(out)))
print(torch.get_num_threads(), hashlib.sha1(b"".join(weights[k].numpy().tobytes() for k in sorted(weights)))
      .hexdigest())
"""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--kinds", nargs="+", default=["rnn", "scratch", "gru", "lstm"])
    args = parser.parse_args()
    results = {}
    for kind in args.kinds:
        started = time.perf_counter()
        digests = collections.Counter()
        threads = set()
        for _ in range(args.processes):
            out = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, check=True)
            count, digest = out.stdout.splitlines()[-1].split()
            threads.add(int(count))
            digests[digest] += 1
        results[kind] = {"processes": args.processes, "distinct_results": len(digests),
                         "counts": sorted(digests.values(), reverse=True), "threads": sorted(threads),
                         "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps({kind: results[kind]}), file=sys.stderr, flush=True)
    import torch

    print(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "results": results,
                      "all_identical": all(r["distinct_results"] == 1 for r in results.values())}, indent=1))


if __name__ == "__main__":
    main()
