"""What a training run shows on the terminal: a progress bar per epoch, a line per epoch and per
validation, periodic samples, and the lines around them (the model, resuming, the result).

Only the main process of a distributed run shows anything; ``quiet`` keeps the progress and the
per-epoch lines out, not the lines that say what happened to the run.
"""

from __future__ import annotations

import math
import signal
import sys
import time
import warnings

from rnnkit.config import SAMPLE_PREFIXES, RunOptions, TrainConfig
from rnnkit.models import describe_training_path
from rnnkit.tokens import tokenizer_for
from rnnkit.training import Callback, EpochStats, EvalPoint, Trainer
from rnnkit.training.steps import EagerStep

OPENING_CHARACTERS = 64  # the opening of a training text that a sample's default prefix is taken from


def default_sample_prefixes(trainer: Trainer) -> list[str]:
    """The samples' prefixes when none is given: the d2l notebook's for the book (and word or byte
    models); for a character model of any other text, the opening words of its training text, which
    are in its alphabet (a Russian text has no "time traveller")."""
    config = trainer.config
    if config.corpus == "timemachine" or not tokenizer_for(config.tokens).samples_from_text or not len(trainer.corpus):
        return SAMPLE_PREFIXES
    opening = "".join(trainer.vocab.to_tokens(trainer.corpus[:OPENING_CHARACTERS].tolist()))
    opening = opening.lstrip("\ufeff").strip().split("\n")[0].strip()  # a byte-order mark is not text
    if len(opening) > 20:  # whole words up to 20 characters; 12 characters of a text without spaces
        cut = opening[:21].rfind(" ")
        opening = opening[:cut] if cut > 4 else opening[:12]
    return [opening] if opening else SAMPLE_PREFIXES


def training_path(trainer: Trainer) -> str:
    """How the run's training steps are computed, for the first line: the step (eager, CUDA graphs,
    distributed) and, where the model says, its execution path."""
    path = describe_training_path(trainer.model, trainer.device)
    step = "" if type(trainer.step_fn) is EagerStep else trainer.step_fn.name
    return "; ".join(part for part in (step, path) if part)


