"""Choosing a model for a corpus and a time budget (``rnnkit train --time-budget`` without sizes).

The rule, and why:

- **A one-layer LSTM, batch 32 x 64 steps, AdamW 5e-3 with a short warmup and a cosine decay over
  the budget, gradient clipping at 1, reading the text as running lanes with the state carried
  from window to window** (``--split sequential``: truncated backpropagation through time, as
  char-rnn does). On a CPU with minutes to spend, a single layer learns faster per second than a
  deep one, small batches give many updates, and the carried state lets the model use more than
  64 characters of context. Measured on Tiny Shakespeare in 98 s (benchmarks/results/vs_nanogpt.json
  and the closing note of the issue): carried state 1.74 vs shuffled windows 1.78 nats at width
  384; width 256 with lr 5e-3 1.56; width 512 1.91 (too few steps in the budget).
- **The width is the largest whose measured speed leaves enough training.** In the budget's first
  seconds the candidate widths each run a few real training steps on this machine; the budget then
  buys ``tokens(width) = tokens_per_second(width) x budget``. A model needs several characters of
  training per parameter before more width pays (:data:`TOKENS_PER_PARAMETER`); the widest
  candidate that gets them wins. A tiny corpus caps the width too (:data:`PARAMETERS_PER_TOKEN`):
  more parameters than that per character of text only memorise it, and the best checkpoint would
  be an early one anyway.
- **Dropout on the outputs where the budget reads the text many times** (:data:`EPOCHS_FOR_DROPOUT`
  passes or more): on The Time Machine (161k training characters, 98 s, ~37 passes) the validation
  loss was best at half the budget and then rose; ``io_dropout`` 0.2 / 0.4 gave 1.590 / 1.582
  against 1.608 without (single runs). Tiny Shakespeare (~6 passes) gets none.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from rnnkit.errors import RnnkitError
from rnnkit.models import build_model, parameter_count

WIDTHS = (128, 256, 384, 512, 768, 1024)
TOKENS_PER_PARAMETER = 10.0  # training characters a parameter needs within the budget
PARAMETERS_PER_TOKEN = 4.0  # at most this many parameters per character of training text
MIN_TRAIN_TOKENS = 2_000  # below this there is nothing to size a model for
EPOCHS_FOR_DROPOUT = 10.0  # a budget that reads the text this often overfits without dropout
IO_DROPOUT = 0.4
RECIPE = dict(model="lstm", layers=1, embedding=0, dropout=0.0, batch_size=32, num_steps=64, optimizer="adamw",
              lr=5e-3, weight_decay=0.01, clip=1.0, schedule="cosine", warmup=0.02, min_lr_ratio=0.1)


def measure_tokens_per_second(width: int, vocab_size: int, batch_size: int, num_steps: int,
                              steps: int = 3) -> float:
    """Training tokens per second of the recipe's model at ``width`` on this machine (random ids,
    one untimed step first)."""
    from rnnkit.train import compute_gradients

    generator = torch.Generator().manual_seed(0)
    model = build_model("lstm", vocab_size, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    X, Y = torch.randint(0, vocab_size, (2, batch_size, num_steps), generator=generator)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        compute_gradients(model, X, Y, clip=1.0)  # the Trainer's own step, so that its speed is measured
        optimizer.step()
    return steps * batch_size * num_steps / (time.perf_counter() - started)


def choose_config(config, train_tokens: int, vocab_size: int, budget_s: float) -> tuple[object, dict]:
    """The recipe with the width chosen for ``budget_s`` seconds and ``train_tokens`` characters of
    training text; returns (config, report) where the report says what was measured and why."""
    if train_tokens < MIN_TRAIN_TOKENS:
        raise RnnkitError(f"the training text has {train_tokens} characters; sizing a model needs at least "
                          f"{MIN_TRAIN_TOKENS} (or give --model/--hidden yourself)")
    recipe = replace(config, **RECIPE)
    measured, chosen, started = {}, WIDTHS[0], time.perf_counter()
    for width in WIDTHS:
        params = parameter_count("lstm", vocab_size, width)
        if params > PARAMETERS_PER_TOKEN * train_tokens:
            break
        speed = measure_tokens_per_second(width, vocab_size, recipe.batch_size, recipe.num_steps)
        measured[width] = round(speed)
        if speed * budget_s < TOKENS_PER_PARAMETER * params:
            break
        chosen = width
        if time.perf_counter() - started > 0.05 * budget_s:  # measuring may take 5% of the budget at most
            break
    epochs = measured.get(chosen, 0) * budget_s / train_tokens  # passes over the text the budget buys
    io_dropout = IO_DROPOUT if epochs >= EPOCHS_FOR_DROPOUT else 0.0
    report = {"hidden": chosen, "tokens_per_s": measured, "parameters": parameter_count("lstm", vocab_size, chosen),
              "epochs": round(epochs, 1), "io_dropout": io_dropout,
              "measuring_s": round(time.perf_counter() - started, 2)}
    return replace(recipe, hidden=chosen, io_dropout=io_dropout), report
