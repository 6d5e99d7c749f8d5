#!/usr/bin/env python3
"""Held-out k-step MSE of the linear AR model and the RNN/GRU/LSTM regressors (``rnnkit timeseries``)
on §9.1's synthetic series and on one real series that ships with matplotlib (the S&P 500's
monthly close in ``Stocks.csv``), over seeds 0-4 (the synthetic noise and the models'
initialisation); medians, per-seed values, and for each k which model is best. Prints JSON.

    .venv/bin/python benchmarks/timeseries_table.py > benchmarks/results/timeseries.json
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_model

SEEDS = range(5)


def run(options: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-m", "rnnkit.cli", "timeseries", *options, "--json", "--quiet", "--out", out],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout.splitlines()[-1])["mse"]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    import matplotlib.cbook

    stocks = str(Path(matplotlib.cbook.get_sample_data("Stocks.csv", asfileobj=False)))
    series = {
        "synthetic d2l": [],
        "S&P 500 monthly close (matplotlib Stocks.csv)": [
            "--csv",
            stocks,
            "--column",
            "^GSPC",
            "--time-column",
            "Date",
            "--missing",
            "drop",
        ],
    }
    results = {"cpu": cpu_model(), "seeds": list(SEEDS), "series": {}}
    for name, options in series.items():
        per_seed = [run([*options, "--seed", str(seed)]) for seed in SEEDS]
        models = list(per_seed[0])
        ks = list(per_seed[0][models[0]])
        medians = {m: {k: statistics.median(r[m][k] for r in per_seed) for k in ks} for m in models}
        best = {k: min(models, key=lambda m: medians[m][k]) for k in ks}
        rnn_beats_linear = {m: {k: medians[m][k] < medians["linear"][k] for k in ks} for m in models if m != "linear"}
        results["series"][name] = {
            "options": options,
            "median_mse": medians,
            "best": best,
            "beats_linear": rnn_beats_linear,
            "per_seed": per_seed,
        }
        print(json.dumps({name: {"median_mse": medians, "best": best}}), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
