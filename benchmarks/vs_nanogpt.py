#!/usr/bin/env python3
"""rnnkit's time-budgeted training against nanoGPT, its CPU recipe and tuned, side by side; prints JSON.

Each repeat runs nanoGPT's README recipe (``../shared/bench/nanogpt_reference.py``: unmodified
nanoGPT, 4 layers x 128, 2000 iterations, or ``2000 x --budget-factor``), then nanoGPT with the
settings tuned for a CPU budget (:data:`TUNED`, ``../shared/bench/README.md``: 2 layers, 4 heads,
block 48, 32 rows, lr 2e-3) given ``--time-budget T``, and then
``rnnkit train --corpus CORPUS --time-budget T``, with ``T`` = the recipe's measured wall time and no
model options (rnnkit sizes the model itself; raw characters, the last 10% held out, as nanoGPT's
prepare does). Validation: nanoGPT's mean cross-entropy with the most context its block allows
(``val_loss_sliding``), rnnkit's over the same characters carrying its state through them (its
best checkpoint, as ``rnnkit eval`` uses). Medians over the repeats, per corpus. rnnkit's score
with dynamic evaluation (``rnnkit eval --dynamic``) is recorded apart (``dynamic_val_loss``), never
compared as the result.

Curves: rnnkit logs its validation loss as it trains (``evals.jsonl``); nanoGPT logs an estimate
every 250 iterations (20 random batches of 64-character blocks: its own measure, ~0.02-0.03 nats
above the sliding one at the end) and each iteration's time, captured from its output. Both are
placed on wall-clock seconds of their whole process (start-up counted at the start).
``ahead_after_60s`` compares them at nanoGPT's evaluation times after the first minute, with
nanoGPT's estimate lowered by its own final blocks-minus-sliding gap (in nanoGPT's favour).

    .venv/bin/python benchmarks/vs_nanogpt.py --repeats 3 --png benchmarks/results/vs_nanogpt.png
    .venv/bin/python benchmarks/vs_nanogpt.py --other-texts /tmp/texts --repeats 3
    .venv/bin/python benchmarks/vs_nanogpt.py --budget-factor 4 --repeats 3 --png benchmarks/results/vs_nanogpt_4x.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model
from other_texts import build

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared"
ITERS = 2000  # nanoGPT's recipe
TUNED = ("n_layer=2", "n_head=4", "block_size=48", "batch_size=32", "learning_rate=2e-3", "min_lr=2e-4")
SETTINGS = ("nanogpt", "nanogpt_tuned")  # the recipe, the tuned setting: the keys of each repeat's row
# Runs the reference in this process's child with subprocess.run wrapped, so that nanoGPT's own
# per-iteration log (which the reference reads and drops) is kept on stderr.
RUN_REFERENCE = """
import runpy, subprocess, sys
real = subprocess.run
def keeping_log(*args, **kwargs):
    out = real(*args, **kwargs)
    if kwargs.get("cwd"):
        sys.stderr.write(out.stdout)
    return out
