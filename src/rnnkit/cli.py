"""The ``rnnkit`` command: ``train``, ``generate``, ``eval``, ``plot``, ``serve``, ``prepare``,
``timeseries``, ``corpora``. It parses and prints; what a command does is the library's
(:class:`rnnkit.Run`, :mod:`rnnkit.run.lifecycle`, :mod:`rnnkit.evaluate`, ...).

Bad input (files, corpora, settings, prefixes, run directories) ends with a one-line
``rnnkit: error: ...`` on stderr and exit status 2; a training run that diverges (NaN or infinite
loss) keeps its last good epoch and exits 3. Ctrl-C, SIGTERM or SIGHUP during training lets the
step in progress finish, saves the run there (mid-epoch), says how to resume, and exits 130, 143
or 129 (128 + signal). ``train`` also runs as one of torchrun's processes (:mod:`rnnkit.distributed`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from rnnkit.errors import RnnkitError


def duration(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``3m``, ``1h30m`` (argparse type of :func:`rnnkit.config.duration`)."""
    from rnnkit.config import duration as seconds_of

    try:
        return seconds_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def dynamic_rate(text: str) -> float:
    """``eval --dynamic``'s optional rate (argparse type); a word that is not a number is most likely
    the run directory, given after ``--dynamic``, so the message says where the option goes."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate: --dynamic takes an optional LR, so give it after the run directory "
            "(rnnkit eval RUN_DIR --dynamic)"
        ) from None


def add_options(parser: argparse.ArgumentParser) -> None:
    """``train``'s options, derived from :class:`~rnnkit.config.TrainConfig` and
    :class:`~rnnkit.config.RunOptions`: one flag per field, in its group, with its help and choices."""
    from rnnkit.config import GROUPS, flag_name, option_fields

    groups = {name: parser.add_argument_group(f"{name} options") for name in GROUPS}
    for f in option_fields():
        meta = f.metadata
        flag = flag_name(f)
        group = groups[meta["group"]]
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
        elif f.type == "list":
            group.add_argument(flag, dest=f.name, action="append", metavar=meta["metavar"], help=meta["help"])
        else:
            parse = duration if meta["parse"] is not None else {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(
                flag,
                dest=f.name,
                type=parse,
                default=f.default,
                choices=meta["choices"],
                metavar=meta["metavar"],
                help=meta["help"],
            )
    groups["checkpoints"].add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run where it stopped "
        "(--epochs may raise its epoch count; other settings come from the run)",
    )


SILENT_EXIT_GRACE_S = 2.0  # how long a process whose error rank 0 reports waits before it exits
CHECKPOINT_HELP = "the weights of the lowest validation loss, or the last ones (default: best where kept)"


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__

    parser = argparse.ArgumentParser(prog="rnnkit", description="Character-level RNN language models.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="train a model (or --resume one)", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.train_parser = t  # see given_train_options
    add_options(t)
    add_generate_parser(sub)
    add_eval_parser(sub)
    p = sub.add_parser("plot", help="overlay the training curves of runs into one PNG")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves-compare.png")
    sub.add_parser("corpora", help="list the built-in corpora")
    pr = sub.add_parser("prepare", help="write a corpus as token files for training through memory maps (--data)")
    pr.add_argument("corpus", help="a text file (or any file, with --tokens bytes)")
    pr.add_argument("--out", required=True, metavar="DATA_DIR")
    pr.add_argument(
        "--tokens",
        choices=["char", "bytes"],
        default="char",
        help="characters of the decoded text, or the file's bytes (any file, 256 tokens)",
    )
    pr.add_argument("--encoding", default="utf-8")
    pr.add_argument("--val-fraction", type=float, default=0.1, help="the held-out tail")
    add_timeseries_parser(sub)
    add_serve_parser(sub)
    add_compress_parsers(sub)
    return parser


def add_compress_parsers(sub) -> None:
    for name in ("compress", "decompress"):
        c = sub.add_parser(name, help=f"{name} files losslessly with a language model (gzip's conventions)")
        c.add_argument("files", nargs="+", metavar="FILE", help="files ('-': standard input, to standard output)")
        c.add_argument("-o", "--output", metavar="OUT", help="the output file (one input only; '-': standard output)")
        c.add_argument("-c", "--stdout", action="store_true", help="write to standard output, keep the inputs")
        c.add_argument("-k", "--keep", action="store_true", help="keep the inputs (default: removed after success)")
        c.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
        c.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
        c.add_argument(
            "--model",
            metavar="RUN_DIR",
            help="code with this trained run's network instead of the adaptive model (files compressed "
            "with it decompress with it only)",
        )


def add_generate_parser(sub) -> None:
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
    g.add_argument("--checkpoint", choices=["best", "last"], default=None, help=CHECKPOINT_HELP)


def add_eval_parser(sub) -> None:
    from rnnkit.evaluate import DYNAMIC_LR

    e = sub.add_parser("eval", help="perplexity and bits per character of a run on a corpus")
    e.add_argument("run_dir")
    e.add_argument("--corpus", default=None, help="built-in name or path (default: the run's own corpus)")
    e.add_argument("--encoding", default=None)
    e.add_argument("--strip-gutenberg", action="store_true", help="drop a Project Gutenberg header and footer")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--checkpoint", choices=["best", "last"], default=None, help=CHECKPOINT_HELP)
    e.add_argument(
        "--dynamic",
        nargs="?",
        const=DYNAMIC_LR,
        type=dynamic_rate,
        metavar="LR",
        help=f"also score with dynamic evaluation (the model keeps learning as it reads; rate LR in (0, 1], default "
        f"{DYNAMIC_LR:g}), reported on its own line",
    )


def add_timeseries_parser(sub) -> None:
    from rnnkit.timeseries import MISSING, SERIES_MODELS, SeriesConfig

    ts = SeriesConfig()
    x = sub.add_parser(
        "timeseries",
        help="autoregressive models of a real-valued series (§9.1; §9.6's exercise)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = x.add_mutually_exclusive_group()
    source.add_argument(
        "--synthetic",
        choices=["d2l"],
        default="d2l",
        help="the book's series: sin(0.01 t) + N(0, 0.2^2), t = 1..1000 (noise from --seed)",
    )
    source.add_argument("--csv", metavar="FILE", help="read a column of a CSV file instead")
    x.add_argument("--column", help="the CSV column to model")
    x.add_argument("--time-column", help="a CSV column to put the rows in time order by")
    x.add_argument(
        "--missing",
        choices=MISSING,
        default=ts.missing,
        help="empty or NA cells: interpolate inside the series (dropped at the ends), drop rows, or refuse",
    )
    x.add_argument("--models", nargs="+", choices=SERIES_MODELS, default=list(ts.models))
    x.add_argument("--tau", type=int, default=ts.tau, help="values the linear AR model regresses on")
    x.add_argument(
        "--train", type=float, default=ts.train, help="fraction of the series to train on (the rest is held out)"
    )
    x.add_argument("--hidden", type=int, default=ts.hidden)
    x.add_argument("--layers", type=int, default=ts.layers)
    x.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"full passes over the training part per recurrent model (default {ts.epochs}; with --resume, "
        "a higher count continues training)",
    )
    x.add_argument("--lr", type=float, default=ts.lr, help="Adam's learning rate")
    x.add_argument("--clip", type=float, default=ts.clip, help="max gradient norm (0: off)")
    x.add_argument("--ks", type=int, nargs="+", default=list(ts.ks), help="horizons to score")
    x.add_argument("--seed", type=int, default=ts.seed)
    x.add_argument("--out", default="runs/timeseries", help="run directory to write")
    x.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    x.add_argument("--resume", metavar="RUN_DIR", help="continue this run (--epochs may raise the count)")
    x.add_argument("--json", action="store_true", help='print {"mse": {MODEL: {K: ...}}} as the last line')
    x.add_argument("--quiet", action="store_true")


def add_serve_parser(sub) -> None:
    from rnnkit.serve import Limits

    limits = Limits()
    s = sub.add_parser(
        "serve",
        help="serve runs over HTTP: an API and a playground page (the serve extra)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="port (0: any free one; the address is printed)")
    s.add_argument("--checkpoint", choices=["best", "last"], default=None, help=CHECKPOINT_HELP)
    s.add_argument("--max-chars", type=int, default=limits.max_chars, help="characters per generation stream")
    s.add_argument(
        "--max-text",
        type=int,
        default=limits.max_text,
        help="characters of a prompt, or of a text to score or read hidden units of",
    )
    s.add_argument("--max-streams", type=int, default=limits.max_streams, help="generation streams at once")
    s.add_argument("--max-body", type=int, default=limits.max_body, help="bytes of a request body")
    s.add_argument(
        "--threads", type=int, default=1, help="PyTorch threads per operation (requests already run side by side)"
    )


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


def cmd_train(args: argparse.Namespace, given: set[str]) -> int:
    """``rnnkit train``: :func:`rnnkit.run.lifecycle.train_run` with the parsed options, in one
    process or as one of torchrun's."""
    from rnnkit.config import option_fields
    from rnnkit.run.lifecycle import RunStopped, train_run
    from rnnkit.training.device import keep_freed_memory

    keep_freed_memory()  # process-wide: the command's to decide, not the library's
    values = {f.name: getattr(args, f.name) for f in option_fields()}
    values["sample_prefixes"] = values["sample_prefixes"] or []
    try:
        train_run(values, given, resume=args.resume)
    except RunStopped as stop:
        if stop.message:
            print(stop.message, file=sys.stderr)
        return 128 + stop.signum
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rnnkit.generate import Sampling
    from rnnkit.run import Run

    sampling = Sampling(args.greedy, args.temperature, args.top_k, args.top_p, args.alpha)
    generation = Run.load(args.run_dir).generation(args.prefix, args.num_chars, sampling, args.seed, args.checkpoint)
    pieces = iter(generation)
    head = next(pieces)  # errors (unknown prefix, bad settings) surface before anything prints
    for note in generation.notes:
        print(note, file=sys.stderr)
    sys.stdout.write(head)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rnnkit.run import Run

    evaluation = Run.load(args.run_dir).evaluate(
        args.corpus,
        encoding=args.encoding,
        strip_gutenberg=args.strip_gutenberg,
        checkpoint=args.checkpoint,
        dynamic_lr=args.dynamic,
    )
    if evaluation.note:
        print(evaluation.note, file=sys.stderr)
    print(json.dumps(evaluation.to_dict(), ensure_ascii=False) if args.json else evaluation.describe())
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
    print(
        f"{args.out}: {files['train']['tokens']:,} training and {files['val']['tokens']:,} validation tokens "
        f"({manifest['tokens']}, vocabulary {manifest['vocab_size']}, {manifest['dtype']}) from "
        f"{manifest['source_bytes']:,} bytes in {time.perf_counter() - started:.1f} s; "
        f"train with: rnnkit train --data {args.out}"
    )
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """``rnnkit compress`` / ``rnnkit decompress``: each file in turn; a summary line per file on stderr."""
    from rnnkit.compress import compress_file

    if args.output is not None and len(args.files) > 1:
        raise RnnkitError("-o names one output: give one input file")
    decompress = args.command == "decompress"
    for path in args.files:
        output = "-" if args.stdout else args.output
        totals = compress_file(
            path,
            decompress=decompress,
            output=output,
            keep=args.keep,
            force=args.force,
            progress=not args.quiet,
            model=args.model,
        )
        if not args.quiet and not decompress and totals.original:
            print(
                f"{path}: {totals.original:,} -> {totals.compressed:,} bytes, "
                f"{8 * totals.compressed / totals.original:.3f} bits per byte",
                file=sys.stderr,
            )
    return 0


