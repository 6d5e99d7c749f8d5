"""The ``rnnkit`` command: ``train``, ``generate``, ``eval``, ``plot``, ``corpora``.

Bad input (files, corpora, settings, prefixes, run directories) ends with a one-line
``rnnkit: error: ...`` on stderr and exit status 2; a training run that diverges (NaN or infinite
loss) keeps its last good epoch and exits 3. Ctrl-C, SIGTERM or SIGHUP during training lets the
step in progress finish, saves the run there (mid-epoch), says how to resume, and exits 130, 143
or 129 (128 + signal). ``train`` also runs as one of torchrun's processes (:mod:`rnnkit.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

from rnnkit.errors import RnnkitError, Stop

SAMPLE_PREFIXES = ["traveller", "time traveller"]  # d2l 0.x notebook's


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__
    from rnnkit.data import SPLITS
    from rnnkit.models import MODEL_KINDS
    from rnnkit.train import CUDA_GRAPHS, OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="rnnkit", description="Character-level RNN language models.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (or --resume one)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.train_parser = t  # see given_train_options
    t.add_argument("--corpus", default=d.corpus, help="built-in corpus name (rnnkit corpora) or a text file")
    t.add_argument("--data", default=d.data, metavar="DATA_DIR",
                   help="train from a prepared directory (rnnkit prepare) through memory maps, instead of --corpus")
    t.add_argument("--val-tokens", type=int, default=d.val_tokens,
                   help="validate on the first N held-out tokens only (0: all)")
    t.add_argument("--encoding", default=d.encoding, help="text encoding of the corpus file")
    t.add_argument("--strip-gutenberg", action="store_true", help="drop a Project Gutenberg header and footer")
    t.add_argument("--preprocess", default=d.preprocess, choices=["d2l", "raw"])
    t.add_argument("--tokens", default=d.tokens, choices=["char", "word"],
                   help="model characters (the book) or words (whitespace-separated, §9.2)")
    t.add_argument("--min-freq", type=int, default=d.min_freq,
                   help="word models: words seen fewer times are read as <unk>")
    t.add_argument("--split", default=d.split, choices=SPLITS)
    t.add_argument("--num-train", type=int, default=d.num_train, help="d2l split: training windows")
    t.add_argument("--num-val", type=int, default=d.num_val, help="d2l split: validation windows")
    t.add_argument("--val-fraction", type=float, default=d.val_fraction, help="other splits: held-out tail")
    t.add_argument("--model", default=d.model, choices=MODEL_KINDS)
    t.add_argument("--hidden", type=int, default=d.hidden)
    t.add_argument("--layers", type=int, default=d.layers)
    t.add_argument("--dropout", type=float, default=d.dropout)
    t.add_argument("--io-dropout", type=float, default=d.io_dropout,
                   help="dropout on the learned embedding and on the recurrent outputs (any number of layers)")
    t.add_argument("--weight-drop", type=float, default=d.weight_drop, metavar="P",
                   help="DropConnect on the recurrent layers' hidden-to-hidden weights (rnn, gru, lstm; AWD-LSTM)")
    t.add_argument("--embedding", type=int, default=d.embedding, metavar="DIM",
                   help="learned embedding size (0: one-hot input, as the book)")
    t.add_argument("--activation", default=d.activation, choices=["tanh", "relu"])
    t.add_argument("--tie-weights", action="store_true",
                   help="the output layer shares the embedding's weight (needs --embedding equal to --hidden)")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--num-steps", type=int, default=d.num_steps)
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--clip", type=float, default=d.clip, help="max global gradient norm (0: off)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--cuda-graphs", default=d.cuda_graphs, choices=CUDA_GRAPHS,
                   help="on a CUDA device, replay each training step as a captured CUDA graph (auto: whenever "
                        "the run allows it: not --split sequential, no dropout)")
    t.add_argument("--time-budget", type=duration, default=d.time_budget, metavar="DURATION",
                   help="train for this wall-clock time (e.g. 90s, 3m, 1h, 1h30m; evaluations included) instead of "
                        "--epochs; 0: off")
    t.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="learning rate over the run (after --warmup): constant, or cosine/linear decay to "
                        "--min-lr-ratio x --lr")
    t.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the run with a linear lr warmup")
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="where the lr decay ends, x --lr")
    t.add_argument("--eval-every", type=int, default=d.eval_every, metavar="STEPS",
                   help="validate every N training steps (0: at each epoch's end; with --time-budget about ten "
                        "times per budget)")
    t.add_argument("--max-steps", type=int, default=d.max_steps, metavar="STEPS",
                   help="stop after this many training steps, whatever --epochs says (0: no limit); with "
                        "--resume, a larger count continues a run that stopped there")
    t.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                   help="validate and keep as best a moving average of the weights (0.998: ~the last 500 steps; "
                        "0: off)")
    t.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many evaluations without a better validation loss (0: never)")
    t.add_argument("--out", default="runs/tm", help="run directory to write")
    t.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run where it stopped (--epochs may raise "
                   "its epoch count; other settings come from the run)")
    t.add_argument("--save-every", type=int, default=10, help="checkpoint every N epochs (0: at the end only)")
    t.add_argument("--save-minutes", type=float, default=10.0,
                   help="also checkpoint after any step that finds the last save at least this many minutes old "
                        "(0: off)")
    t.add_argument("--save-steps", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every N training steps, mid-epoch (0: off); a resumed run continues "
                        "from the exact batch")
    t.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others (to start, in a step, while "
                        "rank 0 validates or saves) before giving up")
    t.add_argument("--sample-every", type=int, default=10, help="print samples every N epochs (0: never)")
    t.add_argument("--sample-prefix", action="append", dest="sample_prefixes", metavar="TEXT",
                   help=f"prefix for the periodic samples (repeatable; default: {SAMPLE_PREFIXES} for the book, "
                        "the opening words of the training text for any other)")
    t.add_argument("--sample-chars", type=int, default=50, help="length of the periodic samples")
    t.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")

    g = sub.add_parser("generate", help="generate text from a trained run")
    g.add_argument("run_dir")
    g.add_argument("--prefix", default="time traveller", help="text to continue ('' starts from a fresh state)")
    g.add_argument("-n", "--num-chars", type=int, default=200)
    g.add_argument("--greedy", action="store_true", help="always take the most likely character (d2l)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--alpha", type=float, default=1.0, help="sample from q ∝ p^alpha (alpha > 1 sharpens)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="the weights of the lowest validation loss, or the last ones (default: best where kept)")

    e = sub.add_parser("eval", help="perplexity and bits per character of a run on a corpus")
    e.add_argument("run_dir")
    e.add_argument("--corpus", default=None, help="built-in name or path (default: the run's own corpus)")
    e.add_argument("--encoding", default=None)
    e.add_argument("--strip-gutenberg", action="store_true", help="drop a Project Gutenberg header and footer")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="the weights of the lowest validation loss, or the last ones (default: best where kept)")

    p = sub.add_parser("plot", help="overlay the training curves of runs into one PNG")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves-compare.png")

    sub.add_parser("corpora", help="list the built-in corpora")

    from rnnkit.timeseries import MISSING, SERIES_MODELS, SeriesConfig

    ts = SeriesConfig()
    pr = sub.add_parser("prepare", help="write a corpus as token files for training through memory maps (--data)")
    pr.add_argument("corpus", help="a text file (or any file, with --tokens bytes)")
    pr.add_argument("--out", required=True, metavar="DATA_DIR")
    pr.add_argument("--tokens", choices=["char", "bytes"], default="char",
                    help="characters of the decoded text, or the file's bytes (any file, 256 tokens)")
    pr.add_argument("--encoding", default="utf-8")
    pr.add_argument("--val-fraction", type=float, default=0.1, help="the held-out tail")

    x = sub.add_parser("timeseries", help="autoregressive models of a real-valued series (§9.1; §9.6's exercise)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = x.add_mutually_exclusive_group()
    source.add_argument("--synthetic", choices=["d2l"], default="d2l",
                        help="the book's series: sin(0.01 t) + N(0, 0.2^2), t = 1..1000 (noise from --seed)")
    source.add_argument("--csv", metavar="FILE", help="read a column of a CSV file instead")
    x.add_argument("--column", help="the CSV column to model")
    x.add_argument("--time-column", help="a CSV column to put the rows in time order by")
    x.add_argument("--missing", choices=MISSING, default=ts.missing,
                   help="empty or NA cells: interpolate inside the series (dropped at the ends), drop rows, or refuse")
    x.add_argument("--models", nargs="+", choices=SERIES_MODELS, default=list(ts.models))
    x.add_argument("--tau", type=int, default=ts.tau, help="values the linear AR model regresses on")
    x.add_argument("--train", type=float, default=ts.train,
                   help="fraction of the series to train on (the rest is held out)")
    x.add_argument("--hidden", type=int, default=ts.hidden)
    x.add_argument("--layers", type=int, default=ts.layers)
    x.add_argument("--epochs", type=int, default=None,
                   help=f"full passes over the training part per recurrent model (default {ts.epochs}; with --resume, "
                        "a higher count continues training)")
    x.add_argument("--lr", type=float, default=ts.lr, help="Adam's learning rate")
    x.add_argument("--clip", type=float, default=ts.clip, help="max gradient norm (0: off)")
    x.add_argument("--ks", type=int, nargs="+", default=list(ts.ks), help="horizons to score")
    x.add_argument("--seed", type=int, default=ts.seed)
    x.add_argument("--out", default="runs/timeseries", help="run directory to write")
    x.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    x.add_argument("--resume", metavar="RUN_DIR", help="continue this run (--epochs may raise the count)")
    x.add_argument("--json", action="store_true", help="print {\"mse\": {MODEL: {K: ...}}} as the last line")
    x.add_argument("--quiet", action="store_true")

    from rnnkit.serve import Limits

    limits = Limits()
    s = sub.add_parser("serve", help="serve runs over HTTP: an API and a playground page (the serve extra)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    s.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="the weights of the lowest validation loss, or the last ones (default: best where kept)")
    s.add_argument("--max-chars", type=int, default=limits.max_chars, help="characters per generation stream")
    s.add_argument("--max-text", type=int, default=limits.max_text,
                   help="characters of a prompt, or of a text to score or read hidden units of")
    s.add_argument("--max-streams", type=int, default=limits.max_streams, help="generation streams at once")
    s.add_argument("--max-body", type=int, default=limits.max_body, help="bytes of a request body")
    s.add_argument("--threads", type=int, default=1,
                   help="PyTorch threads per operation (requests already run side by side)")
    return parser


def duration(text: str) -> float:
    """Seconds of a duration such as ``90``, ``90s``, ``3m``, ``1.5h``, ``1h30m``, ``2m30s`` (argparse type)."""
    import re

    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    number, term = r"([0-9]*\.?[0-9]+)", r"([0-9]*\.?[0-9]+)\s*(sec|min|s|m|h)\s*"
    if plain := re.fullmatch(rf"\s*{number}\s*", text):
        return float(plain.group(1))
    parts = re.findall(term, text) if re.fullmatch(rf"\s*(?:{term})+", text) else []
    if not parts or len({units[unit] for _, unit in parts}) < len(parts):  # none, or a unit twice (3m3m)
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 3m, 1h, 1h30m)")
    return sum(float(value) * units[unit] for value, unit in parts)


def default_sample_prefixes(trainer) -> list[str]:
    """The samples' prefixes when ``--sample-prefix`` is not given: the d2l notebook's for the book
    (and word or byte models); for a character model of any other text, the opening words of its
    training text, which are in its alphabet (a Russian text has no "time traveller")."""
    config = trainer.config
    if config.corpus == "timemachine" or config.tokens != "char" or len(trainer.corpus) == 0:
        return SAMPLE_PREFIXES
    opening = "".join(trainer.vocab.to_tokens(trainer.corpus[:64].tolist())).strip().split("\n")[0].strip()
    if len(opening) > 20:  # whole words up to 20 characters; 12 characters of a text without spaces
        cut = opening[:21].rfind(" ")
        opening = opening[:cut] if cut > 4 else opening[:12]
    return [opening] if opening else SAMPLE_PREFIXES


class Progress:
    """What a training run shows: a tqdm bar per epoch, one line per epoch, periodic samples."""

    def __init__(self, trainer, args: argparse.Namespace) -> None:
        self.trainer, self.args, self.bar = trainer, args, None
        self.last_postfix = 0.0
        prefixes = args.sample_prefixes or default_sample_prefixes(trainer)
        self.prefixes = [p for p in prefixes if not trainer.vocab.unknown(p) or trainer.vocab.unk_token]

    def on_batch(self, tokens: int, loss) -> None:
        if self.args.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            epoch = len(self.trainer.history) + 1
            total = self.trainer.data.train.num_windows * self.trainer.config.num_steps
            self.bar = tqdm(total=total, unit="tok", unit_scale=True, leave=False, disable=None,
                            desc=f"epoch {epoch}" if self.trainer.config.time_budget
                            else f"epoch {epoch}/{self.trainer.config.epochs}")
        self.bar.update(tokens)
        now = time.monotonic()
        if now - self.last_postfix > 0.5:  # .item() syncs a GPU: only a few times a second
            value = float(loss)
            self.bar.set_postfix(loss=f"{value:.3f}", ppl=f"{math.exp(min(value, 50)):.2f}")
            self.last_postfix = now

    def on_epoch(self, stats) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.args.quiet:
            return
        print(f"epoch {stats.epoch:4d}  train loss {stats.train_loss:.4f}  train ppl {stats.train_ppl:8.3f}  "
              f"val ppl {stats.val_ppl:8.3f}  {stats.tokens_per_s:,.0f} tok/s  {stats.seconds:.1f}s", flush=True)
        every = self.args.sample_every
        if every and stats.epoch % every == 0 and stats.epoch < self.trainer.config.epochs:
            for prefix in self.prefixes:
                print("  -", self.sample(prefix, self.args.sample_chars))

    def on_eval(self, point) -> None:
        """Within-epoch validations (--eval-every, --time-budget): one line each."""
        if self.args.quiet or not (self.trainer.config.eval_every or self.trainer.config.time_budget):
            return
        if self.bar is not None:
            self.bar.clear()
        best = self.trainer.best is not None and self.trainer.best["step"] == point.step
        print(f"step {point.step:7d}  {point.seconds:7.1f}s  train loss {point.train_loss:.4f}  "
              f"val loss {point.val_loss:.4f}  lr {point.lr:.2e}{'  (best)' if best else ''}", flush=True)

    def sample(self, prefix: str, num_chars: int) -> str:
        from rnnkit.generate import predict

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return predict(self.trainer.model, self.trainer.vocab, prefix, num_chars,
                           token=self.trainer.config.tokens)


def given_train_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Names of the ``train`` options given on the command line, whatever their values: ``argv`` is
    parsed again with every default replaced by a sentinel (argparse's SUPPRESS), so that an option
    given with its default value (``--epochs 100``) counts as given."""
    actions = parser.train_parser._actions
    defaults = [action.default for action in actions]
    for action in actions:
        action.default = argparse.SUPPRESS
    try:
        given = vars(parser.parse_args(argv))
    finally:
        for action, default in zip(actions, defaults, strict=True):
            action.default = default
    return set(given) - {"command"}


