#!/usr/bin/env python3
"""Do matrix products on this CPU give the same bits whatever the operands' addresses? Prints JSON.

One candidate cause of run-to-run last-bit differences (the hardening issue's item 9) is a BLAS
whose kernels depend on the operands' alignment beyond the 64 bytes PyTorch guarantees, with
buffer addresses that vary between processes. This places the same operands at 64 different
offsets (4-byte steps) and compares each product, ``a @ b`` and ``b.T @ a.T``, bit for bit with
the product at the allocator's own address, for the shapes of rnnkit's training steps, at one and
two threads. Run it under ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (and ``ATEN_CPU_CAPABILITY=avx2``) to
see another CPU's code path.

    .venv/bin/python benchmarks/gemm_alignment.py
"""

import argparse
import json
import os

import torch

from common import cpu_model

SHAPES = [
    ((2048, 64), (64, 192)),
    ((128, 64), (64, 192)),
    ((2048, 192), (192, 64)),
    ((64, 2048), (2048, 192)),
    ((1024, 32), (32, 28)),
    ((16, 64), (64, 192)),
]


def placed(t: torch.Tensor, offset: int) -> torch.Tensor:
    buffer = torch.empty(t.numel() + 256)
    view = buffer[offset : offset + t.numel()].view(t.shape)
    view.copy_(t)
    return view


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    torch.manual_seed(0)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for (m, k), (_, n) in SHAPES:
            a, b = torch.randn(m, k), torch.randn(k, n)
            ref, ref_t = a @ b, b.T @ a.T
            differ = 0
            for offset in range(64):
                pa, pb = placed(a, offset), placed(b, (offset * 7) % 64)
                differ += (not torch.equal(pa @ pb, ref)) + (not torch.equal(pb.T @ pa.T, ref_t))
            rows.append({"threads": threads, "a": [m, k], "b": [k, n], "products": 128, "differing": differ})
    env = {k: os.environ[k] for k in ("MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY") if k in os.environ}
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "torch": torch.__version__,
                "environment": env,
                "results": rows,
                "all_identical": all(r["differing"] == 0 for r in rows),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
