#!/usr/bin/env python3
"""rnnkit vs the real d2l 1.0.3 on the book's configuration, side by side on this machine.

Runs, alternately, once per seed of ``--seeds`` (and ``--repeats`` times each), in fresh processes:
  - d2l:        ../shared/bench/d2l_reference.py (real d2l, in the venv made by setup-reference.sh)
  - rnnkit:     rnnkit's Trainer with the same configuration (this file, ``--child rnnkit``)
  - rnnkit.d2l: the book's code on ``from rnnkit import d2l`` (``--child compat``), when present
for the concise (§9.6) and from-scratch (§9.5) models, and prints one JSON object: per run wall
time of training, tokens/s, validation perplexity (exp of the mean cross-entropy over every token
of the 5000 validation windows, as the reference computes it), peak RSS; medians; ratios.

    .venv/bin/python benchmarks/vs_d2l.py --seeds 0-4
    .venv/bin/python benchmarks/vs_d2l.py --seeds 0-4 --emulate-avx2   # both sides as on a CPU without AVX-512

Validation perplexity swings about 0.1 between seeds: compare medians over seeds, never one seed.
The JSON names the CPU (``lscpu``'s model name and vector flags) and whether AVX2 was emulated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import AVX2_EMULATION, BOOK, book_model, cpu_flags, cpu_model, d2l_perplexity

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def child_rnnkit(impl: str, epochs: int, data: str, seed: int) -> dict:
    """Train with rnnkit's own Trainer; report like the reference runner."""
    import torch

    from rnnkit.train import TrainConfig, Trainer, keep_freed_memory, perplexity, window_nll

    keep_freed_memory()  # as `rnnkit train` does (process-wide, so the library leaves it to the caller)
    config = TrainConfig(
        model="rnn" if impl == "concise" else "scratch",
        epochs=epochs,
        device="cpu",
        corpus=data,
        **{k: v for k, v in BOOK.items() if k not in ("epochs", "seed")},
        seed=seed,
    )
    trainer = Trainer(config)
    t0 = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - t0
    from rnnkit.generate import predict

    return {
        "fit_s": round(fit_s, 3),
        "train_ppl": round(perplexity(*window_nll(trainer.model, trainer.data.train)), 4),
        "val_ppl": round(perplexity(*window_nll(trainer.model, trainer.data.val_windows)), 4),
        "predict": predict(trainer.model, trainer.vocab, "it has", 20),
        "threads": torch.get_num_threads(),
    }


def child_compat(impl: str, epochs: int, data: str, seed: int) -> dict:
    """The book's cells on rnnkit.d2l (what the reference runner does on real d2l)."""
    import torch

    from rnnkit import d2l

    torch.manual_seed(seed)
    data_module = d2l.TimeMachine(batch_size=BOOK["batch_size"], num_steps=BOOK["num_steps"])
    model = book_model(d2l, data_module.vocab, impl)
    model.board.display = False
    trainer = d2l.Trainer(max_epochs=epochs, gradient_clip_val=BOOK["clip"], num_gpus=0)
    t0 = time.perf_counter()
    trainer.fit(model, data_module)
    fit_s = time.perf_counter() - t0
    return {
        "fit_s": round(fit_s, 3),
        "train_ppl": round(d2l_perplexity(model, data_module.train_dataloader()), 4),
        "val_ppl": round(d2l_perplexity(model, data_module.val_dataloader()), 4),
        "predict": model.predict("it has", 20, data_module.vocab),
        "threads": torch.get_num_threads(),
    }


