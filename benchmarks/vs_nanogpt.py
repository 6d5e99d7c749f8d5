#!/usr/bin/env python3
"""rnnkit's time-budgeted training against nanoGPT's CPU recipe, side by side; prints JSON.

Each repeat runs nanoGPT's recipe (``../shared/bench/nanogpt_reference.py``: unmodified nanoGPT,
4 layers x 128, 2000 iterations) and then ``rnnkit train --corpus CORPUS --time-budget T`` with
``T`` = that run's measured wall time and no model options (rnnkit sizes the model itself; raw
characters, the last 10% held out, as nanoGPT's prepare does). Validation: nanoGPT's mean
cross-entropy with the most context its block allows (``val_loss_sliding``), rnnkit's over the
same characters carrying its state through them (its best checkpoint, as ``rnnkit eval`` uses).
Medians over the repeats; a PNG of rnnkit's validation loss against wall-clock seconds, with
nanoGPT's final loss at its wall time.

    .venv/bin/python benchmarks/vs_nanogpt.py --repeats 3 --png benchmarks/results/vs_nanogpt.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"



def nanogpt(corpus: Path, seed: int) -> dict:
    out = subprocess.run([sys.executable, str(SHARED / "bench" / "nanogpt_reference.py"), "--corpus", str(corpus),
                          "--seed", str(seed)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rnnkit(corpus: Path, budget_s: float, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "rnnkit.cli", "train", "--corpus", str(corpus),
                              "--time-budget", f"{budget_s:.2f}s", "--seed", str(seed), "--sample-every", "0",
                              "--out", str(run), *extra], capture_output=True, text=True, check=True)
        wall_s = time.perf_counter() - started
        evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
        meta = json.loads((run / "config.json").read_text())
        sized = next((line for line in out.stdout.splitlines() if line.startswith("sized for")), None)
        return {"budget_s": round(budget_s, 2), "wall_s": round(wall_s, 2), "best_val_loss": meta["best"]["val_loss"],
                "last_val_loss": evals[-1]["val_loss"], "sized": sized, "config": meta["config"],
                "curve": [(e["seconds"], e["val_loss"]) for e in evals]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(SHARED / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-factor", type=float, default=1.0, help="rnnkit's budget = factor x nanoGPT's time")
    parser.add_argument("--png", help="write the validation-loss-against-seconds plot here")
    parser.add_argument("--rnnkit-args", nargs=argparse.REMAINDER, default=[], help="extra rnnkit train options")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    rows = []
    for repeat in range(args.repeats):
        ref = nanogpt(corpus, 1337 + repeat)
        ours = rnnkit(corpus, ref["fit_s"] * args.budget_factor, repeat, args.rnnkit_args)
        rows.append({"nanogpt": ref, "rnnkit": ours})
        print(json.dumps({"repeat": repeat, "nanogpt_s": ref["fit_s"], "nanogpt_val": ref["val_loss_sliding"],
                          "rnnkit_s": ours["wall_s"], "rnnkit_best_val": round(ours["best_val_loss"], 4)}),
              file=sys.stderr, flush=True)
    med = lambda values: round(statistics.median(values), 4)  # noqa: E731
    import torch

    summary = {
        "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "corpus": corpus.name, "repeats": args.repeats, "budget_factor": args.budget_factor,
        "nanogpt_fit_s": med([r["nanogpt"]["fit_s"] for r in rows]),
        "nanogpt_val_loss_sliding": med([r["nanogpt"]["val_loss_sliding"] for r in rows]),
        "rnnkit_wall_s": med([r["rnnkit"]["wall_s"] for r in rows]),
        "rnnkit_best_val_loss": med([r["rnnkit"]["best_val_loss"] for r in rows]),
    }
    summary["difference_nats"] = round(summary["rnnkit_best_val_loss"] - summary["nanogpt_val_loss_sliding"], 4)
    print(json.dumps({"summary": summary, "runs": rows}, indent=1))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, r in enumerate(rows):
            xs, ys = zip(*r["rnnkit"]["curve"], strict=True)
            ax.plot(xs, ys, color="tab:blue", alpha=0.8, label="rnnkit (--time-budget, sized by itself)" if i == 0
                    else None)
            ax.scatter([r["nanogpt"]["fit_s"]], [r["nanogpt"]["val_loss_sliding"]], color="tab:red", zorder=3,
                       label="nanoGPT CPU recipe, end of training" if i == 0 else None)
        ax.set_xlabel("wall-clock seconds")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
        ax.set_title(f"{corpus.name}, {summary['cpu']}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
