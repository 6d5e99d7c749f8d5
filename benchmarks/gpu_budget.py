#!/usr/bin/env python3
"""``rnnkit train --time-budget`` on a GPU, end to end, in one short run (a lent GPU comes with
minutes): what the zero-configuration command chooses there and what it reaches.

  1. speeds: the recipe's training tokens/s on each device by batch rows and width.
  2. budget: Tiny Shakespeare and The Time Machine for ``--seconds`` on each device: the sizing
     line (it measures the device the run trains on), the validation curve, the best checkpoint's
     held-out loss from ``rnnkit eval``, a sample from ``generate``. ``--rows N`` adds the same
     budget with the sized configuration given explicitly but N batch rows (its budget less the
     sizing's seconds), to measure what more rows buy on that device.
  3. stop: a budgeted run sent SIGTERM part-way, then resumed: exit codes, the budget kept.

On an H200 (benchmarks/results/gpu_budget_rows_h200.json, made by this script at 8afbd39 when the
sizing also chose the rows) more rows were 2-20 times the tokens/s and worse models: Tiny
Shakespeare 512 rows 1.508 against 32 rows 1.449, The Time Machine 128 rows 1.563 against 1.508.

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
from rnnkit.config import SIZING as SIZING_OPTIONS
from rnnkit.sizing import WIDTHS, measure_tokens_per_second
from vs_nanogpt import budgeted_run

RESULTS: dict = {}
ROWS = (32, 64, 128, 256, 512)


def rnnkit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit.cli", *args], capture_output=True, text=True, check=check)


def speeds(device: str, widths: tuple[int, ...] = WIDTHS, rows: tuple[int, ...] = ROWS, vocab_size: int = 65) -> dict:
    """{rows: {width: tokens/s}} of the recipe's training step on ``device``."""
    return {
        count: {
            width: round(measure_tokens_per_second(width, vocab_size, count, 64, device=device)) for width in widths
        }
        for count in rows
    }


def budget_run(
    corpus: Path, device: str, seconds: float, tmp: Path, extra: tuple[str, ...] = (), name: str = "sized"
) -> dict:
    """One budgeted run on ``device`` (zero-configuration unless ``extra`` gives sizes), scored as
    benchmarks/vs_nanogpt.py scores its runs (the curve's seconds count from the command's start),
    and a sample from its best checkpoint."""
    run = tmp / f"{corpus.stem}-{device}-{name}"
    result = budgeted_run(corpus, seconds, 0, ["--device", device, *extra], run)
    sample = rnnkit("generate", str(run), "--prefix", "The ", "-n", "200", "--seed", "0").stdout
    return {
        "device": device,
        "budget_s": result["budget_s"],
        "wall_s": result["wall_s"],
        "sized": result["sized"],
        "config": result["config"],
        "validations": len(result["curve"]),
        "best_val_loss_eval": result["best_val_loss"],
        "best_val_loss_while_training": result["best_val_loss_while_training"],
        "last_val_loss": result["last_val_loss"],
        "curve": result["curve"],
        "sample": sample,
    }


def sized_flags(config: dict, rows: int) -> list[str]:
    """The flags of a sized run's configuration (its config.json), with ``rows`` batch rows."""
    names = sorted(SIZING_OPTIONS - {"tie_weights"})  # a store_true flag, off in the recipe
    return [
        item
        for name in names
        for item in (f"--{name.replace('_', '-')}", str(rows if name == "batch_size" else config[name]))
    ]


def stop_and_resume(corpus: Path, device: str, seconds: float, stop_after: float, tmp: Path) -> dict:
    """SIGTERM a budgeted run after ``stop_after`` seconds, then ``--resume`` it."""
    run = tmp / "stopped"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnkit.cli",
            "train",
            "--corpus",
            str(corpus),
            "--time-budget",
            f"{seconds:g}s",
            "--device",
            device,
            "--sample-every",
            "0",
            "--quiet",
            "--out",
            str(run),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(stop_after)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    if not (run / "config.json").exists():  # stopped before training began: nothing to resume
        return {"exit_on_sigterm": process.returncode, "stderr_tail": stderr.strip().splitlines()[-1:], "saved": False}
    resumed = rnnkit("train", "--resume", str(run), "--quiet", check=False)
    meta = json.loads((run / "config.json").read_text())
    return {
        "exit_on_sigterm": process.returncode,
        "stderr_tail": stderr.strip().splitlines()[-1:],
        "exit_resumed": resumed.returncode,
        "resumed_stderr_tail": resumed.stderr.strip().splitlines()[-1:],
        "validations": len((run / "evals.jsonl").read_text().splitlines()),
        "budget_s": meta["config"]["time_budget"],
        "best_val_loss": (meta.get("best") or {}).get("val_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, 8-second budgets")
    parser.add_argument("--rows", type=int, nargs="*", default=[], help="also train the sized model with N rows")
    parser.add_argument("--no-speeds", action="store_true", help="skip the rows-by-width speeds")
    parser.add_argument("--no-stop", action="store_true", help="skip the SIGTERM-and-resume check")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("RNNKIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    devices = ["cpu"] if args.dry_run else args.devices
    seconds = 8.0 if args.dry_run else args.seconds
    RESULTS["machine"] = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }

    def save() -> None:
        (args.out / "gpu_budget.json").write_text(json.dumps(RESULTS, indent=1))

    save()
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices if not args.no_speeds else ():
            RESULTS[f"speeds_{device}"] = speeds(device, *((WIDTHS[:2], ROWS[:2]) if args.dry_run else ()))
            save()
        if "cpu" not in devices and not args.no_speeds:  # this machine's CPUs by rows too (the narrowest width)
            RESULTS["speeds_cpu"] = speeds("cpu", WIDTHS[:1])
            save()
        for corpus in (data / "tinyshakespeare.txt", data / "timemachine.txt"):
            for device in devices:
                sized = budget_run(corpus, device, seconds, Path(tmp))
                RESULTS[f"budget_{corpus.stem}_{device}"] = sized
                save()
                for rows in args.rows:  # the same sized model and budget (less the sizing's seconds), N rows
                    RESULTS[f"budget_{corpus.stem}_{device}_{rows}_rows"] = budget_run(
                        corpus,
                        device,
                        sized["config"]["time_budget"],
                        Path(tmp),
                        tuple(sized_flags(sized["config"], rows)),
                        f"{rows}-rows",
                    )
                    save()
        if not args.no_stop:
            stop_after = seconds / 2 if args.dry_run else 15.0
            RESULTS["stop_and_resume"] = stop_and_resume(
                data / "timemachine.txt", devices[0], seconds, stop_after, Path(tmp)
            )
            save()
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curve"} for k, v in RESULTS.items()}, indent=1))


if __name__ == "__main__":
    main()