@contextlib.contextmanager
def signal_handlers(signals: tuple, handler):
    """Run the block with ``handler`` for ``signals`` (main thread only), then restore the previous ones."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_stop(signum, frame):
    """SIGTERM (docker stop, systemd, Kubernetes, Slurm preemption) and SIGHUP: raise :class:`Stop`."""
    raise Stop(signum)


SIZING_OPTIONS = {"model", "hidden", "layers", "embedding", "dropout", "io_dropout", "weight_drop", "tie_weights",
                  "activation", "batch_size", "num_steps", "optimizer", "lr", "weight_decay", "clip", "schedule",
                  "warmup", "min_lr_ratio", "ema"}


def sized_for_budget(config, quiet: bool):
    """(text, config) with the model and batch shape chosen for the corpus and the time budget
    (:mod:`rnnkit.sizing`); the seconds spent measuring come out of the budget."""
    from dataclasses import replace

    from rnnkit.sizing import choose_config
    from rnnkit.text import build_corpus, load_corpus_text

    text = load_corpus_text(config.corpus, config.encoding, config.strip_gutenberg or None)
    ids, vocab = build_corpus(text, config.preprocess)
    train_tokens = int(len(ids) * (1 - config.val_fraction))
    sized, report = choose_config(config, train_tokens, len(vocab), config.time_budget)
    sized = replace(sized, time_budget=max(config.time_budget - report["measuring_s"], 1e-3))
    if not quiet:
        speeds = ", ".join(f"{w}: {v:,}" for w, v in report["tokens_per_s"].items())
        print(f"sized for {config.time_budget:g} s and {train_tokens:,} training characters: LSTM 1x{sized.hidden} "
              f"({report['parameters']:,} parameters; {report['epochs']:g} passes over the text, "
              f"{report['weights_per_character']:g} trained weights per character), "
              f"batch {sized.batch_size}x{sized.num_steps}, "
              f"{'weight drop ' + str(sized.weight_drop) + ', ' if sized.weight_drop else ''}"
              f"{'io-dropout ' + str(sized.io_dropout) + ', ' if sized.io_dropout else ''}"
              f"{'weight average (ema) ' + str(sized.ema) + ', ' if sized.ema else ''}AdamW "
              f"{sized.lr:g} with warmup and cosine decay (measured tokens/s by width on {report['device']}: {speeds}; "
              f"{report['measuring_s']} s)", flush=True)
    return text, sized


def cmd_train(args: argparse.Namespace, given: set[str]) -> int:
    """``rnnkit train``, in one process or as one of torchrun's (:mod:`rnnkit.distributed`); the run
    directory's lock (rank 0's), once taken, and the process group, once joined, are let go however
    this returns."""
    from rnnkit import distributed
    from rnnkit.files import DirectoryLock

    try:
        world = distributed.world_from_environment()
    except RnnkitError as exc:
        exc.silent = os.environ.get("RANK", "0").strip() not in ("", "0")  # rank 0 says it, once
        raise
    lock = DirectoryLock(Path(args.resume or args.out))
    try:
        # SIGTERM/SIGHUP before training starts (reading the corpus, sizing, a kernel build) stop at
        # once like Ctrl-C: a run directory this start created is removed; training sets its own
        with signal_handlers((signal.SIGTERM, signal.SIGHUP), raise_stop):
            return train_locked(args, given, lock, world)
    except RnnkitError as exc:
        if world.rank and not distributed.joined():
            exc.silent = True  # the same check failed on every process: rank 0 says it, once
        elif world.rank:
            exc.args = (f"(rank {world.rank}) {exc}",)
        raise
    finally:
        lock.release()  # a joined process group is left by console()'s os._exit


def train_locked(args: argparse.Namespace, given: set[str], lock, world) -> int:
    """The body of ``rnnkit train``; takes ``lock`` (on the run directory) before reading or writing
    there. Under torchrun only rank 0 takes it, prints and writes."""
    from rnnkit import distributed
    from rnnkit.checkpoint import CONFIG_FILE, load_run, load_state, save_run, write_metrics
    from rnnkit.errors import TrainingDiverged
    from rnnkit.files import DirectoryLock
    from rnnkit.text import CORPORA
    from rnnkit.train import TrainConfig, Trainer, keep_freed_memory, select_device

    for name in ("save_every", "save_steps", "sample_every", "sample_chars"):
        if getattr(args, name) < 0:
            raise RnnkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if "time_budget" in given and not args.time_budget > 0:
        raise RnnkitError(f"--time-budget must be a positive duration (e.g. 90s, 3m, 1h), got {args.time_budget:g}")
    if not (args.save_minutes >= 0 and math.isfinite(args.save_minutes)):
        raise RnnkitError(f"--save-minutes must be >= 0, got {args.save_minutes}")
    if not (args.dist_timeout > 0 and math.isfinite(args.dist_timeout)):
        raise RnnkitError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    main_process = world.is_main
    if not main_process:
        args.quiet = True

    def join(config) -> distributed.World:
        """Check what every process checks alike, then join the others (torchrun; else nothing)."""
        distributed.check_batch(config.batch_size, world)
        return distributed.start(world, select_device(config.device), args.dist_timeout)

    out = Path(args.resume or args.out)
    if out.exists() and not out.is_dir():
        raise RnnkitError(f"{'--resume' if args.resume else '--out'} {out}: exists and is not a directory")
    if args.resume:
        allowed = {"resume", "epochs", "max_steps", "quiet", "save_every", "save_steps", "save_minutes",
                   "sample_every", "sample_prefixes", "sample_chars", "device", "cuda_graphs", "dist_timeout"}
        clash = sorted(given - allowed)
        if clash:
            raise RnnkitError(f"--resume continues a run with its saved settings; remove {', '.join(clash)} "
                              "(only --epochs, --max-steps and display and saving options may change)")
        if out.is_dir() and main_process:
            lock.acquire()  # before reading: no save in between
        model, vocab, config, meta = load_run(out)
        state = load_state(out, meta)
        if "epochs" in given:
            config.epochs = args.epochs
        if "max_steps" in given:
            config.max_steps = args.max_steps
        config.device, config.cuda_graphs = args.device, args.cuda_graphs
        config.validate()
        world = join(config)
        trainer = Trainer(config, vocab=vocab, world=world)
        if meta.get("corpus_sha1") and meta["corpus_sha1"] != trainer.corpus_sha1:
            raise RnnkitError(f"{config.corpus} is not the text this run was trained on (text sha1 now "
                              f"{trainer.corpus_sha1}, at training sha1 {meta['corpus_sha1']}); put the original "
                              "back or start a new run")
        trainer.load_state_dict(state)
        if trainer.finished and trainer.finished.endswith("steps done") and trainer.step < config.max_steps:
            trainer.finished = None  # a larger --max-steps continues it
        if trainer.finished:
            if main_process:
                print(f"{out}: already finished ({trainer.finished})")
            return 0
        if len(trainer.history) >= config.epochs and not (config.time_budget or config.max_steps):
            if main_process:
                print(f"{out}: already trained for {len(trainer.history)} epochs; pass a larger --epochs to continue")
            return 0
        position = state.get("position")
        where = (f"step {trainer.step} (epoch {position['epoch'] + 1}, after batch {position['batch']})"
                 if position else f"epoch {len(trainer.history) + 1}")
        if main_process:
            print(f"resuming {out} at {where} of {config.epochs} epochs"
                  f"{f' on {world.size} processes' if world.size > 1 else ''}", flush=True)
    else:
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
        if config.corpus not in CORPORA and Path(config.corpus).exists():
            config.corpus = str(Path(config.corpus).resolve())  # --resume works from any directory
        if config.data:  # a prepared directory: raw tokens, random windows (see rnnkit.prepare)
            config.data = str(Path(config.data).resolve())
            config.corpus = config.data
            for name, value in (("preprocess", "raw"), ("split", "sample")):
                if name not in given:
                    setattr(config, name, value)
            if config.time_budget and not (given & SIZING_OPTIONS):
                raise RnnkitError("--data with --time-budget: give the model's size (--model, --hidden, ...); "
                                  "automatic sizing reads the corpus text")
        if config.time_budget and not config.data:  # your own text and a few minutes: raw characters, the best
            # model for them
            if "preprocess" not in given:
                config.preprocess = "raw"
            if "split" not in given:  # the last 10% held out; the rest as running lanes, the state carried
                config.split = "sequential"
        config.validate()
        sizing = config.time_budget and not (given & SIZING_OPTIONS)
        if sizing and world.size > 1:
            raise RnnkitError("--time-budget under torchrun: give the model's size (--model, --hidden, ...); "
                              "automatic sizing measures one process's speed")
        created = not out.exists()
        if main_process:
            lock.acquire()  # also finds an --out that cannot be written, before training
        try:
            if (out / CONFIG_FILE).exists() and not args.force:
                raise RnnkitError(f"--out {out} already holds a run; --resume {out} continues it, "
                                  "--force overwrites it")
            text, given_budget = None, config.time_budget
            if sizing:
                text, config = sized_for_budget(config, args.quiet)
            world = join(config)
            trainer = Trainer(config, text=text, world=world)
            if config.time_budget:  # refused here, a new run directory is removed again
                trainer.check_budget(spent_s=given_budget - config.time_budget)
        except BaseException:
            lock.release()
            if created and main_process:  # leave no empty run directory behind a refused start
                (out / DirectoryLock.NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
    if trainer.device.type == "cpu":
        keep_freed_memory()
    if not args.quiet:
        if config.tokens == "word":
            share = trainer.unknown_tokens / max(1, len(trainer.corpus))
            print(f"words: {len(trainer.vocab) - 1:,} kept (seen at least {max(config.min_freq, 1)} times); "
                  f"{trainer.unknown_tokens:,} of {len(trainer.corpus):,} words ({share:.1%}) read as <unk>",
                  flush=True)
        print(f"corpus {config.corpus}: {len(trainer.corpus)} tokens, vocab {len(trainer.vocab)}, "
              f"{len(trainer.data.train)} batches/epoch; model {config.model} hidden {config.hidden} "
              f"({sum(p.numel() for p in trainer.model.parameters()):,} parameters) on {trainer.device}"
              f"{' (CUDA graphs)' if trainer.captured is not None else ''}"
              f"{f', {world.size} processes ({config.batch_size // world.size} rows each)' if world.size > 1 else ''}",
              flush=True)
    progress = Progress(trainer, args)
    curves = Curves(out, enabled=main_process)
    last_save = time.monotonic()

    def save(state: dict) -> None:
        """Rank 0 writes the checkpoint (the others have taken part in building ``state``)."""
        nonlocal last_save
        if main_process:
            save_run(out, trainer.model, trainer.vocab, config, state["epoch"], state, trainer.corpus_sha1)
        last_save = time.monotonic()

    def save_overdue() -> bool:
        return bool(args.save_minutes) and time.monotonic() - last_save >= 60 * args.save_minutes

    def on_epoch(stats) -> None:
        progress.on_epoch(stats)
        if (args.save_every and stats.epoch % args.save_every == 0) or save_overdue():
            save(trainer.snapshot)
        elif main_process:  # metrics.jsonl follows every epoch; the checkpoint every --save-every
            write_metrics(out, [asdict(h) for h in trainer.history], [asdict(e) for e in trainer.evals])
        curves.update(trainer.history)

    def on_signal(signum, frame):
        """Between or inside training steps: stop after the step in progress (at a step boundary the
        state is consistent and exact to resume); elsewhere (loading, a kernel build) at once."""
        if not trainer.accepts_stop:
            raise Stop(signum)
        if not trainer.stop_requested:
            trainer.stop_requested = signum
            if main_process:
                if progress.bar is not None:
                    progress.bar.clear()
                print(f"\n{signal.Signals(signum).name}: stopping after this step to save the run", file=sys.stderr,
                      flush=True)

    trainer.wants_save = lambda step: (args.save_steps and step % args.save_steps == 0) or save_overdue()
    trainer.on_save = save
    try:
        try:
            with signal_handlers((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), on_signal):
                history = trainer.fit(on_epoch, progress.on_batch, progress.on_eval)
        except (KeyboardInterrupt, TrainingDiverged) as exc:
            if progress.bar is not None:
                progress.bar.close()
            with signal_handlers((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), signal.SIG_IGN):  # final save
                save(trainer.snapshot)
                if world.started:  # every process waits for rank 0's save: torchrun ends the job at the first exit
                    distributed.barrier()
            if not main_process:
                return 128 + exc.signum if isinstance(exc, Stop) else 3 if isinstance(exc, TrainingDiverged) else 130
            try:
                curves.update(trainer.history, force=True)
            except Exception as plot_error:  # noqa: BLE001 - the plot may have been cut mid-draw; the run is saved
                print(f"rnnkit: note: curves.png not redrawn ({plot_error})", file=sys.stderr)
            snapshot = trainer.snapshot
            if isinstance(exc, TrainingDiverged):
                raise TrainingDiverged(f"{exc}; the run is saved as of epoch {snapshot['epoch']} in {out}") from None
            signum = exc.signum if isinstance(exc, Stop) else signal.SIGINT
            how = "interrupted" if signum == signal.SIGINT else f"signal {signal.Signals(signum).name}"
            where = (f"at step {snapshot['step']} (in epoch {snapshot['position']['epoch'] + 1})"
                     if snapshot.get("position") else f"after {snapshot['epoch']} completed epoch(s)")
            print(f"\n{how}: saved the run {where} in {out}; continue with: rnnkit train --resume {out}",
                  file=sys.stderr)
            return 128 + signum
        save(trainer.snapshot)
        if world.started:
            distributed.barrier()
    finally:
        lock.release()
    if not main_process:
        return 0
    curves.update(history, force=True)
    if history:
        last = history[-1]
        per = "bits/word" if config.tokens == "word" else "bpc"
        print(f"done: val ppl {last.val_ppl:.3f}, val {per} {last.val_bpc:.3f}, {last.seconds:.1f}s training; "
              f"saved in {out}")
        if trainer.finished:
            print(f"stopped early: {trainer.finished}")
        if trainer.best is not None:
            unit = {"char": "char", "word": "word", "bytes": "byte"}[config.tokens]
            print(f"best: val loss {trainer.best['val_loss']:.4f} nats/{unit} at step {trainer.best['step']} "
                  f"(epoch {trainer.best['epoch']:g}); generate and eval use it unless --checkpoint last")
    for prefix in progress.prefixes[-1:]:
        print("sample:", progress.sample(prefix, max(args.sample_chars, 100) if config.tokens == "char" else 30))
    return 0


class Curves:
    """Rewrites ``curves.png`` in the run directory as training goes (at most every few seconds)."""

    interval_s = 5.0

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir, self.last, self.enabled = run_dir, 0.0, enabled

    def update(self, history, force: bool = False) -> None:
        if not (self.enabled and history) or (not force and time.monotonic() - self.last < self.interval_s):
            return
        from rnnkit.checkpoint import atomic_write
        from rnnkit.plot import render_curves

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rows = [asdict(h) for h in history]
            atomic_write(self.run_dir / "curves.png", render_curves([(self.run_dir.name, rows)]))
        except RnnkitError as exc:  # matplotlib missing: say so once, keep training
            print(f"rnnkit: note: curves.png not drawn: {exc}", file=sys.stderr)
            self.enabled = False
        except OSError as exc:
            raise RnnkitError(f"cannot write {self.run_dir / 'curves.png'}: {exc.strerror or exc}") from None
        self.last = time.monotonic()


def load_chosen_checkpoint(run_dir: str, choice: str | None):
    """``load_run`` of the best checkpoint where the run kept one (unless ``choice`` says otherwise),
    and a note saying which one is used (printed once the command has succeeded so far, so that an
    error stays one line)."""
    from rnnkit.checkpoint import load_run, read_config

    meta = read_config(run_dir)
    best = meta.get("best")
    choice = choice or ("best" if best else "last")
    loaded = load_run(run_dir, checkpoint=choice)
    note = ""
    if choice == "best":
        note = (f"rnnkit: using the best checkpoint (step {best['step']}, val loss {best['val_loss']:.4f}); "
                "--checkpoint last for the final weights")
    elif best:
        note = f"rnnkit: using the last checkpoint (epoch {meta['epoch']})"
    return loaded, note


def cmd_generate(args: argparse.Namespace) -> int:
    from rnnkit.generate import Sampling, generate, join_tokens
    from rnnkit.text import preprocess

    (model, vocab, config, _), note = load_chosen_checkpoint(args.run_dir, args.checkpoint)
    prefix = preprocess(args.prefix, config.preprocess)  # the prefix is read as the training text was
    sampling = Sampling(args.greedy, args.temperature, args.top_k, args.top_p, args.alpha)
    stream = generate(model, vocab, prefix, args.num_chars, sampling, args.seed, config.tokens)
    first = next(stream, None)  # errors (unknown prefix, bad settings) surface before anything prints
    if note:
        print(note, file=sys.stderr)
    if prefix != args.prefix:
        print(f"rnnkit: note: prefix preprocessed as the training text was (--preprocess {config.preprocess}): "
              f"{args.prefix!r} -> {prefix!r}", file=sys.stderr)
    if config.tokens == "bytes":  # byte tokens: decoded as UTF-8 as they come
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sys.stdout.write(prefix + ("" if first is None else decoder.decode(first.encode("latin-1"))))
        for token in stream:
            sys.stdout.write(decoder.decode(token.encode("latin-1")))
            sys.stdout.flush()
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        return 0
    sys.stdout.write(join_tokens(prefix, [] if first is None else [first], config.tokens))
    for token in stream:  # words are written with the space before them
        sys.stdout.write(token if config.tokens == "char" else " " + token)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from rnnkit.text import load_corpus_text, preprocess, tokenize
    from rnnkit.train import bits_per_token, characters_predicted, perplexity, stream_nll

    (model, vocab, config, _), note = load_chosen_checkpoint(args.run_dir, args.checkpoint)
    corpus = args.corpus or config.corpus
    if config.data and args.corpus is None:  # a run trained from a prepared directory: its held-out tokens
        from rnnkit.prepare import open_prepared

        val = open_prepared(config.data).val
        if len(val) < 2:
            raise RnnkitError(f"{config.data}: no held-out tokens to evaluate; pass --corpus")
        nll, count = stream_nll(model, val)
        if note:
            print(note, file=sys.stderr)
        result = {"ppl": perplexity(nll, count), "bpc": bits_per_token(nll, count), "tokens": count,
                  "corpus": f"{config.data} (held-out part)"}
        print(json.dumps(result) if args.json else f"{result['corpus']}: perplexity {result['ppl']:.4f}  "
              f"bits/{'byte' if config.tokens == 'bytes' else 'char'} {result['bpc']:.4f}  tokens {count}")
        return 0
    strip = args.strip_gutenberg or (config.strip_gutenberg if args.corpus is None else False) or None
    text = load_corpus_text(corpus, args.encoding or config.encoding, strip)
    tokens = tokenize(preprocess(text, config.preprocess), config.tokens)
    unknown = vocab.unknown(tokens)
    skipped = 0
    if unknown and vocab.unk_token is None:
        known = [t for t in tokens if t in vocab.token_to_idx]
        skipped = len(tokens) - len(known)
        tokens = known
    if len(tokens) < 2:
        raise RnnkitError(f"{corpus}: fewer than 2 tokens the model knows; nothing to evaluate")
    ids = torch.tensor(vocab[tokens], dtype=torch.int64)
    nll, count = stream_nll(model, ids)
    if note:
        print(note, file=sys.stderr)
    words = config.tokens == "word"
    chars = characters_predicted(tokens, config.tokens)
    result = {"ppl": perplexity(nll, count), "bpc": bits_per_token(nll, chars), "tokens": count,
              "corpus": str(corpus), "skipped": skipped}
    if words:
        unknown_set = set(unknown)
        result.update({"bits_per_word": bits_per_token(nll, count), "chars": chars,
                       "unknown_words": sum(t in unknown_set for t in tokens[1:]), "unknown_word_types": len(unknown)})
    else:
        result["unknown_chars"] = "".join(unknown)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif words:
        print(f"{corpus}: perplexity {result['ppl']:.4f} per word  bits/word {result['bits_per_word']:.4f}  "
              f"bits/char {result['bpc']:.4f} (of the {chars} characters those words span)  words {count}  "
              f"({result['unknown_words']} of them, {len(unknown)} word types, read as {vocab.unk_token}: "
              "their spelling is not scored)")
    else:
        note = ""
        if unknown:
            how = f"{skipped} skipped" if skipped else f"read as {vocab.unk_token}"
            note = f"  ({len(unknown)} character types not in the vocabulary, {how})"
        print(f"{corpus}: perplexity {result['ppl']:.4f}  bits/char {result['bpc']:.4f}  "
              f"tokens {count}{note}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rnnkit.plot import plot_runs

    print(plot_runs(args.run_dirs, args.out))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rnnkit.serve import Limits, serve

    limits = Limits(args.max_chars, args.max_text, args.max_streams, args.max_body)
    for name, value in vars(limits).items():
        if value < 1:
            raise RnnkitError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0 <= args.port <= 65535:
        raise RnnkitError(f"--port must be between 0 and 65535, got {args.port}")
    if not 1 <= args.threads <= 1024:
        raise RnnkitError(f"--threads must be between 1 and 1024, got {args.threads}")
    serve(args.run_dirs, args.host, args.port, args.checkpoint, limits, args.threads)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from rnnkit.prepare import prepare

    started = time.perf_counter()
    manifest = prepare(args.corpus, args.out, args.tokens, args.encoding, args.val_fraction)
    files = manifest["files"]
    print(f"{args.out}: {files['train']['tokens']:,} training and {files['val']['tokens']:,} validation tokens "
          f"({manifest['tokens']}, vocabulary {manifest['vocab_size']}, {manifest['dtype']}) from "
          f"{manifest['source_bytes']:,} bytes in {time.perf_counter() - started:.1f} s; "
          f"train with: rnnkit train --data {args.out}")
    return 0


def cmd_timeseries(args: argparse.Namespace) -> int:
    """``rnnkit timeseries``: train (or resume) every model, save, score every horizon, plot."""
    from rnnkit.files import DirectoryLock, atomic_write
    from rnnkit.timeseries import (
        SeriesConfig,
        SeriesTrainer,
        load_series,
        load_series_run,
        render_mse,
        render_predictions,
        save_series_run,
    )

    run_dir = Path(args.resume or args.out)
    if args.resume and not (run_dir / "config.json").is_file():
        raise RnnkitError(f"{run_dir}: not a timeseries run (no config.json)")
    with DirectoryLock(run_dir):
        if args.resume:
            trainer, _ = load_series_run(run_dir)
            if args.epochs is not None:
                if args.epochs < trainer.config.epochs:
                    raise RnnkitError(f"--epochs {args.epochs} is below the run's {trainer.config.epochs}")
                trainer.config.epochs = args.epochs
        else:
            if (run_dir / "config.json").exists() and not args.force:
                raise RnnkitError(f"{run_dir} already holds a run (--resume {run_dir} to continue, "
                                  "--force to overwrite)")
            if args.csv is None and args.column:
                raise RnnkitError("--column needs --csv")
            epochs = SeriesConfig.epochs if args.epochs is None else args.epochs
            config = SeriesConfig(csv=args.csv, column=args.column, time_column=args.time_column,
                                  missing=args.missing, seed=args.seed, tau=args.tau, train=args.train,
                                  models=tuple(args.models), hidden=args.hidden, layers=args.layers,
                                  epochs=epochs, lr=args.lr, clip=args.clip, ks=tuple(args.ks))
            config.validate()
            series = load_series(config)
            trainer = SeriesTrainer(config, series)
        say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
        series = trainer.series
        say(f"series: {series.source}, {len(series.values)} values ({trainer.num_train} for training, "
            f"{len(series.values) - trainer.num_train} held out)" + "".join(f"; {n}" for n in series.notes))
        trainer.on_save = lambda: save_series_run(run_dir, trainer)
        try:
            with signal_handlers((signal.SIGTERM, signal.SIGHUP), raise_stop):
                trainer.fit()
        except KeyboardInterrupt as stop:
            save_series_run(run_dir, trainer)
            signum = getattr(stop, "signum", signal.SIGINT)
            print(f"\ninterrupted ({signal.Signals(signum).name}); saved: rnnkit timeseries --resume {run_dir}",
                  file=sys.stderr)
            return 128 + signum
        save_series_run(run_dir, trainer)
        predictions = trainer.predictions()
        results = trainer.evaluate(predictions)
        atomic_write(run_dir / "results.json", (json.dumps({"mse": results}, indent=1) + "\n").encode())
        try:
            atomic_write(run_dir / "predictions.png", render_predictions(trainer, predictions))
            atomic_write(run_dir / "mse.png", render_mse(results))
            plots = "predictions.png, mse.png"
        except RnnkitError as exc:  # no matplotlib: the numbers still stand
            plots = f"no plots ({exc})"
        ks = list(trainer.config.ks)
        say("held-out MSE  " + "".join(f"{f'k={k}':>11s}" for k in ks))
        for name, by_k in results.items():
            say(f"{name:12s}  " + "".join(f" {by_k[str(k)]:10.4g}" for k in ks))
        say(f"saved in {run_dir}: config.json, results.json, metrics.jsonl, {plots}")
        if args.json:
            print(json.dumps({"mse": results}))
    return 0


def cmd_corpora(args: argparse.Namespace) -> int:
    from rnnkit.text import CORPORA, cache_dir, local_copies, recorded_pins

    pins = recorded_pins()
    print(f"cache: {cache_dir()}")
    for entry in CORPORA.values():
        local = [p for p in local_copies(entry) if p.is_file()]
        size = f"{local[0].stat().st_size:,} bytes" if local else "not cached"
        if entry.sha1:
            sha = f"sha1 {entry.sha1} (pinned)"
        elif entry.name in pins:
            sha = f"sha1 {pins[entry.name]} (not pinned; recorded at first use)"
        else:
            sha = "sha1 not pinned (recorded at first download)"
        where = f" at {local[0]}" if local else ""
        print(f"{entry.name:20s} {size:>18s}  {sha}\n{'':20s} {entry.description}{where}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rnnkit: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        parser = build_parser()  # imports torch: inside the try, so that Ctrl-C here is handled too
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv)
        if args.command == "train":
            return cmd_train(args, given_train_options(parser, argv))
        commands = {"generate": cmd_generate, "eval": cmd_eval, "plot": cmd_plot, "corpora": cmd_corpora,
                    "serve": cmd_serve, "timeseries": cmd_timeseries,
                    "prepare": cmd_prepare}
        return commands[args.command](args)
    except RnnkitError as exc:
        if not getattr(exc, "silent", False):
            print(f"rnnkit: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:  # Ctrl-C, or a Stop raised by SIGTERM/SIGHUP (raise_stop)
        signum = getattr(exc, "signum", signal.SIGINT)
        print("\ninterrupted" if signum == signal.SIGINT else f"\nstopped by {signal.Signals(signum).name}",
              file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # e.g. `rnnkit generate ... | head`
        return 0


def console() -> None:
    """The ``rnnkit`` command's entry point: :func:`main`'s status becomes the exit status.

    After Ctrl-C, CPython may still end the process *by* SIGINT (status -2) even though the
    interrupt was handled and the run saved; leave through ``os._exit`` then, so that the status
    is the documented 128 + signal number. A process of a torchrun job leaves the same way, its
    run saved and its output flushed: tearing its process group down at exit sometimes aborted it
    (``terminate called without an active exception`` from a gloo thread: 2 runs in 30 on a busy
    2-core machine), and torchrun then reported the finished job as failed."""
    status = main()
    from rnnkit import distributed

    if status >= 128 or distributed.joined():  # ended by a signal it handled; one of torchrun's processes
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    console()
