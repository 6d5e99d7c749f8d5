#!/usr/bin/env python3
"""Training and generation throughput of rnnkit against plain PyTorch written the obvious way.

Baseline: ``nn.Embedding -> nn.RNN/GRU/LSTM -> nn.Linear``, ``F.cross_entropy``, ``backward``,
``clip_grad_norm_``, ``SGD.step`` on the same batches; generation by calling the model once per
character. rnnkit: its own model (one-hot input as a row lookup) and training step
(``Trainer.train_epoch``'s body) and ``rnnkit.generate``.

Grid: hidden 32/256/1024 x rnn/gru/lstm x (num_steps, batch) in 32/128 x 32/256/1024. Each cell
runs steps until ``--seconds`` have passed (at least 2 steps, after 1 warm-up); cells whose
estimated step time exceeds ``--max-step-seconds`` are reported as skipped. Then the corpus
scaling check: one epoch on 1x, 4x, 16x The Time Machine (``--split fraction``, book model).
Prints one JSON object. Medians of ``--repeats`` measurements.

    .venv/bin/python benchmarks/throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import Baseline
from rnnkit.generate import Sampling, generate
from rnnkit.models import build_model
from rnnkit.text import build_corpus
from rnnkit.train import TrainConfig, Trainer, compute_gradients, keep_freed_memory

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def estimated_step_flops(kind: str, hidden: int, batch: int, steps: int, vocab: int) -> float:
    per_token = 2 * GATES[kind] * hidden * (2 * hidden) + 2 * hidden * vocab
    return 3 * per_token * batch * steps  # forward + backward (about 2x forward)


def time_steps(step, seconds: float) -> float:
    """Seconds per step: one warm-up, then steps until ``seconds`` pass (at least 2)."""
    step()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return (time.perf_counter() - t0) / n


def train_cell(kind, hidden, steps, batch, corpus, vocab_size, seconds, repeats):
    torch.manual_seed(0)
    n = (len(corpus) - 1) // (steps + 1)
    windows = corpus[: n * (steps + 1)].view(n, steps + 1)
    rows = torch.randint(0, n, (batch,))
    X, Y = windows[rows, :-1].contiguous(), windows[rows, 1:].contiguous()

    ours = build_model(kind, vocab_size, hidden)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)

    def ours_step():
        compute_gradients(ours, X, Y, 1.0)
        opt.step()

    base = Baseline(kind, vocab_size, hidden)
    base_opt = torch.optim.SGD(base.parameters(), lr=0.1)

    def base_step():
        logits, _ = base(X)
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), Y.reshape(-1))
        base_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(base.parameters(), 1.0)
        base_opt.step()

    tokens = batch * steps
    ours_s = statistics.median(time_steps(ours_step, seconds) for _ in range(repeats))
    base_s = statistics.median(time_steps(base_step, seconds) for _ in range(repeats))
    return {
        "rnnkit_tok_s": round(tokens / ours_s),
        "baseline_tok_s": round(tokens / base_s),
        "speedup": round(base_s / ours_s, 2),
    }


def generation_cell(kind, hidden, vocab, chars, repeats):
    torch.manual_seed(0)
    ours = build_model(kind, len(vocab), hidden).eval()
    base = Baseline(kind, len(vocab), hidden).eval()

    def base_generate():
        with torch.inference_mode():
            state, token = None, torch.tensor([[vocab["t"]]])
            for _ in range(chars):
                logits, state = base(token, state)
                token = logits[:, -1].argmax(-1, keepdim=True)

    def rate(fn):
        t0 = time.perf_counter()
        fn()
        return chars / (time.perf_counter() - t0)

    greedy = statistics.median(rate(lambda: list(generate(ours, vocab, "t", chars))) for _ in range(repeats))
    sampled = statistics.median(
        rate(lambda: list(generate(ours, vocab, "t", chars, Sampling(temperature=0.8, top_k=10), seed=0)))
        for _ in range(repeats)
    )
    baseline = statistics.median(rate(base_generate) for _ in range(repeats))
    return {
        "rnnkit_greedy_chars_s": round(greedy),
        "rnnkit_sampled_chars_s": round(sampled),
        "baseline_greedy_chars_s": round(baseline),
    }


def corpus_scaling(text: str, repeats: int) -> list[dict]:
    rows = []
    for factor in (1, 4, 16):
        config = TrainConfig(split="fraction", epochs=1, val_fraction=0.0, device="cpu")
        trainer = Trainer(config, text=text * factor)
        times = []
        for epoch in range(repeats):
            t0 = time.perf_counter()
            _, count = trainer.train_epoch(epoch)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        rows.append({"factor": factor, "tokens": count, "epoch_s": round(seconds, 3), "tok_s": round(count / seconds)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    p.add_argument("--max-step-seconds", type=float, default=3.0, help="skip cells estimated slower than this")
    p.add_argument("--gflops", type=float, default=60.0, help="throughput assumed for the estimate")
    p.add_argument("--hidden", default="32,256,1024")
    p.add_argument("--kinds", default="rnn,gru,lstm")
    p.add_argument("--num-steps", default="32,128")
    p.add_argument("--batch", default="32,256,1024")
    p.add_argument("--gen-chars", type=int, default=2000)
    p.add_argument("--data", default=str(DATA))
    a = p.parse_args()
    keep_freed_memory()
    text = Path(a.data).read_text()
    ids, vocab = build_corpus(text, "d2l")
    corpus = torch.tensor(ids)
    V = len(vocab)
    training = []
    for hidden, kind, steps, batch in itertools.product(
        map(int, a.hidden.split(",")),
        a.kinds.split(","),
        map(int, a.num_steps.split(",")),
        map(int, a.batch.split(",")),
    ):
        cell = {"kind": kind, "hidden": hidden, "num_steps": steps, "batch": batch}
        estimate = estimated_step_flops(kind, hidden, batch, steps, V) / (a.gflops * 1e9)
        if estimate > a.max_step_seconds:
            cell["skipped"] = f"estimated {estimate:.0f} s/step at {a.gflops:g} GFLOP/s"
        else:
            cell.update(train_cell(kind, hidden, steps, batch, corpus, V, a.seconds, a.repeats))
        training.append(cell)
        print(json.dumps(cell), file=sys.stderr, flush=True)
    generation = []
    for hidden, kind in itertools.product(map(int, a.hidden.split(",")), a.kinds.split(",")):
        cell = {"kind": kind, "hidden": hidden, **generation_cell(kind, hidden, vocab, a.gen_chars, a.repeats)}
        generation.append(cell)
        print(json.dumps(cell), file=sys.stderr, flush=True)
    scaling = corpus_scaling(text, a.repeats)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "training": training,
                "generation": generation,
                "corpus_scaling": scaling,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
