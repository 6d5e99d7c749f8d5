"""A training run's life in its directory: started or resumed, trained, saved, however it ends.

:func:`train_run` is what ``rnnkit train`` and :func:`rnnkit.train` both do, from the same options:

- **a new run**: the options' defaults for a time budget or a prepared directory
  (:func:`new_config`), automatic sizing where the model was not given, the run directory's lock,
  and, when the start is refused, no directory left behind;
- **a resumed run**: only the resumable options may change (:data:`rnnkit.config.RESUMABLE`); the
  text must be the one it trained on; it continues at the exact batch where it stopped;
- **training**: saved as :class:`~rnnkit.run.saving.Checkpoints` says; Ctrl-C, SIGTERM or SIGHUP
  stop it after the step in progress and save it there (:class:`RunStopped`); a diverged run keeps
  its last good epoch (:class:`~rnnkit.errors.TrainingDiverged`); under torchrun every process
  takes part and rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from rnnkit import distributed
from rnnkit.checkpoint import CONFIG_FILE, load_run, load_state
from rnnkit.config import RESUMABLE, SIZING, RunOptions, TrainConfig, split_options
from rnnkit.errors import RnnkitError, Stop, TrainingDiverged
from rnnkit.files import DirectoryLock
from rnnkit.run.console import Console
from rnnkit.run.saving import Checkpoints, Curves
from rnnkit.text import CORPORA
from rnnkit.training import Trainer
from rnnkit.training.device import select_device

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunStopped(Stop):
    """A signal stopped training and the run was saved where it stopped: ``message`` says where and
    how to continue (None on the other processes of a distributed run)."""

    def __init__(self, signum: int, message: str | None) -> None:
        super().__init__(signum)
        self.message = message


@contextlib.contextmanager
def signal_handlers(signals: tuple, handler) -> Iterator[None]:
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


def train_run(
    values: Mapping[str, Any],
    given: set[str],
    resume: str | Path | None = None,
    speeds: Mapping[int, float] | None = None,
) -> Trainer | None:
    """Train a new run (``resume`` None) or continue one, with the options ``values`` (names of
    :class:`TrainConfig` and :class:`RunOptions`; missing ones take their defaults), of which
    ``given`` were given by the user (they decide the defaults and whether to size the model).
    ``speeds``: the sizing's tokens/s by width, instead of measuring them (:func:`rnnkit.sizing.choose_config`).
    Returns the trainer (None where a resumed run had nothing left to do). The run directory's lock
    (rank 0's), once taken, and the process group, once joined, are let go however this returns."""
    config_values, run_values = split_options(dict(values))
    options = RunOptions(**run_values)
    try:
        world = distributed.world_from_environment()
    except RnnkitError as exc:
        exc.silent = os.environ.get("RANK", "0").strip() not in ("", "0")  # rank 0 says it, once
        raise
    lock = DirectoryLock(Path(resume or options.out))
    try:
        # SIGTERM/SIGHUP before training starts (reading the corpus, sizing, a kernel build) stop at
        # once like Ctrl-C: a run directory this start created is removed; training sets its own
        with signal_handlers((signal.SIGTERM, signal.SIGHUP), raise_stop):
            return _train_locked(config_values, options, given, resume, lock, world, speeds)
    except RnnkitError as exc:
        if world.rank and not distributed.joined():
            exc.silent = True  # the same check failed on every process: rank 0 says it, once
        elif world.rank:
            exc.args = (f"(rank {world.rank}) {exc}",)
        raise
    finally:
        lock.release()  # a joined process group is left by the process's exit (rnnkit.cli.console)


def _train_locked(
    config_values: dict,
    options: RunOptions,
    given: set[str],
    resume,
    lock: DirectoryLock,
    world: distributed.World,
    speeds,
) -> Trainer | None:
    options.validate()
    budget = config_values.get("time_budget", 0.0)
    if "time_budget" in given and not (isinstance(budget, (int, float)) and budget > 0):
        shown = f"{budget:g}" if isinstance(budget, (int, float)) else repr(budget)
        raise RnnkitError(f"--time-budget must be a positive duration (e.g. 90s, 3m, 1h), got {shown}")
    console = Console(options, world.is_main)
    out = Path(resume or options.out)
    if out.exists() and not out.is_dir():
        raise RnnkitError(f"{'--resume' if resume else '--out'} {out}: exists and is not a directory")

    def join(config: TrainConfig) -> distributed.World:
        """Check what every process checks alike, then join the others (torchrun; else nothing)."""
        distributed.check_batch(config.batch_size, world)
        return distributed.start(world, select_device(config.device), options.dist_timeout)

    if resume:
        trainer = resume_trainer(out, config_values, given, lock, join, console)
        if trainer is None:
            return None
    else:
        trainer = new_trainer(out, config_values, options, given, lock, join, console, speeds, world.size)
    console.started(trainer)
    return fit_and_save(trainer, out, options, lock, console)


def new_config(values: Mapping[str, Any], given: set[str]) -> TrainConfig:
    """A new run's config from the options: paths made absolute (a resume works from any
    directory), and the defaults that follow from what was given: a prepared directory is read raw
    as random windows; your own text with a time budget as raw characters in running lanes."""
    config = TrainConfig(**values)
    if config.corpus not in CORPORA and Path(config.corpus).exists():
        config.corpus = str(Path(config.corpus).resolve())
    if config.data:  # a prepared directory: raw tokens, random windows (see rnnkit.prepare)
        config.data = str(Path(config.data).resolve())
        config.corpus = config.data
        for name, value in (("preprocess", "raw"), ("split", "sample")):
            if name not in given:
                setattr(config, name, value)
        if config.time_budget and not (given & SIZING):
            raise RnnkitError(
                "--data with --time-budget: give the model's size (--model, --hidden, ...); "
                "automatic sizing reads the corpus text"
            )
    if config.time_budget and not config.data:  # your own text and a few minutes: raw characters, the best
        if "preprocess" not in given:  # model for them, the last 10% held out, the rest as running lanes
            config.preprocess = "raw"
        if "split" not in given:
            config.split = "sequential"
    config.validate()
    return config


def sized_for_budget(
    config: TrainConfig, console: Console, speeds: Mapping[int, float] | None
) -> tuple[str, TrainConfig]:
    """(text, config) with the model and batch shape chosen for the corpus and the time budget
    (:mod:`rnnkit.sizing`); the seconds spent measuring come out of the budget."""
    from rnnkit.sizing import choose_config
    from rnnkit.text import build_corpus, load_corpus_text

    text = load_corpus_text(config.corpus, config.encoding, config.strip_gutenberg or None)
    ids, vocab = build_corpus(text, config.preprocess)
    train_tokens = int(len(ids) * (1 - config.val_fraction))
    sized, report = choose_config(config, train_tokens, len(vocab), config.time_budget, speeds=speeds)
    sized = replace(sized, time_budget=max(config.time_budget - report["measuring_s"], 1e-3))
    console.sized(sized, config.time_budget, train_tokens, report)
    return text, sized


def new_trainer(
    out: Path,
    values: dict,
    options: RunOptions,
    given: set[str],
    lock: DirectoryLock,
    join: Callable,
    console: Console,
    speeds,
    processes: int = 1,
) -> Trainer:
    """The trainer of a new run in ``out``, which this takes the lock of; a refused start leaves no
    run directory it created behind."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    config = new_config({**defaults, **values}, given)
    sizing = config.time_budget and not (given & SIZING)
    if sizing and processes > 1:
        raise RnnkitError(
            "--time-budget under torchrun: give the model's size (--model, --hidden, ...); "
            "automatic sizing measures one process's speed"
        )
    created = not out.exists()
    if console.main:
        lock.acquire()  # also finds an --out that cannot be written, before training
    try:
        if (out / CONFIG_FILE).exists() and not options.force:
            raise RnnkitError(f"--out {out} already holds a run; --resume {out} continues it, --force overwrites it")
        text, given_budget = None, config.time_budget
        if sizing:
            text, config = sized_for_budget(config, console, speeds)
        trainer = Trainer(config, text=text, world=join(config))
        if config.time_budget:  # refused here, a new run directory is removed again
            trainer.check_budget(spent_s=given_budget - config.time_budget)
        return trainer
    except BaseException:
        lock.release()
        if created and console.main:  # leave no empty run directory behind a refused start
            (out / DirectoryLock.NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def resume_trainer(
    out: Path, values: dict, given: set[str], lock: DirectoryLock, join: Callable, console: Console
) -> Trainer | None:
    """The trainer of the run in ``out``, restored where it stopped, with the resumable options
    given; None (and a line saying why) where it has nothing left to do."""
    clash = sorted(given - RESUMABLE - {"resume"})
    if clash:
        raise RnnkitError(
            f"--resume continues a run with its saved settings; remove {', '.join(clash)} "
            "(only --epochs, --max-steps and display and saving options may change)"
        )
    if out.is_dir() and console.main:
        lock.acquire()  # before reading: no save in between
    _, vocab, config, meta = load_run(out)
    state = load_state(out, meta)
    defaults = TrainConfig()
    for name in ("epochs", "max_steps"):
        if name in given:
            setattr(config, name, values[name])
    config.device = values.get("device", defaults.device)
    config.cuda_graphs = values.get("cuda_graphs", defaults.cuda_graphs)
    config.validate()
    trainer = Trainer(config, vocab=vocab, world=join(config))
    if meta.get("corpus_sha1") and meta["corpus_sha1"] != trainer.corpus_sha1:
        raise RnnkitError(
            f"{config.corpus} is not the text this run was trained on (text sha1 now "
            f"{trainer.corpus_sha1}, at training sha1 {meta['corpus_sha1']}); put the original "
            "back or start a new run"
        )
    trainer.load_state_dict(state)
    if trainer.finished and trainer.finished.endswith("steps done") and trainer.step < config.max_steps:
        trainer.finished = None  # a larger --max-steps continues it
    if trainer.finished:
        console.say(f"{out}: already finished ({trainer.finished})")
        return None
    if config.max_steps and trainer.step >= config.max_steps:
        console.say(f"{out}: already at step {trainer.step}; pass a --max-steps above it to continue")
        return None
    if len(trainer.history) >= config.epochs and not (config.time_budget or config.max_steps):
        console.say(f"{out}: already trained for {len(trainer.history)} epochs; pass a larger --epochs to continue")
        return None
    position = state.get("position")
    where = (
        f"step {trainer.step} (epoch {position['epoch'] + 1}, after batch {position['batch']})"
        if position
        else f"epoch {len(trainer.history) + 1}"
    )
    processes = f" on {trainer.world.size} processes" if trainer.world.size > 1 else ""
    console.say(f"resuming {out} at {where} of {config.epochs} epochs{processes}")
    return trainer


def fit_and_save(trainer: Trainer, out: Path, options: RunOptions, lock: DirectoryLock, console: Console) -> Trainer:
    """Train with the run's callbacks, save at the end, and say how it went; a stop or a
    divergence saves the run where it is and raises (:class:`RunStopped`, :class:`TrainingDiverged`)."""
    main = trainer.world.is_main
    checkpoints, curves = Checkpoints(out, options, main), Curves(out, enabled=main)
    callbacks = [console, checkpoints, curves]
    if options.tensorboard and main:
        from rnnkit.run.tensorboard import TensorBoardLogger

        callbacks.append(TensorBoardLogger(options.tensorboard))
    for callback in callbacks:
        trainer.add_callback(callback)

    def on_signal(signum, frame):
        """Between or inside training steps: stop after the step in progress (at a step boundary the
        state is consistent and exact to resume); elsewhere (loading, a kernel build) at once."""
        first = not trainer.stop_requested
        if not trainer.request_stop(signum):
            raise Stop(signum)
        if first:
            console.stopping(signum)

    try:
        try:
            with signal_handlers(STOP_SIGNALS, on_signal):
                trainer.fit()
        except (KeyboardInterrupt, TrainingDiverged) as exc:
            save_where_stopped(trainer, checkpoints, curves, console, out, exc)
        checkpoints.save(trainer, trainer.snapshot)
        if trainer.world.started:
            distributed.barrier()
    finally:
        lock.release()
        for callback in callbacks:
            if hasattr(callback, "close"):
                callback.close()
    if main:
        curves.update(trainer.history, force=True)
        console.finished(trainer, out)
    return trainer


def save_where_stopped(
    trainer: Trainer, checkpoints: Checkpoints, curves: Curves, console: Console, out: Path, exc: BaseException
) -> None:
    """After a stop or a divergence: save the snapshot (signals ignored meanwhile), then raise
    :class:`RunStopped` or :class:`TrainingDiverged` saying where the run is saved."""
    console.close_bar()
    with signal_handlers(STOP_SIGNALS, signal.SIG_IGN):  # the final save
        checkpoints.save(trainer, trainer.snapshot)
        if trainer.world.started:  # every process waits for rank 0's save: torchrun ends the job at the first exit
            distributed.barrier()
    signum = exc.signum if isinstance(exc, Stop) else signal.SIGINT
    if not trainer.world.is_main:
        if isinstance(exc, TrainingDiverged):
            exc.silent = True
            raise exc
        raise RunStopped(signum, None) from None
    try:
        curves.update(trainer.history, force=True)
    except Exception as plot_error:  # noqa: BLE001 - the plot may have been cut mid-draw; the run is saved
        console.say(f"rnnkit: note: curves.png not redrawn ({plot_error})", err=True)
    snapshot = trainer.snapshot
    if isinstance(exc, TrainingDiverged):
        raise TrainingDiverged(f"{exc}; the run is saved as of epoch {snapshot['epoch']} in {out}") from None
    how = "interrupted" if signum == signal.SIGINT else f"signal {signal.Signals(signum).name}"
    where = (
        f"at step {snapshot['step']} (in epoch {snapshot['position']['epoch'] + 1})"
        if snapshot.get("position")
        else f"after {snapshot['epoch']} completed epoch(s)"
    )
    raise RunStopped(
        signum, f"\n{how}: saved the run {where} in {out}; continue with: rnnkit train --resume {out}"
    ) from None