class Console(Callback):
    """The terminal's view of a run (module doc)."""

    def __init__(self, options: RunOptions, main_process: bool = True) -> None:
        self.options, self.main = options, main_process
        self.quiet = options.quiet or not main_process
        self.bar = None
        self.last_postfix = 0.0
        self.prefixes: list[str] = []

    def say(self, text: str, err: bool = False) -> None:
        """A line about the run (not progress): shown unless this is not the main process."""
        if self.main:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def tell(self, text: str) -> None:
        """A progress line: shown unless ``quiet``."""
        if not self.quiet:
            print(text, flush=True)

    def sized(self, config: TrainConfig, budget_s: float, train_tokens: int, report: dict) -> None:
        speeds = ", ".join(f"{w}: {v:,}" for w, v in report["tokens_per_s"].items())
        self.tell(
            f"sized for {budget_s:g} s and {train_tokens:,} training characters: LSTM 1x{config.hidden} "
            f"({report['parameters']:,} parameters; {report['epochs']:g} passes over the text, "
            f"{report['weights_per_character']:g} trained weights per character), "
            f"batch {config.batch_size}x{config.num_steps}, "
            f"{'weight drop ' + str(config.weight_drop) + ', ' if config.weight_drop else ''}"
            f"{'io-dropout ' + str(config.io_dropout) + ', ' if config.io_dropout else ''}"
            f"{'weight average (ema) ' + str(config.ema) + ', ' if config.ema else ''}AdamW "
            f"{config.lr:g} with warmup and cosine decay ({report.get('speeds', 'measured')} tokens/s by "
            f"width on {report['device']}: {speeds}; {report['measuring_s']} s)"
        )

    def started(self, trainer: Trainer) -> None:
        """The run's first lines: the corpus, the model, where it trains and how."""
        self.prefixes = [
            p
            for p in (self.options.sample_prefixes or default_sample_prefixes(trainer))
            if not trainer.vocab.unknown(p) or trainer.vocab.unk_token
        ]
        config, world = trainer.config, trainer.world
        if tokenizer_for(config.tokens).open_vocabulary:  # words: the rare ones are read as <unk>
            share = trainer.unknown_tokens / max(1, len(trainer.corpus))
            self.tell(
                f"words: {len(trainer.vocab) - 1:,} kept (seen at least {max(config.min_freq, 1)} times); "
                f"{trainer.unknown_tokens:,} of {len(trainer.corpus):,} words ({share:.1%}) read as <unk>"
            )
        path = training_path(trainer)
        processes = f", {world.size} processes ({config.batch_size // world.size} rows each)" if world.size > 1 else ""
        self.tell(
            f"corpus {config.corpus}: {len(trainer.corpus)} tokens, vocab {len(trainer.vocab)}, "
            f"{len(trainer.data.train)} batches/epoch; model {config.model} hidden {config.hidden} "
            f"({sum(p.numel() for p in trainer.model.parameters()):,} parameters) on {trainer.device}"
            f"{f' ({path})' if path else ''}"
            f"{processes}"
        )

    def on_batch_end(self, trainer: Trainer, tokens: int, loss) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            epoch = len(trainer.history) + 1
            total = trainer.data.train.num_windows * trainer.config.num_steps
            self.bar = tqdm(
                total=total,
                unit="tok",
                unit_scale=True,
                leave=False,
                disable=None,
                desc=f"epoch {epoch}" if trainer.config.time_budget else f"epoch {epoch}/{trainer.config.epochs}",
            )
        self.bar.update(tokens)
        now = time.monotonic()
        if now - self.last_postfix > 0.5:  # .item() syncs a GPU: only a few times a second
            value = float(loss)
            self.bar.set_postfix(loss=f"{value:.3f}", ppl=f"{math.exp(min(value, 50)):.2f}")
            self.last_postfix = now

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, trainer: Trainer, stats: EpochStats) -> None:
        self.close_bar()
        if self.quiet:
            return
        print(
            f"epoch {stats.epoch:4d}  train loss {stats.train_loss:.4f}  train ppl {stats.train_ppl:8.3f}  "
            f"val ppl {stats.val_ppl:8.3f}  {stats.tokens_per_s:,.0f} tok/s  {stats.seconds:.1f}s",
            flush=True,
        )
        every = self.options.sample_every
        if every and stats.epoch % every == 0 and stats.epoch < trainer.config.epochs:
            for prefix in self.prefixes:
                print("  -", self.sample(trainer, prefix, self.options.sample_chars))

    def on_eval(self, trainer: Trainer, point: EvalPoint) -> None:
        """Within-epoch validations (--eval-every, --time-budget): one line each."""
        if self.quiet or not (trainer.config.eval_every or trainer.config.time_budget):
            return
        if self.bar is not None:
            self.bar.clear()
        best = trainer.best is not None and trainer.best.step == point.step
        print(
            f"step {point.step:7d}  {point.seconds:7.1f}s  train loss {point.train_loss:.4f}  "
            f"val loss {point.val_loss:.4f}  lr {point.lr:.2e}{'  (best)' if best else ''}",
            flush=True,
        )

    def stopping(self, signum: int) -> None:
        """A signal asked the run to stop after the step in progress."""
        if self.bar is not None:
            self.bar.clear()
        self.say(f"\n{signal.Signals(signum).name}: stopping after this step to save the run", err=True)

    def finished(self, trainer: Trainer, out) -> None:
        """The result lines and the end-of-run sample."""
        config = trainer.config
        if trainer.history:
            last = trainer.history[-1]
            rate = tokenizer_for(config.tokens).bits_name
            self.say(
                f"done: val ppl {last.val_ppl:.3f}, val {rate} {last.val_bpc:.3f}, {last.seconds:.1f}s training; "
                f"saved in {out}"
            )
            if trainer.finished:
                self.say(f"stopped early: {trainer.finished}")
            if trainer.best is not None:
                self.say(
                    f"best: val loss {trainer.best.val_loss:.4f} nats/{tokenizer_for(config.tokens).unit} at "
                    f"step {trainer.best.step} (epoch {trainer.best.epoch:g}); generate and eval use it unless "
                    "--checkpoint last"
                )
        length = tokenizer_for(config.tokens).final_sample_length(self.options.sample_chars)
        for prefix in self.prefixes[-1:]:
            self.say("sample: " + self.sample(trainer, prefix, length))

    @staticmethod
    def sample(trainer: Trainer, prefix: str, num_chars: int) -> str:
        from rnnkit.generate import predict

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return predict(trainer.model, trainer.vocab, prefix, num_chars, token=trainer.config.tokens)