def peak_rss_mib_of(cmd: list[str], env: dict) -> tuple[dict, float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1, help="runs per seed")
    p.add_argument("--seeds", default="0-4", help="seeds to run, e.g. 0-4 or 0,3")
    p.add_argument(
        "--emulate-avx2",
        action="store_true",
        help=f"run both sides with {' '.join(f'{k}={v}' for k, v in AVX2_EMULATION.items())}",
    )
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=BOOK["epochs"])
    p.add_argument("--impls", default="concise,scratch")
    p.add_argument(
        "--d2l-python",
        default=str(ROOT / ".venv-d2l-ref" / "bin" / "python"),
        help="python of the venv made by ../shared/bench/setup-reference.sh",
    )
    p.add_argument("--data", default=str(SHARED / "data" / "timemachine.txt"))
    p.add_argument("--no-compat", action="store_true", help="skip the rnnkit.d2l runs")
    p.add_argument("--child", choices=["rnnkit", "compat"], help=argparse.SUPPRESS)
    p.add_argument("--impl", default="concise", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        fn = child_rnnkit if a.child == "rnnkit" else child_compat
        print(json.dumps(fn(a.impl, a.epochs, a.data, a.seed)))
        return

    first, _, last = a.seeds.partition("-")
    seeds = list(range(int(first), int(last) + 1)) if last else [int(s) for s in a.seeds.split(",")]
    env = dict(os.environ, RNNKIT_DATA_DIR=str(Path(a.data).parent), **(AVX2_EMULATION if a.emulate_avx2 else {}))
    subprocess.run(
        [sys.executable, "-c", "from rnnkit import kernels; kernels.rnn_lm_kernel()"], env=env, check=True
    )  # a kernel build is not timed
    try:
        import rnnkit.d2l  # noqa: F401

        have_compat = not a.no_compat
    except ImportError:
        have_compat = False
    runners = {
        "d2l": lambda impl, seed: [
            a.d2l_python,
            str(SHARED / "bench" / "d2l_reference.py"),
            "--impl",
            impl,
            "--epochs",
            str(a.epochs),
            "--data",
            a.data,
            "--seed",
            str(seed),
        ],
        "rnnkit": lambda impl, seed: [
            sys.executable,
            __file__,
            "--child",
            "rnnkit",
            "--impl",
            impl,
            "--epochs",
            str(a.epochs),
            "--data",
            a.data,
            "--seed",
            str(seed),
        ],
    }
    if have_compat:
        runners["rnnkit.d2l"] = lambda impl, seed: [
            sys.executable,
            __file__,
            "--child",
            "compat",
            "--impl",
            impl,
            "--epochs",
            str(a.epochs),
            "--data",
            a.data,
            "--seed",
            str(seed),
        ]
    tokens = a.epochs * 10000 * BOOK["num_steps"]
    runs = []
    for repeat in range(a.repeats):
        for seed in seeds:
            for impl in a.impls.split(","):
                for name, make in runners.items():
                    result, rss = peak_rss_mib_of(make(impl, seed), env)
                    row = {
                        "repeat": repeat,
                        "seed": seed,
                        "impl": impl,
                        "runner": name,
                        "fit_s": result["fit_s"],
                        "tokens_per_s": round(tokens / result["fit_s"]),
                        "val_ppl": result["val_ppl"],
                        "train_ppl": result["train_ppl"],
                        "peak_rss_mib": round(rss, 1),
                        "predict": result["predict"],
                        "threads": result["threads"],
                    }
                    runs.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    medians = {}
    for impl in a.impls.split(","):
        for name in runners:
            rows = [r for r in runs if r["impl"] == impl and r["runner"] == name]
            medians[f"{name}/{impl}"] = {
                k: statistics.median(r[k] for r in rows) for k in ("fit_s", "tokens_per_s", "val_ppl", "peak_rss_mib")
            }
    ratios = {}
    for impl in a.impls.split(","):
        for name in runners:
            if name != "d2l":
                ratios[f"{name}/{impl} speedup vs d2l"] = round(
                    medians[f"d2l/{impl}"]["fit_s"] / medians[f"{name}/{impl}"]["fit_s"], 2
                )
    val = {}
    for impl in a.impls.split(","):
        for name in runners:
            if name != "d2l":
                relative = medians[f"{name}/{impl}"]["val_ppl"] / medians[f"d2l/{impl}"]["val_ppl"] - 1
                val[f"{name}/{impl} val ppl vs d2l"] = round(relative, 4)
    print(
        json.dumps(
            {
                "config": {**BOOK, "epochs": a.epochs},
                "repeats": a.repeats,
                "seeds": seeds,
                "avx2_emulated": a.emulate_avx2,
                "emulation_env": AVX2_EMULATION if a.emulate_avx2 else {},
                "machine": {
                    "cpu": cpu_model(),
                    "cpu_flags": cpu_flags(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "val_ppl_median_relative_to_d2l": val,
                "median": medians,
                "ratios": ratios,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
