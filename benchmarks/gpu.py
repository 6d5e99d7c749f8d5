#!/usr/bin/env python3
"""GPU measurements, in one short run (a lent GPU comes with minutes, not hours).

Sections, each written to ``--out``/gpu.json as soon as it is done (a timeout keeps what finished):
  1. checks: for each configuration in CHECKS (model kinds, activations, layers, embeddings,
     optimizers, splits), a run with CUDA graphs against the same run without (same seed, GPU):
     max parameter difference, and whether two eager runs agree bit for bit.
     cli: ``rnnkit train`` with its defaults on the book's configuration (what a user gets).
  2. book: the book's configuration (hidden 32, batch 1024, num_steps 32, 100 epochs, SGD lr 1,
     clip 1) on the GPU: rnnkit's Trainer eager and with CUDA graphs (fit time, val ppl), and the
     real d2l 1.0.3 with ``num_gpus=1`` when ``--d2l DIR`` holds its package (run last: section d2l).
  3. throughput: training tokens/s at hidden 256/1024, RNN/LSTM, of plain PyTorch (``nn.Embedding``
     + cuDNN ``nn.RNN``/``nn.LSTM`` + ``nn.Linear``, the obvious loop) and rnnkit, fp32 eager,
     with CUDA graphs, and under bf16 autocast.
  4. generation: characters/s of the book model, greedy and sampled, on the GPU and the CPU.

    python benchmarks/gpu.py --data timemachine.txt --d2l DIR --out OUT
    python benchmarks/gpu.py --dry-run --data ../shared/data/timemachine.txt --d2l DIR --out /tmp/g

How the results in benchmarks/results/gpu_h100*.json were made: ``d2l/__init__.py`` and
``d2l/torch.py`` of d2l 1.0.3 (from the reference venv) and timemachine.txt copied into an ignored
folder ``.gpu-carry/`` that travels with the working tree; on the GPU machine (its own torch):
``RNNKIT_DATA_DIR=$PWD/.gpu-carry PYTHONPATH=src python3 benchmarks/gpu.py --data
.gpu-carry/timemachine.txt --d2l .gpu-carry --out $OUT``. What d2l imports only for plotting
(IPython, matplotlib_inline, torchvision) is stubbed when missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import BOOK, Baseline, book_model, d2l_perplexity
from rnnkit.generate import Sampling, generate
from rnnkit.models import build_model
from rnnkit.text import build_corpus
from rnnkit.train import CapturedGradients, TrainConfig, Trainer, clip_gradients, perplexity, window_nll

RESULTS: dict = {}
DEVICE = "cuda"  # --dry-run: "cpu", tiny sizes, to check this script before spending GPU time


def save(out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(RESULTS, indent=1))


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


CHECKS = {  # name: TrainConfig overrides (hidden 32 unless given)
    "rnn": {},
    "scratch": {"model": "scratch"},
    "lstm 2x128 adam": dict(model="lstm", layers=2, hidden=128, optimizer="adam", lr=0.002),
    "gru": {"model": "gru"},
    "rnn relu": {"activation": "relu"},
    "scratch relu": {"model": "scratch", "activation": "relu"},
    "rnn 2 layers, embedding 16": {"layers": 2, "embedding": 16},
    "lstm embedding 16 adamw": dict(model="lstm", embedding=16, optimizer="adamw", lr=0.002),
    "gru random split": {"model": "gru", "split": "random"},
    "rnn fraction split": {"split": "fraction"},
}


def train_params(data: str, graphs: bool, epochs: int = 2, **overrides) -> tuple[torch.Tensor, list]:
    config = TrainConfig(
        **{
            "corpus": data,
            "epochs": epochs,
            "num_train": 3000,
            "num_val": 500,
            "device": DEVICE,
            "cuda_graphs": "on" if graphs else "off",
            "hidden": 32,
            **overrides,
        }
    )
    trainer = Trainer(config)
    history = trainer.fit()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()]), history


def checks(data: str) -> list[dict]:
    """Captured-graph training equals eager training (same kernels, replayed); eager runs repeat."""
    rows = []
    for name, overrides in CHECKS.items():
        try:
            eager, h_eager = train_params(data, False, **overrides)
            again, _ = train_params(data, False, **overrides)
            graphed, h_graphed = train_params(data, DEVICE == "cuda", **overrides)
            rows.append(
                {
                    "check": name,
                    "max_abs_diff_graphs_vs_eager": (eager - graphed).abs().max().item(),
                    "eager_repeats_bitwise": bool(torch.equal(eager, again)),
                    "param_norm": eager.norm().item(),
                    "train_loss": [h_eager[-1].train_loss, h_graphed[-1].train_loss],
                    "val_ppl": [h_eager[-1].val_ppl, h_graphed[-1].val_ppl],
                }
            )
        except Exception as exc:
            rows.append({"check": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        print("check", rows[-1], flush=True)
    return rows


def cli_runs(data: str, out: Path) -> list[dict]:
    """``rnnkit train`` on the book's configuration with the defaults (--device auto, --cuda-graphs auto)."""
    import subprocess
    import tempfile

    rows = []
    for model in ("rnn", "scratch"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from rnnkit.cli import console; console()",
                    "train",
                    "--corpus",
                    data,
                    "--model",
                    model,
                    "--out",
                    f"{tmp}/run",
                    "--sample-every",
                    "0",
                ],
                capture_output=True,
                text=True,
            )
            lines = result.stdout.splitlines()
            epochs = [x for x in lines if x.startswith("epoch")]
            rows.append(
                {
                    "model": model,
                    "rc": result.returncode,
                    "wall_s": round(time.perf_counter() - t0, 3),
                    "first_line": lines[0] if lines else "",
                    "last_epoch": epochs[-1] if epochs else "",
                    "stderr_tail": result.stderr[-300:],
                }
            )
        print("cli", rows[-1], flush=True)
    return rows


