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
import os
import subprocess
import sys
import time

from common import cpu_model

CHILD = """
import hashlib, sys, tempfile, torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from rnnkit.checkpoint import checkpoint_path
from rnnkit.cli import main


class Trace(TorchDispatchMode):
    # Every ATen operation the main thread runs, with the sha1 of its floating-point outputs.
    def __init__(self):
        super().__init__()
        self.lines = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        digest = hashlib.sha1()
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.dtype.is_floating_point:
                digest.update(o.detach().contiguous().numpy().tobytes())
        self.lines.append(f"{func} {digest.hexdigest()[:16]}")
        return out


kind, trace_file, out = sys.argv[1], sys.argv[2], tempfile.mkdtemp()
layers = "2" if kind in ("gru", "lstm") else "1"
args = ["train", "--model", kind, "--hidden", "64", "--layers", layers, "--batch-size", "128",
        "--num-steps", "16", "--num-train", "4096", "--num-val", "256", "--epochs", "3",
        "--optimizer", "adam", "--lr", "0.01", "--seed", "0", "--out", out, "--quiet"]
if trace_file != "-":
    with Trace() as trace:
        status = main(args)
    open(trace_file, "w").write("\\n".join(trace.lines))
else:
    status = main(args)
assert status == 0, status
weights = load_file(str(checkpoint_path(out)))
print(torch.get_num_threads(), hashlib.sha1(b"".join(weights[k].numpy().tobytes() for k in sorted(weights)))
      .hexdigest())
"""


def first_difference(majority: str, minority: str) -> dict:
    """The first operation whose output digest differs between two traces."""
    a, b = open(majority).read().splitlines(), open(minority).read().splitlines()
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return {"operation_index": index, "majority": x, "minority": y, "previous": a[max(0, index - 3) : index]}
    return {"operation_index": None, "lengths": [len(a), len(b)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=40)
    parser.add_argument("--kinds", nargs="+", default=["rnn", "scratch", "gru", "lstm"])
    parser.add_argument(
        "--concurrent",
        type=int,
        default=1,
        help="processes run at once (more than the cores: each process's threads compete for them)",
    )
    parser.add_argument(
        "--trace-dir",
        help="record every operation's output digest per process here, and name "
        "the first operation where a minority result departs from the majority",
    )
    args = parser.parse_args()
    results = {}
    for kind in args.kinds:
        started = time.perf_counter()
        digests = collections.Counter()
        threads = set()
        traces = {}
        env = {**os.environ, "RNNKIT_NO_KERNEL": "1"} if args.trace_dir else None
        # a trace sees the operations of the main thread only, and would deadlock on the compiled kernel's
        # worker threads (they run ATen operations while the main thread holds the GIL): trace without it
        traces_of = [f"{args.trace_dir}/{kind}-{i}.txt" if args.trace_dir else "-" for i in range(args.processes)]
        for first in range(0, args.processes, args.concurrent):
            batch = traces_of[first : first + args.concurrent]
            running = [
                (
                    trace,
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD, kind, trace],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env,
                    ),
                )
                for trace in batch
            ]
            for trace, process in running:
                stdout, stderr = process.communicate()
                if process.returncode != 0:
                    raise SystemExit(f"a {kind} process failed ({process.returncode}):\n{stderr}")
                count, digest = stdout.splitlines()[-1].split()
                threads.add(int(count))
                digests[digest] += 1
                traces.setdefault(digest, trace)
        results[kind] = {
            "processes": args.processes,
            "distinct_results": len(digests),
            "counts": sorted(digests.values(), reverse=True),
            "threads": sorted(threads),
            "concurrent": args.concurrent,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if args.trace_dir and len(digests) > 1:
            results[kind]["first_difference"] = first_difference(
                traces[digests.most_common()[0][0]], traces[digests.most_common()[-1][0]]
            )
        print(json.dumps({kind: results[kind]}), file=sys.stderr, flush=True)
    import torch

    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "results": results,
                "all_identical": all(r["distinct_results"] == 1 for r in results.values()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
