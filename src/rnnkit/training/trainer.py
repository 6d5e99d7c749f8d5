"""The training loop: :class:`Trainer` builds a run's data, model and optimizer from a
:class:`~rnnkit.config.TrainConfig` and trains it, epoch by epoch, step by step.

What it decides lives next to it, one concept a module: the step (:mod:`.steps`), the weight
average (:mod:`.average`), what is recorded (:mod:`.records`), the data (:mod:`.corpus`), when to
stop (:mod:`.stopping`); what happens around it (progress, saving, logging) are callbacks
(:mod:`.callbacks`). The run's life (a run directory, its lock, signals, the final save) is
:class:`rnnkit.Run`'s.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator

import torch

from rnnkit import distributed
from rnnkit.config import TrainConfig
from rnnkit.distributed import ONE_PROCESS, World
from rnnkit.errors import RnnkitError, Stop, TrainingDiverged
from rnnkit.evaluate import bits_per_token, perplexity, safe_exp
from rnnkit.models import build_model, check_parameter_count, detach_state, state_batch_dim
from rnnkit.text import Vocab
from rnnkit.training import clock
from rnnkit.training.average import WeightAverage
from rnnkit.training.callbacks import Callback, FunctionCallbacks
from rnnkit.training.corpus import load_training_data
from rnnkit.training.device import check_memory, select_device
from rnnkit.training.optim import lr_factor, make_optimizer
from rnnkit.training.position import EpochPosition
from rnnkit.training.records import EpochStats, EvalPoint, LossSum, TrainingState
from rnnkit.training.rng import RunRNG
from rnnkit.training.steps import choose_step
from rnnkit.training.stopping import StopRules, check_budget_room, stop_reason
from rnnkit.training.validation import shared_held_out_nll


class Trainer:
    """Loads the corpus, builds vocabulary, batches and model from a :class:`TrainConfig`, and trains.

    ``fit()`` returns the history (one :class:`EpochStats` per epoch); :meth:`add_callback` adds
    hooks around it (:class:`~rnnkit.training.callbacks.Callback`).

    The trainer has a random number generator state of its own (seeded with ``config.seed``): model
    initialisation and dropout draw from it, and the caller's global torch RNG is the same before
    and after ``Trainer(...)`` and ``fit()``.

    Stopping between steps: :meth:`request_stop` (a signal handler's call) makes the trainer stop
    after the step in progress, with :attr:`snapshot` holding the state there, and raise
    :class:`Stop`. That state includes the position in the epoch (batch, partial sums, a carried
    hidden state), so a resumed run reads exactly the batches an uninterrupted one would have read next.

    ``world`` (:mod:`rnnkit.distributed`): this process's place in a torchrun job; it trains on its
    part of every batch, and only its rank 0 should write.
    """

    def __init__(
        self,
        config: TrainConfig,
        text: str | None = None,
        vocab: Vocab | None = None,
        world: World = ONE_PROCESS,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        config.validate()
        self.config, self.world = config, world
        distributed.check_batch(config.batch_size, world)
        self.device = select_device(config.device)
        if world.started and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", world.local_rank)  # one GPU per process on each machine
        data = load_training_data(config, self.device, text, vocab)
        self.corpus, self.vocab, self.corpus_sha1 = data.corpus, data.vocab, data.corpus_sha1
        self.data, self.unknown_tokens = data.split, data.unknown_tokens
        check_parameter_count(config.model, len(self.vocab), config.hidden, config.layers, config.embedding)
        check_memory(config, len(self.vocab), self.device)
        self.rng = RunRNG(self.device)
        with self.rng.use(seed=config.seed):
            self.model = build_model(
                config.model,
                len(self.vocab),
                config.hidden,
                config.layers,
                config.dropout,
                config.embedding,
                config.activation,
                config.tie_weights,
                io_dropout=config.io_dropout,
                weight_drop=config.weight_drop,
            ).to(self.device)
        self.optimizer = make_optimizer(config, self.model)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        self.step_fn = choose_step(self.model, config, self.device, world)
        if world.started:  # every process starts from rank 0's weights, as DDP does
            distributed.broadcast_from_main(p.data for p in self.model.parameters())
        self.state = TrainingState()
        self.snapshot: dict | None = None  # the state to resume from: after the last epoch, or where it stopped
        self.callbacks: list[Callback] = list(callbacks)
        self.stopping = StopRules(config)
        self._budget_checked = False
        self._eval_seconds = 0.0  # evaluation time inside the current epoch (not training time)
        self.position = EpochPosition(self.device, world, state_batch_dim(self.model), self._global_sums)

    # -- the run's records, by their usual names
    history = property(lambda self: self.state.history)
    evals = property(lambda self: self.state.evals)
    best = property(lambda self: self.state.best)
    step = property(lambda self: self.state.step)
    train_seconds = property(lambda self: self.state.train_seconds)

    @property
    def finished(self) -> str | None:
        """Why the run stopped before its epochs (time budget, max steps, patience), or None."""
        return self.state.finished

    @finished.setter
    def finished(self, reason: str | None) -> None:
        self.state.finished = reason

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def request_stop(self, signum: int) -> bool:
        """Stop after the step in progress (a signal's number); False where training is not running
        (the caller should stop at once)."""
        return self.stopping.request(signum)

    @property
    def stop_requested(self) -> int:
        """The number of the signal that asked the run to stop after the step in progress, or 0."""
        return self.stopping.requested

    @stop_requested.setter
    def stop_requested(self, signum: int) -> None:
        self.stopping.requested = signum

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where training is: weights, optimizer, RNG
        states, the :class:`TrainingState` and the position in the epoch. Tensors are copies."""
        since = self.state.since_eval
        records = self.state.to_dict()
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": self.rng.state(),
        }
        state.update(
            {
                k: records[k]
                for k in (
                    "epoch",
                    "history",
                    "train_seconds",
                    "step",
                    "evals",
                    "best",
                    "finished",
                    "wall_seconds",
                    "bad_evals",
                )
            }
        )
        state["since_eval"] = self._global_sums(float(since.total), since.tokens)
        state["last_eval_wall"] = records["last_eval_wall"]
        state["position"] = self.position.state(clock.now(), self._eval_seconds)
        state["average"] = None if self.average is None else self.average.state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (the next :meth:`fit` continues from there)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.load(state["rng"])
        self.state = TrainingState.from_dict(state, count_since_eval=self.world.is_main)  # sums: counted once
        self.position.restore(state.get("position"))
        if self.average is not None:
            self.average.load(state.get("average"))

    def _global_sums(self, loss_sum: float, count: int) -> list:
        """(loss sum, token count) over all processes (a collective under torchrun)."""
        if self.world.started:
            loss_sum, count = distributed.all_reduce_sum([loss_sum, count], self.device)
        return [loss_sum, int(count)]

    def fit(
        self,
        on_epoch: Callable[[EpochStats], None] | None = None,
        on_batch: Callable[[int, torch.Tensor], None] | None = None,
        on_eval: Callable[[EvalPoint], None] | None = None,
    ) -> list[EpochStats]:
        """Train from the current epoch (or mid-epoch position) to ``config.epochs`` (or the budget,
        max steps, patience). After every epoch and at every save, :attr:`snapshot` holds the state
        to resume from. ``on_epoch``/``on_batch``/``on_eval``: functions called as the callbacks'
        hooks are (:class:`~rnnkit.training.callbacks.FunctionCallbacks`).

        Raises :class:`Stop` after a :meth:`request_stop`, and :class:`TrainingDiverged` when an
        epoch's training loss is NaN or so large that its perplexity overflows (above ~709 nats per
        token); the snapshot then still holds the last good epoch."""
        functions = FunctionCallbacks(on_epoch, on_batch, on_eval) if on_epoch or on_batch or on_eval else None
        if functions is not None:
            self.callbacks.append(functions)
        try:
            return self._fit()
        finally:
            if functions is not None:
                self.callbacks.remove(functions)

    def _fit(self) -> list[EpochStats]:
        self.snapshot = self.state_dict()
        self.model.prepare_kernel()  # a kernel build happens here, not inside epoch 1's timing
        self.check_budget()
        self.stopping.start(self.state.wall_seconds)
        last_epoch = 10**9 if self.config.time_budget or self.config.max_steps else self.config.epochs
        self._call("on_fit_start")
        with self.rng.use(), self.stopping.accepting():
            if self.world.rank:  # dropout: each process its own masks (rank 0 keeps the saved RNG stream)
                torch.manual_seed((self.config.seed * 1_000_003 + self.world.rank * 7919 + self.step) % (1 << 63))
            for epoch in range(len(self.history), last_epoch):
                if self.finished:
                    break
                stats = self._epoch(epoch)
                self.state.history.append(stats)
                self.snapshot = self.state_dict()
                self._call("on_epoch_end", stats)
        self._call("on_fit_end")
        return self.history

    def _epoch(self, epoch: int) -> EpochStats:
        """Train epoch ``epoch`` (0-based), validate at its end, and return its stats."""
        self._eval_seconds = 0.0
        loss_sum, count = self.train_epoch(epoch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = clock.now() - self.position.run.t0 - self._eval_seconds
        self.position.end()
        loss_sum, count = self._global_sums(loss_sum, count)
        if count == 0:
            raise RnnkitError("the training data gave no batch this epoch; lower --batch-size or --num-steps")
        train_loss = loss_sum / count
        if safe_exp(train_loss) == float("inf") or train_loss != train_loss:  # inf perplexity, or NaN
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1}: the training loss is {train_loss:.6g} nats per "
                f"token (perplexity beyond float range); clip the gradients (--clip 1) or lower the "
                f"learning rate (--lr {self.config.lr:g} now)"
            )
        self.state.train_seconds += elapsed
        val_nll, val_count = self.evaluate_val()
        if not (self.evals and self.evals[-1].step == self.step):  # not just evaluated at this step
            self.evaluate_point(
                epoch + 1 if not self.finished else self.evals_epoch(epoch, count), (val_nll, val_count)
            )
        self.state.wall_seconds = self.stopping.elapsed()
        return EpochStats(
            epoch + 1,
            train_loss,
            safe_exp(train_loss),
            perplexity(val_nll, val_count),
            bits_per_token(val_nll, val_count),
            round(self.state.train_seconds, 4),
            round(count / elapsed, 1),
        )

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over the training batches (from a restored mid-epoch position, if any; cut short
        when the run must stop); returns (summed loss in nats, token count) of this process's part.
        Evaluations and saves due within the epoch run here."""
        model, world, config = self.model, self.world, self.config
        model.train()
        run = self.position.begin(epoch, clock.now())
        num_batches = max(len(self.data.train), 1)
        stateful = self.data.train.stateful
        state = self.position.carry
        for k, (X, Y) in enumerate(self.data.train.epoch(epoch, run.batch, world.part), start=run.batch):
            self._set_lr()
            carried = detach_state(state) if stateful else None  # truncated BPTT where batches continue
            shared = self._flags(self.step + 1) if self.step_fn.shares_flags else None
            loss, state, flags = self.step_fn(X, Y, carried, shared)
            self.optimizer.step()
            self.state.step += 1
            if self.average is not None:
                self.average.update(self.step)
            run.loss += loss * Y.numel()
            run.count += Y.numel()
            run.batch = k + 1
            self.position.carry = state if stateful else None
            self.state.since_eval.add(loss, Y.numel())
            self._call("on_batch_end", Y.numel() * world.size, loss)
            signum, budget_spent, eval_due, save_due = flags or self._flags(self.step)
            if (self.step % config.eval_every == 0) if config.eval_every else (config.time_budget and eval_due):
                self.evaluate_point(epoch + (k + 1) / num_batches)
                model.train()
            if signum:  # after the evaluation due at this step: a resumed run repeats nothing
                signum = distributed.all_reduce_max(self.stop_requested, self.device) if world.started else signum
                self.snapshot = self._state_now()
                raise Stop(int(signum))
            self.state.finished = stop_reason(config, self.state, bool(budget_spent))
            if self.finished:
                break
            if save_due:
                self.snapshot = self._state_now()
                self._call("on_save", self.snapshot)
        return run.loss.item(), run.count

    def _flags(self, step: int) -> list[float]:
        """:meth:`StopRules.flags` after step ``step``, with whether a callback wants a save there."""
        save_due = any(callback.save_due(self, step) for callback in self.callbacks)
        return self.stopping.flags(self.state.last_eval_wall, save_due)

    def _state_now(self) -> dict:
        """:meth:`state_dict` between two steps of an epoch (a collective under torchrun)."""
        self.state.wall_seconds = self.stopping.elapsed()
        return self.state_dict()

    def progress(self) -> float:
        """How far the run is, in [0, 1]: of its time budget, or of all its steps."""
        return self.stopping.progress(self.step, len(self.data.train))

    def _set_lr(self) -> None:
        if self.config.schedule == "constant" and not self.config.warmup:
            return
        lr = self.config.lr * lr_factor(self.config, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within the block the model holds the weights' moving average (``--ema``), else nothing
        changes (:meth:`WeightAverage.in_model`)."""
        if self.average is None:
            yield
            return
        with self.average.in_model():
            yield

    def evaluate_point(self, epoch: float, val: tuple[float, int] | None = None) -> EvalPoint | None:
        """Validate now (or record ``val``, an already computed (nll, count)), keep the best weights
        (the moving average's, with ``--ema``), count evaluations without improvement. None where
        there is no validation data."""
        with self.averaged_weights():
            return self._evaluate_point(epoch, val)

    def _evaluate_point(self, epoch: float, val: tuple[float, int] | None) -> EvalPoint | None:
        started = clock.now()
        val_nll, val_count = self.evaluate_val() if val is None else val
        self._eval_seconds += clock.now() - started
        if not val_count:
            return None
        since = self.state.since_eval
        loss_sum, tokens = self._global_sums(float(since.total), since.tokens)
        point = EvalPoint(
            self.step,
            round(epoch, 4),
            round(self.stopping.elapsed(), 3),
            loss_sum / tokens if tokens else float("nan"),
            val_nll / val_count,
            bits_per_token(val_nll, val_count),
            self.optimizer.param_groups[0]["lr"],
        )
        self.state.since_eval, self.state.last_eval_wall = LossSum(), self.stopping.elapsed()
        self.state.record(point, lambda: {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self._call("on_eval", point)  # after the best is updated: it may say "(best)"
        return point

    def evaluate_val(self) -> tuple[float, int]:
        """Summed NLL and count on the validation data (windows for ``d2l``, else the held-out text)
        of the weights' moving average where there is one; under torchrun, rank 0's, sent to all."""
        with self.averaged_weights():  # --ema: the average is what is validated
            return shared_held_out_nll(self.model, self.data, self.config.num_steps, self.world, self.device)

    def check_budget(self, spent_s: float = 0.0) -> None:
        """A time budget must leave room for training and about ten validations: measure one (rank
        0's measure decides for every process); once per run, and :meth:`fit` calls it if nobody
        has. ``spent_s``: seconds already taken out of the user's budget (sizing), for the message."""
        if not self.config.time_budget or self.finished or self._budget_checked:
            return
        self.model.prepare_kernel()  # a kernel build is not a validation's time
        started = clock.now()
        self.evaluate_val()
        took = torch.tensor([clock.now() - started], dtype=torch.float64, device=self.device)
        if self.world.started:
            distributed.broadcast_from_main([took])
        check_budget_room(self.config.time_budget, took.item(), spent_s)
        self._budget_checked = True

    def evals_epoch(self, epoch: int, tokens: int) -> float:
        """Fractional epochs done when epoch ``epoch`` stopped after ``tokens`` training tokens."""
        per_epoch = max(self.data.train.num_windows * self.config.num_steps, 1)
        return epoch + min(tokens / per_epoch, 1.0)