def book_rnnkit(data: str, model: str, graphs: bool) -> dict:
    config = TrainConfig(corpus=data, model=model, device=DEVICE, cuda_graphs="on" if graphs else "off", **BOOK)
    trainer = Trainer(config)
    sync()
    t0 = time.perf_counter()
    trainer.fit()
    sync()
    fit_s = time.perf_counter() - t0
    return {
        "fit_s": round(fit_s, 3),
        "train_epochs_s": round(trainer.train_seconds, 3),
        "val_ppl": round(perplexity(*window_nll(trainer.model, trainer.data.val_windows)), 4),
    }


def import_d2l(path: str):
    """The real d2l 1.0.3 package from ``path``; what it imports only for plotting is stubbed if absent."""
    sys.path.insert(0, path)
    for name, attrs in (
        ("IPython", ("display",)),
        ("matplotlib_inline", ("backend_inline",)),
        ("torchvision", ("transforms",)),
    ):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            for attr in attrs:
                sub = types.ModuleType(f"{name}.{attr}")
                setattr(module, attr, sub)
                sys.modules[f"{name}.{attr}"] = sub
            sys.modules[name] = module
    import matplotlib

    matplotlib.use("Agg")
    from d2l import torch as d2l

    d2l.ProgressBoard.draw = lambda self, *a, **k: None
    return d2l


def book_d2l(d2l, data: str, impl: str) -> dict:
    import os
    import tempfile

    torch.manual_seed(BOOK["seed"])
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:  # d2l reads ../data/timemachine.txt; it never downloads
        os.mkdir(os.path.join(tmp, "data"))
        os.mkdir(os.path.join(tmp, "work"))
        os.symlink(os.path.abspath(data), os.path.join(tmp, "data", "timemachine.txt"))
        os.chdir(os.path.join(tmp, "work"))
        try:
            dm = d2l.TimeMachine(batch_size=BOOK["batch_size"], num_steps=BOOK["num_steps"])
        finally:
            os.chdir(cwd)
    model = book_model(d2l, dm.vocab, impl)
    trainer = d2l.Trainer(max_epochs=BOOK["epochs"], gradient_clip_val=BOOK["clip"], num_gpus=1)
    sync()
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    sync()
    fit_s = time.perf_counter() - t0
    return {
        "fit_s": round(fit_s, 3),
        "val_ppl": round(d2l_perplexity(model, dm.val_dataloader()), 4),
        "device": str(next(model.parameters()).device),
    }


