#!/usr/bin/env python3
"""One zero-configuration ``rnnkit train --corpus TEXT --time-budget T`` run per seed, scored as
``vs_nanogpt.py`` scores it; prints JSON.

The measure behind the "10 CPU-minutes on Tiny Shakespeare" target: the validation loss in nats per
character on the text's held-out last 10% (the best checkpoint, carrying its state through the
text, as ``rnnkit eval`` reads it), with the curve on wall-clock seconds of the whole process, the
model the sizing chose, and the score under dynamic evaluation (``rnnkit eval --dynamic``) apart.

    .venv/bin/python benchmarks/long_budget.py --budget 600 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import cpu_model
from vs_nanogpt import SHARED, budgeted_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(SHARED / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--budget", type=float, default=600.0, help="seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append({"seed": seed, **budgeted_run(Path(args.corpus), args.budget, seed, [], Path(tmp) / "run")})
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "corpus": Path(args.corpus).name,
                "budget_s": args.budget,
                "median_val_loss": statistics.median(r["best_val_loss"] for r in runs),
                "median_dynamic_val_loss": statistics.median(r["dynamic_val_loss"] for r in runs),
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
