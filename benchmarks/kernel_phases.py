#!/usr/bin/env python3
"""Where the book's training step goes, phase by phase, in rnnkit's CPU kernel. Prints JSON.

Builds the kernel with ``-DRNNKIT_PROFILE`` (its ``TIMED`` phases add up their seconds per batch
chunk) and runs the book's step (batch 1024 x 32, hidden 32, vocabulary 28, SGD with clipping) with
the given threads. Reports per phase the milliseconds per step summed over the chunks (CPU time:
with two threads, two chunks run at once), and beside them the step's wall time with the
ordinary kernel, split into the kernel call, clipping and the optimizer step.

    .venv/bin/python benchmarks/kernel_phases.py [--threads 2]
    # an AVX2-only CPU, emulated on one with AVX-512:
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        RNNKIT_KERNEL_CFLAGS=-mno-avx512f .venv/bin/python benchmarks/kernel_phases.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from common import AVX2_EMULATION, cpu_flags, cpu_model

PHASES = [
    "lookup rows",
    "recurrence GEMM",
    "tanh",
    "head GEMM",
    "softmax cross-entropy",
    "head dH GEMM",
    "head dW GEMM",
    "head db GEMV",
    "backward recurrence GEMM",
    "tanh backward",
    "table gradient rows",
    "dW_hh GEMM",
]
B, T, H, V = 1024, 32, 32, 28


def timed(fn, repeats: int = 7, inner: int = 20) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rnnkit import kernels
    from rnnkit.models import build_model
    from rnnkit.train import clip_gradients, compute_gradients, keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    model = build_model("rnn", V, H)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    kernel = kernels.rnn_lm_kernel()
    assert model.prepare_kernel(), "the kernel is not built here"

    def step():
        compute_gradients(model, X, Y, 1.0)
        optimizer.step()

    step_s = timed(step)
    loss_only = timed(lambda: model.loss(X, Y)[0].backward())
    clip_s = timed(lambda: clip_gradients(model.parameters(), 1.0))
    optimizer_s = timed(optimizer.step)

    table, W = model.rnn.one_hot_weights()[:2]
    inputs = (
        X,
        Y,
        torch.zeros(B, H),
        table.detach(),
        W.detach(),
        model.head.weight.detach(),
        model.head.bias.detach(),
        False,
        True,
    )
    call_s = timed(lambda: kernel.rnn_lm_loss(*inputs))

    os.environ["RNNKIT_KERNEL_CFLAGS"] = (os.environ.get("RNNKIT_KERNEL_CFLAGS", "") + " -DRNNKIT_PROFILE").strip()
    kernels._tried, kernels._kernel = False, None
    profiled = kernels.rnn_lm_kernel()
    for _ in range(5):
        profiled.rnn_lm_loss(*inputs)
    profiled.rnn_lm_profile()
    runs = 20
    t0 = time.perf_counter()
    for _ in range(runs):
        profiled.rnn_lm_loss(*inputs)
    profiled_call_s = (time.perf_counter() - t0) / runs
    phases = profiled.rnn_lm_profile()
    per_step = {name: round(phases[i] / runs * 1e3, 3) for i, name in enumerate(PHASES)}
    print(
        json.dumps(
            {
                "benchmark": "kernel_phases",
                "cpu": cpu_model(),
                "cpu_flags": cpu_flags(),
                "threads": args.threads,
                "env": {k: os.environ[k] for k in AVX2_EMULATION if k in os.environ},
                "wall_ms_per_step": {
                    "training step": round(step_s * 1e3, 3),
                    "model.loss + backward (autograd around the kernel)": round(loss_only * 1e3, 3),
                    "kernel call": round(call_s * 1e3, 3),
                    "clipping": round(clip_s * 1e3, 3),
                    "optimizer step": round(optimizer_s * 1e3, 3),
                    "profiled kernel call": round(profiled_call_s * 1e3, 3),
                },
                "cpu_ms_per_step_by_phase": per_step,
                "cpu_ms_per_step_phases_total": round(sum(per_step.values()), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
