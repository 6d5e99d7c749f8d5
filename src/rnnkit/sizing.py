"""Choosing a model for a corpus and a time budget (``rnnkit train --time-budget`` without sizes).

The rule, and why:

- **A one-layer LSTM, batch 32 x 64 steps, AdamW 5e-3 with a short warmup and a cosine decay over
  the budget, gradient clipping at 1, reading the text as running lanes with the state carried
  from window to window** (``--split sequential``: truncated backpropagation through time, as
  char-rnn does). On a CPU with minutes to spend, a single layer learns faster per second than a
  deep one, small batches give many updates, and the carried state lets the model use more than
  64 characters of context. Measured at nanoGPT's wall time on this project's 2-core machine
  (single runs; the closing notes of the issue list them): Tiny Shakespeare (98 s) 1x256 1.56
  nats, 2x256 1.73 (1x384 1.74 and 1x512 1.91 in earlier runs of the recipe); The Time Machine
  (89 s, dropout) 1x256 1.58, 2x256 1.62; Vim's tutor in Russian/Ukrainian/Bulgarian (83 s,
  dropout) 1x256 2.16, 2x256 2.22. Only Python code (83 s) liked depth: 2x256 1.52, 1x384 1.54,
  1x256 1.56 (batch 64: 1.59); one rule for all texts keeps one layer.
- **The width is the largest whose measured speed leaves enough training.** In the budget's first
  seconds the candidate widths each run a few real training steps on the device the run trains on
  (this CPU, or the GPU); the budget then buys ``tokens(width) = tokens_per_second(width) x
  budget``. A model needs several characters of training per weight before more width pays
  (:data:`TOKENS_PER_PARAMETER`); the widest candidate that gets them wins. A small corpus caps the
  width too (:data:`PARAMETERS_PER_TOKEN`): more weights than that per character of text only
  memorise it. Both count the weights a step trains (:func:`trained_weights`), not the one-hot input
  table, which is a lookup of one row per character: with it counted, the 165-character alphabet of
  the Cyrillic tutors held the model at 128 wide (2.19 nats); without, 256 (2.16). The
  narrowest width is always measured and kept.
- **Dropout on the outputs where the budget reads the text many times** (:data:`EPOCHS_FOR_DROPOUT`
  passes or more): on The Time Machine (161k training characters, 98 s, ~37 passes) the validation
  loss was best at half the budget and then rose; ``io_dropout`` 0.2 / 0.4 gave 1.590 / 1.582
  against 1.608 without (single runs); 0.6 with weight decay 0.1 gave 1.596 there (and 2.10 on the
  Cyrillic tutors, against 2.16 with 0.4): 0.4 it stays. Tiny Shakespeare (~6 passes) gets none.
- **A moving average of the weights there too** (``ema`` :data:`EMA`: validation and the best
  checkpoint use it): paired single runs at nanoGPT's time, the same seed with and without it, gave
  Cyrillic tutors 2.129 / 2.163 and 2.144 / 2.148, The Time Machine 1.571 / 1.574, code 1.499 /
  1.503; a decay of 0.999 gave 2.154 and 1.568. Small, and never worse in these pairs.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from rnnkit.errors import RnnkitError
from rnnkit.models import GATES, build_model, parameter_count

WIDTHS = (128, 256, 384, 512, 768, 1024)
TOKENS_PER_PARAMETER = 10.0  # training characters a parameter needs within the budget
PARAMETERS_PER_TOKEN = 4.0  # at most this many parameters per character of training text
MIN_TRAIN_TOKENS = 2_000  # below this there is nothing to size a model for
EPOCHS_FOR_DROPOUT = 10.0  # a budget that reads the text this often overfits without dropout
IO_DROPOUT = 0.4
EMA = 0.998  # the weight average's decay where the budget reads the text many times
RECIPE = dict(model="lstm", layers=1, embedding=0, dropout=0.0, batch_size=32, num_steps=64, optimizer="adamw",
              lr=5e-3, weight_decay=0.01, clip=1.0, schedule="cosine", warmup=0.02, min_lr_ratio=0.1)


def trained_weights(vocab_size: int, width: int) -> int:
    """The recipe's parameters less its one-hot input table (vocab x 4 width): a step reads one row
    of that table per character, so its size costs no time, and a large alphabet (Chinese, say)
    does not make a model look too big for its text."""
    return parameter_count("lstm", vocab_size, width) - GATES["lstm"] * width * vocab_size


def measure_tokens_per_second(width: int, vocab_size: int, batch_size: int, num_steps: int,
                              steps: int = 3, device: torch.device | str = "cpu") -> float:
    """Training tokens per second of the recipe's model at ``width`` on ``device`` (the one the run
    will train on; random ids, one untimed step first)."""
    from rnnkit.train import compute_gradients

    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    model = build_model("lstm", vocab_size, width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    X, Y = torch.randint(0, vocab_size, (2, batch_size, num_steps), generator=generator).to(device)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            synchronize(device)
            started = time.perf_counter()
        compute_gradients(model, X, Y, clip=1.0)  # the Trainer's own step, so that its speed is measured
        optimizer.step()
    synchronize(device)
    return steps * batch_size * num_steps / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a GPU runs asynchronously; a CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def choose_config(config, train_tokens: int, vocab_size: int, budget_s: float) -> tuple[object, dict]:
    """The recipe with the width chosen for ``budget_s`` seconds and ``train_tokens`` characters of
    training text; returns (config, report) where the report says what was measured and why."""
    if train_tokens < MIN_TRAIN_TOKENS:
        raise RnnkitError(f"the training text has {train_tokens} characters; sizing a model needs at least "
                          f"{MIN_TRAIN_TOKENS} (or give --model/--hidden yourself)")
    from rnnkit.train import select_device

    recipe = replace(config, **RECIPE)
    device = select_device(config.device)
    measured, chosen, started = {}, WIDTHS[0], time.perf_counter()
    capped_from = None  # the first measurement also starts the device (a CUDA context, the CPU kernel's
    # build: seconds that training would pay anyway), so the 5% cap counts from its end
    for width in WIDTHS:
        weights = trained_weights(vocab_size, width)
        if width != WIDTHS[0] and weights > PARAMETERS_PER_TOKEN * train_tokens:
            break
        speed = measure_tokens_per_second(width, vocab_size, recipe.batch_size, recipe.num_steps,
                                          device=device)
        measured[width] = round(speed)
        capped_from = capped_from or time.perf_counter()
        if width != WIDTHS[0] and speed * budget_s < TOKENS_PER_PARAMETER * weights:
            break
        chosen = width
        if time.perf_counter() - capped_from > 0.05 * budget_s:  # measuring may take 5% of the budget at most
            break
    epochs = measured.get(chosen, 0) * budget_s / train_tokens  # passes over the text the budget buys
    many_passes = epochs >= EPOCHS_FOR_DROPOUT
    io_dropout, ema = (IO_DROPOUT, EMA) if many_passes else (0.0, 0.0)
    report = {"hidden": chosen, "device": str(device),
              "tokens_per_s": measured, "parameters": parameter_count("lstm", vocab_size, chosen),
              "epochs": round(epochs, 1), "io_dropout": io_dropout, "ema": ema,
              "measuring_s": round(time.perf_counter() - started, 2)}
    return replace(recipe, hidden=chosen, io_dropout=io_dropout, ema=ema), report