subprocess.run = keeping_log
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def nanogpt(corpus: Path, seed: int, options: list[str]) -> dict:
    """One run of ``nanogpt_reference.py`` with ``options``; its JSON line plus its logged curve."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_REFERENCE,
            str(SHARED / "bench" / "nanogpt_reference.py"),
            "--corpus",
            str(corpus),
            "--seed",
            str(seed),
            *options,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    iteration_s = {
        int(m[1]): float(m[2]) / 1000 for m in re.finditer(r"^iter (\d+): .*time ([\d.]+)ms", out.stderr, re.M)
    }
    evals = {int(m[1]): float(m[2]) for m in re.finditer(r"^step (\d+): .*val loss ([\d.]+)", out.stderr, re.M)}
    startup = result["fit_s"] - sum(iteration_s.values())
    elapsed, curve = startup, [(round(startup, 2), evals[0])] if 0 in evals else []
    for it in range(max(iteration_s, default=-1) + 1):
        elapsed += iteration_s.get(it, 0.0)
        if it + 1 in evals:  # step k's evaluation starts when iteration k-1 has ended
            curve.append((round(elapsed, 2), evals[it + 1]))
    result["curve"] = curve
    return result


def rnnkit(corpus: Path, budget_s: float, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return budgeted_run(corpus, budget_s, seed, extra, Path(tmp) / "run")


def budgeted_run(corpus: Path, budget_s: float, seed: int, extra: list[str], run: Path) -> dict:
    """``rnnkit train --time-budget`` into ``run`` (the held-out text is written beside it), then its
    best checkpoint scored on the held-out last 10%."""
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnkit.cli",
            "train",
            "--corpus",
            str(corpus),
            "--time-budget",
            f"{budget_s:.2f}s",
            "--seed",
            str(seed),
            "--sample-every",
            "0",
            "--out",
            str(run),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall_s = time.perf_counter() - started
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    meta = json.loads((run / "config.json").read_text())
    sized = next((line for line in out.stdout.splitlines() if line.startswith("sized for")), None)
    startup = wall_s - evals[-1]["seconds"]
    # the held-out last 10% (nanoGPT's cut) read as one stream by `rnnkit eval` (the best checkpoint);
    # training's validations read it in lanes, each warmed up on the 4096 characters before it
    # (rnnkit.train.validation_lanes), which agrees with the stream within 0.001 nats; the table uses
    # the stream
    text = corpus.read_text(encoding="utf-8")
    held_out = run.parent / "held_out.txt"
    held_out.write_text(text[int(len(text) * 0.9) :], encoding="utf-8")
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnkit.cli",
            "eval",
            str(run),
            "--corpus",
            str(held_out),
            "--checkpoint",
            "best",
            "--json",
            "--dynamic",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    scores = json.loads(scored.stdout)
    best = scores["bpc"] * math.log(2)
    return {
        "budget_s": round(budget_s, 2),
        "wall_s": round(wall_s, 2),
        "best_val_loss": best,
        "dynamic_val_loss": scores["dynamic"]["bpc"] * math.log(2),  # rnnkit eval --dynamic: apart, never the result
        "best_val_loss_while_training": meta["best"]["val_loss"],
        "last_val_loss": evals[-1]["val_loss"],
        "sized": sized,
        "config": meta["config"],
        "curve": [(round(startup + e["seconds"], 2), e["val_loss"]) for e in evals],
    }


def ahead_after(rows: list[dict], setting: str = "nanogpt", after_s: float = 60.0) -> dict:
    """At each of nanoGPT's (``setting``'s) evaluations after ``after_s``: rnnkit's best validation
    loss so far minus nanoGPT's estimate lowered by its final blocks-minus-sliding gap (negative:
    rnnkit ahead)."""
    margins = []
    for r in rows:
        ref, ours = r[setting], r["rnnkit"]["curve"]
        gap = ref["val_loss_blocks"] - ref["val_loss_sliding"]
        for t, loss in ref["curve"]:
            seen = [v for s, v in ours if s <= t]
            if t >= after_s and seen:
                margins.append(round(min(seen) - (loss - gap), 4))
    return {
        "points": len(margins),
        "worst_margin_nats": max(margins, default=None),
        "rnnkit_ahead_everywhere": bool(margins) and max(margins) < 0,
    }


def compare(corpus: Path, repeats: int, factor: float, extra: list[str], done=lambda partial: None) -> dict:
    """``repeats`` side-by-side repeats on ``corpus``: the summary and every run; ``done`` is given
    the result so far after each repeat (``--out`` keeps the repeats of a benchmark cut short)."""
    rows = []
    for repeat in range(repeats):
        seed = 1337 + repeat
        ref = nanogpt(corpus, seed, ["--max-iters", str(round(ITERS * factor))])
        tuned = nanogpt(corpus, seed, ["--time-budget", f"{ref['fit_s']:.2f}", *(f"--set={s}" for s in TUNED)])
        ours = rnnkit(corpus, ref["fit_s"], repeat, extra)
        rows.append({"nanogpt": ref, "nanogpt_tuned": tuned, "rnnkit": ours})
        print(
            json.dumps(
                {
                    "corpus": corpus.name,
                    "repeat": repeat,
                    "nanogpt_s": ref["fit_s"],
                    "nanogpt_val": ref["val_loss_sliding"],
                    "nanogpt_tuned_s": tuned["fit_s"],
                    "nanogpt_tuned_val": tuned["val_loss_sliding"],
                    "rnnkit_s": ours["wall_s"],
                    "rnnkit_best_val": round(ours["best_val_loss"], 4),
                }
            ),
            file=sys.stderr,
            flush=True,
        )
        result = {"summary": summarise(corpus, rows, factor), "runs": rows}
        done(result)
    return result


def summarise(corpus: Path, rows: list[dict], factor: float) -> dict:
    """Medians over the repeats of each setting's wall time and validation loss, and rnnkit's
    difference from each nanoGPT setting (the median's and each repeat's; negative: rnnkit lower)."""
    med = lambda values: round(statistics.median(values), 4)  # noqa: E731
    ours = [r["rnnkit"]["best_val_loss"] for r in rows]
    summary = {
        "corpus": corpus.name,
        "repeats": len(rows),
        "budget_factor": factor,
        "rnnkit_wall_s": med([r["rnnkit"]["wall_s"] for r in rows]),
        "rnnkit_best_val_loss": med(ours),
        "rnnkit_best_val_loss_each": [round(v, 4) for v in ours],
        "rnnkit_dynamic_val_loss_apart": med([r["rnnkit"]["dynamic_val_loss"] for r in rows]),
    }
    for setting in SETTINGS:
        theirs = [r[setting]["val_loss_sliding"] for r in rows]
        summary[f"{setting}_fit_s"] = med([r[setting]["fit_s"] for r in rows])
        summary[f"{setting}_val_loss_sliding"] = med(theirs)
        summary[f"{setting}_val_loss_sliding_each"] = theirs
        summary[f"per_repeat_differences_{setting}"] = [round(a - b, 4) for a, b in zip(ours, theirs, strict=True)]
        summary[f"difference_nats_{setting}"] = round(med(ours) - med(theirs), 4)
        if factor > 1:
            summary[f"ahead_after_60s_{setting}"] = ahead_after(rows, setting)
    return summary


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(results))
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, result in zip(axes.flat, results, strict=False):  # the grid may have a spare cell
        for i, r in enumerate(result["runs"]):
            xs, ys = zip(*r["rnnkit"]["curve"], strict=True)
            ax.plot(
                xs, ys, color="tab:blue", alpha=0.8, label="rnnkit --time-budget (sized by itself)" if i == 0 else None
            )
            for setting, color, name in zip(SETTINGS, ("tab:red", "tab:orange"), ("CPU recipe", "tuned"), strict=True):
                ref = r[setting]
                if len(ref["curve"]) > 2:
                    xs, ys = zip(*ref["curve"], strict=True)
                    label = f"nanoGPT {name} (its logged estimate)" if i == 0 else None
                    ax.plot(xs, ys, color=color, alpha=0.6, linestyle="--", label=label)
                label = f"nanoGPT {name} at the end (sliding window)" if i == 0 else None
                ax.scatter([ref["fit_s"]], [ref["val_loss_sliding"]], color=color, zorder=3, label=label)
        ax.set_xlabel("wall-clock seconds")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
        ax.set_title(f"{result['summary']['corpus']}, {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=[str(SHARED / "data" / "tinyshakespeare.txt")])
    parser.add_argument(
        "--other-texts",
        metavar="DIR",
        help="build benchmarks/other_texts.py's texts in DIR and compare on them instead of --corpus",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budget-factor",
        type=float,
        default=1.0,
        help="nanoGPT runs 2000 x factor iterations; rnnkit's budget is nanoGPT's wall time",
    )
    parser.add_argument("--png", help="write validation loss against seconds here")
    parser.add_argument(
        "--out", help="also write the JSON here, rewritten after every repeat (a run cut short keeps its repeats)"
    )
    parser.add_argument("--rnnkit-args", nargs=argparse.REMAINDER, default=[], help="extra rnnkit train options")
    args = parser.parse_args()
    corpora = build(Path(args.other_texts)) if args.other_texts else [Path(c) for c in args.corpus]
    import torch

    machine = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    results: list[dict] = []

    def write(partial: dict | None = None) -> None:
        if args.out:
            so_far = [*results, partial] if partial else results
            temporary = Path(args.out).with_suffix(".tmp")
            temporary.write_text(json.dumps({**machine, "corpora": so_far}, indent=1))
            temporary.replace(args.out)

    for corpus in corpora:
        results.append(compare(corpus, args.repeats, args.budget_factor, args.rnnkit_args, write))
    write()
    print(json.dumps({**machine, "corpora": results}, indent=1))
    if args.png:
        plot(results, args.png, machine["cpu"])


if __name__ == "__main__":
    main()