def time_steps(step, seconds: float, repeats: int) -> float:
    """Median seconds per step over ``repeats`` runs of about ``seconds`` each, after warm-up;
    the device is synchronized around each run."""
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    n = max(3, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def throughput_cell(
    kind: str, hidden: int, batch: int, steps: int, corpus: torch.Tensor, V: int, seconds: float, repeats: int
) -> dict:
    torch.manual_seed(0)
    n = (len(corpus) - 1) // (steps + 1)
    windows = corpus[: n * (steps + 1)].view(n, steps + 1).to(DEVICE)
    rows = torch.randint(0, n, (batch,), device=DEVICE)
    X, Y = windows[rows, :-1].contiguous(), windows[rows, 1:].contiguous()
    cell = {"kind": kind, "hidden": hidden, "batch": batch, "num_steps": steps}
    tokens = batch * steps

    def base_variant(autocast: bool):
        base = Baseline(kind, V, hidden).to(DEVICE)
        opt = torch.optim.SGD(base.parameters(), lr=0.1)

        def step():
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(base(X)[0].reshape(-1, V).float(), Y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(base.parameters(), 1.0)
            opt.step()

        return step

    def ours_variant(autocast: bool, graphs: bool):
        ours = build_model(kind, V, hidden).to(DEVICE)
        opt = torch.optim.SGD(ours.parameters(), lr=0.1)
        if graphs:
            captured = CapturedGradients(ours, 1.0)

            def step():
                captured.step(X, Y)
                opt.step()

            return step

        def step():
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                loss, _ = ours.loss(X, Y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(ours.parameters(), 1.0)
            opt.step()

        return step

    variants = {
        "baseline_fp32": lambda: base_variant(False),
        "baseline_bf16": lambda: base_variant(True),
        "rnnkit_fp32": lambda: ours_variant(False, False),
        "rnnkit_bf16": lambda: ours_variant(True, False),
    }
    if DEVICE == "cuda":
        variants["rnnkit_graphs"] = lambda: ours_variant(False, True)
    for name, make in variants.items():
        try:
            cell[name] = round(tokens / time_steps(make(), seconds, repeats))
        except Exception as exc:  # a variant the GPU or cuDNN does not support is reported, not fatal
            cell[name] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
    return cell


def generation(data: str, repeats: int, chars: int) -> list[dict]:
    ids, vocab = build_corpus(Path(data).read_text(), "d2l")
    rows = []
    for device in dict.fromkeys((DEVICE, "cpu")):
        torch.manual_seed(0)
        model = build_model("rnn", len(vocab), 32).to(device).eval()

        def rate(fn):
            t0 = time.perf_counter()
            fn()
            return chars / (time.perf_counter() - t0)

        greedy = statistics.median(rate(lambda m=model: list(generate(m, vocab, "t", chars))) for _ in range(repeats))
        sampled = statistics.median(
            rate(lambda m=model: list(generate(m, vocab, "t", chars, Sampling(temperature=0.8, top_k=10), seed=0)))
            for _ in range(repeats)
        )
        rows.append({"device": device, "greedy_chars_s": round(greedy), "sampled_chars_s": round(sampled)})
        print("generation", rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="timemachine.txt")
    p.add_argument("--d2l", help="folder holding the d2l 1.0.3 package (skip the d2l runs without it)")
    p.add_argument("--out", default=".")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d2l-repeats", type=int, default=1)
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--sections", default="checks,cli,book,throughput,generation,d2l")
    p.add_argument("--dry-run", action="store_true", help="CPU, 2 epochs, no CUDA graphs: check the script")
    a = p.parse_args()
    global DEVICE
    if a.dry_run:
        DEVICE = "cpu"
        BOOK["epochs"] = 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS["env"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        RESULTS["env"].update(gpu=props.name, sms=props.multi_processor_count)
    print("env", RESULTS["env"], flush=True)
    sections = a.sections.split(",")
    if "checks" in sections:
        RESULTS["checks"] = checks(a.data)
        save(out)
    if "cli" in sections:
        RESULTS["cli"] = cli_runs(a.data, out)
        save(out)
    if "book" in sections:
        book = RESULTS.setdefault("book", {})
        for model in ("rnn", "scratch"):
            for graphs in dict.fromkeys((False, DEVICE == "cuda")):
                name = f"rnnkit_{model}_{'graphs' if graphs else 'eager'}"
                try:
                    runs = [book_rnnkit(a.data, model, graphs) for _ in range(a.repeats)]
                    book[name] = {"runs": runs, "median_fit_s": statistics.median(r["fit_s"] for r in runs)}
                except Exception as exc:
                    book[name] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                print("book", name, book[name], flush=True)
                save(out)
    if "throughput" in sections:
        ids, vocab = build_corpus(Path(a.data).read_text(), "d2l")
        corpus = torch.tensor(ids)
        cells = RESULTS.setdefault("throughput", [])
        hiddens, shapes = ((16, 32), ((8, 8), (16, 8))) if a.dry_run else ((256, 1024), ((64, 64), (1024, 64)))
        for kind in ("rnn", "lstm"):
            for hidden in hiddens:
                for batch, steps in shapes:
                    cells.append(throughput_cell(kind, hidden, batch, steps, corpus, len(vocab), a.seconds, a.repeats))
                    print("throughput", cells[-1], flush=True)
                    save(out)
    if "generation" in sections:
        RESULTS["generation"] = generation(a.data, a.repeats, 200 if a.dry_run else 2000)
        save(out)
    if "d2l" in sections and a.d2l:
        book = RESULTS.setdefault("book", {})
        d2l = import_d2l(a.d2l)
        for impl in ("concise", "scratch"):
            try:
                runs = [book_d2l(d2l, a.data, impl) for _ in range(a.d2l_repeats)]
                book[f"d2l_{impl}"] = {"runs": runs, "median_fit_s": statistics.median(r["fit_s"] for r in runs)}
            except Exception as exc:
                book[f"d2l_{impl}"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            print("book", impl, book[f"d2l_{impl}"], flush=True)
            save(out)
    print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
