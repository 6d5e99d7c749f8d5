"""Choosing a model for a corpus and a time budget (``rnnkit train --time-budget`` without sizes).

The rule, and the reason for each part (the runs behind every number: ``docs/design/sizing.md``):

- **The recipe** (:data:`RECIPE`): a one-layer LSTM over 64-step windows, AdamW 1e-2 with a 2%
  warmup and a cosine decay laid over the budget, gradient clipping at 1, the text read as running
  lanes with the state carried from window to window (``--split sequential``, truncated
  backpropagation through time as char-rnn does). With minutes to spend, one layer learns more per
  second than two, and the carried state gives the model more than 64 characters of context; 1e-2
  is the rate that helped on every text tried.
- **8 batch rows on a CPU, 32 on a GPU** (:data:`ROWS_ON_CPU`, :data:`ROWS_ON_ACCELERATOR`). On a CPU
  8 rows read about 70% of the characters per second that 32 do, so they make almost 3 times the
  updates, which a short budget needs more than characters. A GPU's step takes about as long for 8
  rows as for 32 (it waits on kernel launches): fewer rows would only read less text there, and
  more than 32 did worse.
- **The width is the widest that the budget trains enough and the text does not cap.** Each
  candidate width's training speed is measured on the device the run trains on, in the budget's
  first seconds; the budget buys ``tokens_per_second(width) x budget`` characters of training. A
  width needs :data:`TOKENS_PER_PARAMETER` of them per trained weight before it beats a narrower
  one, and a text supports at most :data:`PARAMETERS_PER_TOKEN` weights per character (more only
  memorise it). Both count the weights a step trains (:func:`trained_weights`): the one-hot input
  table is a lookup, so a large alphabet does not make a model look too big. The narrowest width is
  always measured and kept. Measuring stops at 5% of the budget (:data:`MEASURING_SHARE`), counted
  from the end of the first measurement, which also starts the device (seconds training would pay
  anyway); all of it comes out of the budget.
- **DropConnect** (``weight_drop`` :data:`WEIGHT_DROP` on the hidden-to-hidden weights, one mask per
  step: Merity et al.'s AWD-LSTM) **where the model has** :data:`WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP`
  **trained weights or more per training character and the budget reads the text**
  :data:`EPOCHS_FOR_WEIGHT_DROP` **times or more.** Such a model overfits its text within the
  budget, and with DropConnect it improves to the end; with fewer weights per character it costs.
  Weights per character decide, not passes: passes follow the measured speed, which would turn it
  on and off from one run to the next. (With 8 characters per weight, 0.4 weights per character is
  3.2 passes already; the passes condition is for the narrowest width, kept whatever its speed.)
- **Output dropout and a moving average of the weights, beside DropConnect** (``io_dropout``
  :data:`IO_DROPOUT`, ``ema`` :data:`EMA`, which validation and the best checkpoint then use),
  **where the model has** :data:`WEIGHTS_PER_CHARACTER_FOR_DROPOUT` **trained weights or more per
  training character, or the budget reads the text** :data:`EPOCHS_FOR_DROPOUT` **times or more.**
  There DropConnect alone does not stop the overfitting; where it does, they cost.

``choose_config(..., speeds={width: tokens_per_second})`` applies the same rule to given speeds
instead of measuring (tests, or sizing for a machine measured before).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from rnnkit.errors import RnnkitError
from rnnkit.models import GATES, build_model, parameter_count

WIDTHS = (128, 256, 384, 512, 768, 1024)  # the candidates, narrowest first
TOKENS_PER_PARAMETER = 8.0  # training characters the budget must buy per trained weight for a width to be taken
PARAMETERS_PER_TOKEN = 4.0  # at most this many trained weights per character of training text
MIN_TRAIN_TOKENS = 2_000  # below this there is nothing to size a model for
MEASURING_SHARE = 0.05  # measuring may take this share of the budget, after the first (device-starting) width
WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP = 0.4  # a model this large for its text gets DropConnect ...
EPOCHS_FOR_WEIGHT_DROP = 3.0  # ... where the budget reads the text this often
WEIGHT_DROP = 0.3  # share of the hidden-to-hidden weights dropped at each step
WEIGHTS_PER_CHARACTER_FOR_DROPOUT = 2.5  # a model this large for its text overfits with DropConnect alone ...
EPOCHS_FOR_DROPOUT = 50.0  # ... and so does one that reads its text this often
IO_DROPOUT = 0.4  # dropout on the recurrent outputs, given beside DropConnect
EMA = 0.998  # the weight average's decay, given with the output dropout
ROWS_ON_CPU, ROWS_ON_ACCELERATOR = 8, 32  # batch rows: more updates on a CPU; a GPU's step costs the same for 8
RECIPE = dict(
    model="lstm",
    layers=1,
    embedding=0,
    dropout=0.0,
    num_steps=64,
    optimizer="adamw",
    lr=1e-2,
    weight_decay=0.01,
    clip=1.0,
    schedule="cosine",
    warmup=0.02,
    min_lr_ratio=0.1,
)


def trained_weights(vocab_size: int, width: int) -> int:
    """The recipe's parameters less its one-hot input table (vocab x 4 width): a step reads one row
    of that table per character, so its size costs no time, and a large alphabet (Chinese, say)
    does not make a model look too big for its text."""
    return parameter_count("lstm", vocab_size, width) - GATES["lstm"] * width * vocab_size


def measure_tokens_per_second(
    width: int, vocab_size: int, batch_size: int, num_steps: int, steps: int = 3, device: torch.device | str = "cpu"
) -> float:
    """Training tokens per second of the recipe's model at ``width`` on ``device`` (the one the run
    will train on; random ids, one untimed step first)."""
    from rnnkit.training.optim import compute_gradients

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


SpeedOf = Callable[[int], float | None]  # width -> training tokens per second (None: look no further)


def choose_config(
    config, train_tokens: int, vocab_size: int, budget_s: float, *, speeds: Mapping[int, float] | None = None
) -> tuple[object, dict]:
    """The recipe with the width and the regularisation chosen for ``budget_s`` seconds and
    ``train_tokens`` characters of training text (module doc); returns (config, report), the report
    saying what the choice was made from.

    ``speeds`` (width -> training tokens per second): the candidate widths and their speeds, used
    instead of measuring them on this machine; the report then says ``"speeds": "given"`` and
    ``"measuring_s": 0``. Without it the speeds are measured, and the seconds that takes
    (``measuring_s``) belong to the budget."""
    if train_tokens < MIN_TRAIN_TOKENS:
        raise RnnkitError(
            f"the training text has {train_tokens} characters; sizing a model needs at least "
            f"{MIN_TRAIN_TOKENS} (or give --model/--hidden yourself)"
        )
    from rnnkit.training.device import select_device

    device = select_device(config.device)
    recipe = replace(config, **RECIPE, batch_size=ROWS_ON_CPU if device.type == "cpu" else ROWS_ON_ACCELERATOR)
    started = time.perf_counter()
    if speeds is None:
        widths, speed_of = WIDTHS, measured_speeds(vocab_size, recipe.batch_size, recipe.num_steps, device, budget_s)
    else:
        widths, speed_of = given_widths(speeds), speeds.get
    chosen, seen = choose_width(widths, speed_of, vocab_size, train_tokens, budget_s)
    epochs = seen[chosen] * budget_s / train_tokens  # passes over the text the budget buys
    weights_per_character = trained_weights(vocab_size, chosen) / train_tokens
    weight_drop, io_dropout, ema = regularisation(weights_per_character, epochs)
    report = {
        "hidden": chosen,
        "device": str(device),
        "speeds": "measured" if speeds is None else "given",
        "tokens_per_s": seen,
        "parameters": parameter_count("lstm", vocab_size, chosen),
        "epochs": round(epochs, 1),
        "weights_per_character": round(weights_per_character, 2),
        "weight_drop": weight_drop,
        "io_dropout": io_dropout,
        "ema": ema,
        "measuring_s": round(time.perf_counter() - started, 2) if speeds is None else 0.0,
    }
    return replace(recipe, hidden=chosen, weight_drop=weight_drop, io_dropout=io_dropout, ema=ema), report


def choose_width(
    widths: tuple[int, ...], speed_of: SpeedOf, vocab_size: int, train_tokens: int, budget_s: float
) -> tuple[int, dict[int, int]]:
    """The widest of ``widths`` (narrowest first) whose speed buys :data:`TOKENS_PER_PARAMETER`
    training characters per trained weight and that stays within :data:`PARAMETERS_PER_TOKEN`
    weights per character of text; the narrowest is kept whatever its speed. Returns it and the
    speeds looked at (tokens/s, rounded). Widths are looked at in order and only while each can
    still win, so a measurement never times a width that could not be chosen."""
    chosen, seen = widths[0], {}
    for width in widths:
        weights = trained_weights(vocab_size, width)
        if width != widths[0] and weights > PARAMETERS_PER_TOKEN * train_tokens:
            break
        speed = speed_of(width)
        if speed is None:
            break
        seen[width] = round(speed)
        if width != widths[0] and speed * budget_s < TOKENS_PER_PARAMETER * weights:
            break
        chosen = width
    return chosen, seen


def regularisation(weights_per_character: float, epochs: float) -> tuple[float, float, float]:
    """(weight_drop, io_dropout, ema) for a model with ``weights_per_character`` trained weights per
    training character whose budget reads its text ``epochs`` times (module doc)."""
    if weights_per_character < WEIGHTS_PER_CHARACTER_FOR_WEIGHT_DROP or epochs < EPOCHS_FOR_WEIGHT_DROP:
        return 0.0, 0.0, 0.0
    if weights_per_character >= WEIGHTS_PER_CHARACTER_FOR_DROPOUT or epochs >= EPOCHS_FOR_DROPOUT:
        return WEIGHT_DROP, IO_DROPOUT, EMA
    return WEIGHT_DROP, 0.0, 0.0


def measured_speeds(vocab_size: int, batch_size: int, num_steps: int, device: torch.device, budget_s: float) -> SpeedOf:
    """``speed_of(width)``: the recipe's training tokens per second at ``width``, measured on
    ``device``; None once measuring has taken :data:`MEASURING_SHARE` of the budget, counted from
    the end of the first measurement (which also starts the device: a CUDA context, the CPU
    kernel's build)."""
    first_done = None

    def speed_of(width: int) -> float | None:
        nonlocal first_done
        if first_done is not None and time.perf_counter() - first_done > MEASURING_SHARE * budget_s:
            return None
        speed = measure_tokens_per_second(width, vocab_size, batch_size, num_steps, device=device)
        if first_done is None:
            first_done = time.perf_counter()
        return speed

    return speed_of


def given_widths(speeds: Mapping[int, float]) -> tuple[int, ...]:
    """The widths of given ``speeds``, narrowest first, once each width is a positive integer and
    each speed a positive number of tokens per second."""
    if not speeds:
        raise RnnkitError("speeds must give at least one width's training tokens per second")
    for width, speed in speeds.items():
        if (
            isinstance(width, bool)
            or not isinstance(width, int)
            or width < 1
            or isinstance(speed, bool)
            or not isinstance(speed, (int, float))
            or not math.isfinite(speed)
            or speed <= 0
        ):
            raise RnnkitError(
                f"speeds must map widths (positive integers) to training tokens per second "
                f"(positive numbers), got {width!r}: {speed!r}"
            )
    return tuple(sorted(speeds))
