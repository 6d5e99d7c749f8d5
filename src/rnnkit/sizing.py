"""Choosing a model for a corpus and a time budget (``rnnkit train --time-budget`` without sizes).

The rule, and why:

- **A one-layer LSTM, batch 8 x 64 steps, AdamW 1e-2 with a short warmup and a cosine decay over
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
- **Learning rate 1e-2.** With 8 rows and DropConnect, 1e-2 beat the 5e-3 the recipe had on every
  text tried (paired single runs at nanoGPT's time, the sized model with only the rate changed):
  Tiny Shakespeare 1.496 / 1.483, The Time Machine 1.437 / 1.421, European tutors 2.225 / 2.177,
  Vim manual 1.541 / 1.499, Cyrillic tutors (1x128) 2.042 / 2.005 and (1x256) 2.028 / 1.966. 2e-2
  was better still on Tiny Shakespeare (1.464) and worse on the Cyrillic tutors (1x128 2.029, 1x256
  1.974): 1e-2 is the rate that helped everywhere.
- **8 rows, not 32: a minute buys updates, not characters.** On this CPU a 1x256 step of 8 rows
  runs at ~70% of 32 rows' characters per second, so 8 rows make ~2.8 times the updates. Paired
  single runs at nanoGPT's time (32 / 16 / 8 rows, the rest as sized for 32): Tiny Shakespeare
  1.546 / 1.513 / 1.500, The Time Machine 1.555 / 1.514 / 1.496, Cyrillic tutors 2.135 / 2.094 /
  2.051, European tutors 2.330 / 2.311 / 2.314; code (8 rows) 1.449 and the Vim manual 1.459,
  against 1.506 and 1.559 for 32 rows in the previous table. **A GPU keeps 32 rows**: its step
  takes about the same time for 8 rows as for 32 (it waits on kernel launches), so 8 rows buy no
  more updates there, only fewer characters: on an H200 (``benchmarks/gpu_budget.py``, 60 s, the
  same sized model) Tiny Shakespeare 1.532 with 8 rows, 1.484 with 32; The Time Machine 1.403 with
  both. More rows than 32 were worse there too (512 rows 1.508 against 32 rows 1.449 on Tiny
  Shakespeare, 128 against 32 rows 1.563 / 1.508 on The Time Machine, with the previous recipe).
- **DropConnect on the recurrent weights where the model has 0.4 trained weights or more per
  training character** (:data:`WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP`; and the budget reads the
  text three times or more, :data:`EPOCHS_FOR_WEIGHT_DROP`), ``weight_drop`` :data:`WEIGHT_DROP`,
  Merity et al.'s AWD-LSTM: with 8 rows the small texts overfit within the first half of the
  budget; dropping 30% of the hidden-to-hidden weights (one mask per step) let them improve to the
  end. Paired single runs (AdamW 5e-3), 8 rows without / with it: The Time Machine (1.75 weights per
  character) 1.496 / 1.487, Cyrillic tutors (3.1) 2.051 / 2.007 (0.5: 2.037), European tutors
  (0.58) 2.314 / 2.226, code (0.53) 1.449 / 1.439; where it cost: the Vim manual (0.51) 1.459 /
  1.481, Tiny Shakespeare (0.28) 1.500 / 1.539. This rule first counted passes (five or more), and
  at nanoGPT's time Tiny Shakespeare, the Vim manual and the European tutors get 4-7, so the
  measured speed turned it on or off run by run. With AdamW 1e-2, the side-by-side tables' repeats
  with the same seed and nearly the same budget, without / with it: European tutors (seed 2, 101 s)
  2.194 / 2.104, the Vim manual (seed 1, 80 s) 1.470 / 1.465, Tiny Shakespeare (seed 2, 98-100 s)
  1.487 / 1.525. Weights per character separates Tiny Shakespeare (0.28), where it costs, from the
  texts where it helps or is even at this rate (0.5 and more). As the width rule gives each weight
  8 characters of training, 0.4 weights per character means 3.2 passes or more, except for the
  narrowest width, which is kept whatever its speed: hence the three passes too.
- **The width is the largest whose measured speed leaves enough training.** In the budget's first
  seconds the candidate widths each run a few real training steps on the device the run trains on
  (this CPU, or the GPU); the budget then buys ``tokens(width) = tokens_per_second(width) x
  budget``. A model needs several characters of training per weight before more width pays
  (:data:`TOKENS_PER_PARAMETER`); the widest candidate that gets them wins. 8 characters, not the
  10 this rule had: at 10 the two texts whose 1x256 got 9-10 per weight flipped between 1x128 and
  1x256 from one run to the next on the measured speed, and 1x256 was the better of the two on both
  (lr 1e-2, paired single runs): European tutors 2.177 (1x128) / 2.105 (1x256), Cyrillic tutors
  2.005 / 1.966. No other text's choice moved: their next width got 3-5 characters per weight.
  A small corpus caps the
  width too (:data:`PARAMETERS_PER_TOKEN`): more weights than that per character of text only
  memorise it. Both count the weights a step trains (:func:`trained_weights`), not the one-hot input
  table, which is a lookup of one row per character: with it counted, the 165-character alphabet of
  the Cyrillic tutors held the model at 128 wide (2.19 nats); without, 256 (2.16). The
  narrowest width is always measured and kept.
- **Dropout on the outputs and a moving average of the weights, beside DropConnect, where the model
  has many weights for its text or the budget reads a small text very often**: 2.5 trained weights
  or more per training character (:data:`WEIGHTS_PER_CHARACTER_FOR_DROPOUT`), or fifty passes
  (``io_dropout`` :data:`IO_DROPOUT` and ``ema`` :data:`EMA`, which validation and the best
  checkpoint then use). With 32 rows and no DropConnect they helped from ten passes (The
  Time Machine 1.608 without, 1.582 with dropout 0.4; the average moved paired runs by 0.00-0.03).
  Beside DropConnect they cost where it suffices and helped where it did not: paired single runs, 8
  rows, DropConnect alone / with the average / with both: The Time Machine (1x256, 1.75 weights per
  character) 1.444 / 1.455 / 1.487 and code (0.53) 1.374 / - / 1.439, but the Cyrillic tutors (3.1)
  2.063 / 2.036 / 2.007. This rule first counted passes (30 or more), which sat inside the passes
  that 80-100 s budgets buy on these small texts, so the measured speed decided run by run; in the
  side-by-side table (3 repeats each, AdamW 1e-2) the repeats that got them were the better ones on
  the Cyrillic tutors (3.1 weights per character: 1.975 with, 2.044 / 2.047 without) and the CJK
  tutors (1x128, 3.8: 3.012 with, 3.053 / 3.083 without), and the worse one on The Time Machine
  (1.75: 1.445 with, 1.423 / 1.425 without). Weights per character separates them where passes did
  not. A very small text read fifty times or more gets them too (:data:`EPOCHS_FOR_DROPOUT`): the
  first 56,000 characters of The Time Machine in 60 s (1x128, 84 passes, 1.49 weights per
  character; paired runs, seeds 0 and 1) 1.648 / 1.652 with them, 1.706 / 1.672 without. Fifty lies
  between that and The Time Machine's 26-32 passes.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from rnnkit.errors import RnnkitError
from rnnkit.models import GATES, build_model, parameter_count

WIDTHS = (128, 256, 384, 512, 768, 1024)
TOKENS_PER_PARAMETER = 8.0  # training characters a parameter needs within the budget
PARAMETERS_PER_TOKEN = 4.0  # at most this many parameters per character of training text
MIN_TRAIN_TOKENS = 2_000  # below this there is nothing to size a model for
WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP = 0.4  # a model this large for its text gets DropConnect ...
EPOCHS_FOR_WEIGHT_DROP = 3.0  # ... where the budget reads the text this often
WEIGHT_DROP = 0.3
WEIGHTS_PER_CHARACTER_FOR_DROPOUT = 2.5  # trained weights per training character that overfit with DropConnect alone
EPOCHS_FOR_DROPOUT = 50.0  # ... and so does a budget that reads the text this often
IO_DROPOUT = 0.4
EMA = 0.998  # the weight average's decay, given with the output dropout
ROWS_ON_CPU, ROWS_ON_ACCELERATOR = 8, 32  # batch rows: see the module's docstring
RECIPE = dict(model="lstm", layers=1, embedding=0, dropout=0.0, num_steps=64, optimizer="adamw",
              lr=1e-2, weight_decay=0.01, clip=1.0, schedule="cosine", warmup=0.02, min_lr_ratio=0.1)


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

    device = select_device(config.device)
    recipe = replace(config, **RECIPE, batch_size=ROWS_ON_CPU if device.type == "cpu" else ROWS_ON_ACCELERATOR)
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
    weights_per_character = trained_weights(vocab_size, chosen) / train_tokens
    dense = weights_per_character >= WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP and epochs >= EPOCHS_FOR_WEIGHT_DROP
    weight_drop = WEIGHT_DROP if dense else 0.0
    overfits = weights_per_character >= WEIGHTS_PER_CHARACTER_FOR_DROPOUT or epochs >= EPOCHS_FOR_DROPOUT
    io_dropout, ema = (IO_DROPOUT, EMA) if dense and overfits else (0.0, 0.0)
    report = {"hidden": chosen, "device": str(device),
              "tokens_per_s": measured, "parameters": parameter_count("lstm", vocab_size, chosen),
              "epochs": round(epochs, 1), "weights_per_character": round(weights_per_character, 2),
              "weight_drop": weight_drop, "io_dropout": io_dropout, "ema": ema,
              "measuring_s": round(time.perf_counter() - started, 2)}
    return replace(recipe, hidden=chosen, weight_drop=weight_drop, io_dropout=io_dropout, ema=ema), report
