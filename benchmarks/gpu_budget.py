#!/usr/bin/env python3
"""``rnnkit train --time-budget`` on a GPU, end to end, in one short run (a lent GPU comes with
minutes): what the zero-configuration command chooses there and what it reaches.

  1. budget: Tiny Shakespeare for ``--seconds`` on the GPU and then on the same machine's CPUs
     (``--device cpu``): the sizing line (it measures the device the run trains on), the validation
     curve, the best checkpoint's held-out loss from ``rnnkit eval``, a sample from ``generate``.
  2. stop: a budgeted GPU run sent SIGTERM part-way, then resumed: exit codes, the budget kept.

Each section is written to ``--out``/gpu_budget.json as soon as it is done.

    RNNKIT_DATA_DIR=$PWD/.gpu-carry PYTHONPATH=src python3 benchmarks/gpu_budget.py --out $OUT
    python benchmarks/gpu_budget.py --dry-run --out /tmp/g   # CPU only, short, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import cpu_model
from vs_nanogpt import budgeted_run

RESULTS: dict = {}


def rnnkit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit.cli", *args], capture_output=True, text=True, check=check)


def budget_run(corpus: Path, device: str, seconds: float, tmp: Path) -> dict:
    """One zero-configuration budgeted run on ``device``, scored as benchmarks/vs_nanogpt.py scores
    its runs (the curve's seconds count from the command's start), and a sample from its best
    checkpoint."""
    run = tmp / f"run-{device}"
    result = budgeted_run(corpus, seconds, 0, ["--device", device], run)
    sample = rnnkit("generate", str(run), "--prefix", "ROMEO:", "-n", "200", "--seed", "0").stdout
    return {"device": device, "wall_s": result["wall_s"], "sized": result["sized"],
            "hidden": result["config"]["hidden"], "validations": len(result["curve"]),
            "best_val_loss_eval": result["best_val_loss"],
            "best_val_loss_while_training": result["best_val_loss_while_training"],
            "last_val_loss": result["last_val_loss"], "curve": result["curve"], "sample": sample}


def stop_and_resume(corpus: Path, device: str, seconds: float, stop_after: float, tmp: Path) -> dict:
    """SIGTERM a budgeted run after ``stop_after`` seconds, then ``--resume`` it."""
    run = tmp / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "rnnkit.cli", "train", "--corpus", str(corpus),
                                "--time-budget", f"{seconds:g}s", "--device", device, "--sample-every", "0",
                                "--quiet", "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(stop_after)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    if not (run / "config.json").exists():  # stopped before training began: nothing to resume
        return {"exit_on_sigterm": process.returncode, "stderr_tail": stderr.strip().splitlines()[-1:],
                "saved": False}
    resumed = rnnkit("train", "--resume", str(run), "--quiet", check=False)
    meta = json.loads((run / "config.json").read_text())
    return {"exit_on_sigterm": process.returncode, "stderr_tail": stderr.strip().splitlines()[-1:],
            "exit_resumed": resumed.returncode,
            "resumed_stderr_tail": resumed.stderr.strip().splitlines()[-1:],
            "validations": len((run / "evals.jsonl").read_text().splitlines()),
            "budget_s": meta["config"]["time_budget"],
            "best_val_loss": (meta.get("best") or {}).get("val_loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, 8-second budgets")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("RNNKIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    corpus, small = data / "tinyshakespeare.txt", data / "timemachine.txt"
    devices = ["cpu"] if args.dry_run else args.devices
    seconds = 8.0 if args.dry_run else args.seconds
    RESULTS["machine"] = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}

    def save() -> None:
        (args.out / "gpu_budget.json").write_text(json.dumps(RESULTS, indent=1))

    save()
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            RESULTS[f"budget_{device}"] = budget_run(corpus, device, seconds, Path(tmp))
            save()
        stop_after = seconds / 2 if args.dry_run else 15.0
        RESULTS["stop_and_resume"] = stop_and_resume(small, devices[0], seconds, stop_after, Path(tmp))
        save()
    print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
