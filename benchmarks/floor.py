#!/usr/bin/env python3
"""The floor for the book's configuration: FLOPs of one training step, this CPU's GEMM speed for
exactly those shapes, and how far each implementation is from the resulting time.

Book configuration: batch B=1024, num_steps T=32, hidden H=32, vocabulary V=28; one epoch is 10
training steps (10000 windows) plus 5 validation forward passes (5000 windows).

GEMMs of one training step (FLOPs = 2*m*n*k):
  forward   recurrence   T x (B,H)@(H,H)        head     (TB,H)@(H,V)
            one-hot input (TB,V)@(V,H)  -- the book's; rnnkit does a row lookup instead
  backward  recurrence   T x (B,H)@(H,H) for dH, (H,TB)@(TB,H) for dW_hh
            head         (TB,V)@(V,H) for dH, (V,TB)@(TB,H) for dW_hq
            one-hot input (V,TB)@(TB,H) for dW_xh -- the book's; rnnkit adds rows instead

The floor counts only these GEMMs at their measured speed (hot caches, same threads): everything
else (tanh, softmax, lookups, the optimizer) is above it.

    .venv/bin/python benchmarks/floor.py [--vs-d2l /tmp/vs_d2l.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from common import AVX2_EMULATION, cpu_flags, cpu_model
from rnnkit.models import build_model
from rnnkit.train import compute_gradients, keep_freed_memory

B, T, H, V = 1024, 32, 32, 28


def gemm_seconds(m: int, k: int, n: int, repeats: int = 7) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(10):
        torch.mm(a, b, out=out)
    reps = max(20, int(2e8 / (2 * m * n * k)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vs-d2l", help="JSON printed by benchmarks/vs_d2l.py, for the measured epoch times")
    a = p.parse_args()
    keep_freed_memory()
    TB = T * B
    # name: (m, k, n), {implementation: (count per training step, count per validation forward)}
    shapes = {
        "recurrence step (B,H)@(H,H)": ((B, H, H), {"rnnkit": (2 * T, T), "book": (2 * T, T)}),
        "dW_hh (H,TB)@(TB,H)": ((H, TB, H), {"rnnkit": (1, 0), "book": (1, 0)}),
        "head (TB,H)@(H,V)": ((TB, H, V), {"rnnkit": (1, 1), "book": (1, 1)}),
        "head dH (TB,V)@(V,H)": ((TB, V, H), {"rnnkit": (1, 0), "book": (1, 0)}),
        "head dW (V,TB)@(TB,H)": ((V, TB, H), {"rnnkit": (1, 0), "book": (1, 0)}),
        "one-hot input (TB,V)@(V,H)": ((TB, V, H), {"rnnkit": (0, 0), "book": (1, 1)}),
        "one-hot dW_xh (V,TB)@(TB,H)": ((V, TB, H), {"rnnkit": (0, 0), "book": (1, 0)}),
    }
    rows = {}
    floor = {impl: {"flops": 0, "step_s": 0.0, "val_s": 0.0} for impl in ("rnnkit", "book")}
    for name, ((m, k, n), counts) in shapes.items():
        seconds = gemm_seconds(m, k, n)
        flops = 2 * m * k * n
        rows[name] = {
            "shape": [m, k, n],
            "gflops_per_s": round(flops / seconds / 1e9, 1),
            "us": round(seconds * 1e6, 1),
        }
        for impl, (per_step, per_val) in counts.items():
            floor[impl]["flops"] += per_step * flops
            floor[impl]["step_s"] += per_step * seconds
            floor[impl]["val_s"] += per_val * seconds
    result = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "emulation_env": {k: os.environ[k] for k in AVX2_EMULATION if k in os.environ},
        "config": {"batch": B, "num_steps": T, "hidden": H, "vocab": V},
        "gemms": rows,
        "floor": {},
    }
    for impl, f in floor.items():
        result["floor"][impl] = {
            "gemm_mflop_per_step": round(f["flops"] / 1e6, 1),
            "gemm_floor_ms_per_step": round(f["step_s"] * 1e3, 3),
            "gemm_floor_s_per_100_epochs": round(100 * (10 * f["step_s"] + 5 * f["val_s"]), 3),
        }

    # rnnkit's measured training step on this batch shape
    torch.manual_seed(0)
    model = build_model("rnn", V, H)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step():
        compute_gradients(model, X, Y, 1.0)
        opt.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        times.append((time.perf_counter() - t0) / 20)
    measured = statistics.median(times)
    result["rnnkit_step_ms"] = round(measured * 1e3, 3)
    result["rnnkit_step_x_floor"] = round(measured / floor["rnnkit"]["step_s"], 2)
    if a.vs_d2l:
        medians = json.loads(Path(a.vs_d2l).read_text())["median"]
        result["measured_100_epochs"] = {}
        for key, value in medians.items():
            impl = "book" if key.startswith(("d2l/", "rnnkit.d2l/")) else "rnnkit"
            floor_s = result["floor"][impl]["gemm_floor_s_per_100_epochs"]
            result["measured_100_epochs"][key] = {
                "fit_s": value["fit_s"],
                "x_floor": round(value["fit_s"] / floor_s, 1),
            }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