def cmd_timeseries(args: argparse.Namespace) -> int:
    """``rnnkit timeseries``: train (or resume) every model, save, score every horizon, plot."""
    from rnnkit.files import DirectoryLock
    from rnnkit.run.lifecycle import raise_stop, signal_handlers
    from rnnkit.timeseries import SeriesConfig, open_series_run, save_series_run, write_series_results

    run_dir = Path(args.resume or args.out)
    if args.resume and not (run_dir / "config.json").is_file():  # before the lock creates the directory
        raise RnnkitError(f"{run_dir}: not a timeseries run (no config.json)")
    config = None
    if not args.resume:
        if args.csv is None and args.column:
            raise RnnkitError("--column needs --csv")
        config = SeriesConfig(
            csv=args.csv,
            column=args.column,
            time_column=args.time_column,
            missing=args.missing,
            seed=args.seed,
            tau=args.tau,
            train=args.train,
            models=tuple(args.models),
            hidden=args.hidden,
            layers=args.layers,
            epochs=SeriesConfig.epochs if args.epochs is None else args.epochs,
            lr=args.lr,
            clip=args.clip,
            ks=tuple(args.ks),
        )
    with DirectoryLock(run_dir):
        trainer = open_series_run(run_dir, config, args.epochs, args.force)
        say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
        series = trainer.series
        say(
            f"series: {series.source}, {len(series.values)} values ({trainer.num_train} for training, "
            f"{len(series.values) - trainer.num_train} held out)" + "".join(f"; {n}" for n in series.notes)
        )
        trainer.on_save = lambda: save_series_run(run_dir, trainer)
        try:
            with signal_handlers((signal.SIGTERM, signal.SIGHUP), raise_stop):
                trainer.fit()
        except KeyboardInterrupt as stop:
            save_series_run(run_dir, trainer)
            signum = getattr(stop, "signum", signal.SIGINT)
            print(
                f"\ninterrupted ({signal.Signals(signum).name}); saved: rnnkit timeseries --resume {run_dir}",
                file=sys.stderr,
            )
            return 128 + signum
        save_series_run(run_dir, trainer)
        results, plots = write_series_results(run_dir, trainer)
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
        commands = {
            "generate": cmd_generate,
            "eval": cmd_eval,
            "plot": cmd_plot,
            "corpora": cmd_corpora,
            "serve": cmd_serve,
            "timeseries": cmd_timeseries,
            "prepare": cmd_prepare,
            "compress": cmd_compress,
            "decompress": cmd_compress,
        }
        return commands[args.command](args)
    except RnnkitError as exc:
        if getattr(exc, "silent", False):  # another process of a torchrun job (rank 0) says it; torchrun
            time.sleep(SILENT_EXIT_GRACE_S)  # ends every process at the first exit: give rank 0 time to say it
        else:
            print(f"rnnkit: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:  # Ctrl-C, or a Stop raised by SIGTERM/SIGHUP (raise_stop)
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            "\ninterrupted" if signum == signal.SIGINT else f"\nstopped by {signal.Signals(signum).name}",
            file=sys.stderr,
        )
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
