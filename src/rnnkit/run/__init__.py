"""A run: a directory holding a trained (or training) model, and what you do with it.

::

    import rnnkit

    run = rnnkit.train(corpus="my.txt", time_budget="3m", out="runs/mine")  # == rnnkit train --corpus my.txt ...
    print(run.generate("ROMEO:", n=300, temperature=0.8, seed=1))         # == rnnkit generate runs/mine ...
    print(run.evaluate("other.txt").bpc)                                    # == rnnkit eval runs/mine --corpus ...
    run = rnnkit.Run.load("runs/mine").resume(epochs=200)                   # == rnnkit train --resume runs/mine ...

The command line calls exactly these, so the same options give the same run, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnkit.checkpoint import chosen_checkpoint, load_run, read_config
from rnnkit.config import RunOptions, TrainConfig
from rnnkit.errors import RnnkitError
from rnnkit.evaluate import Evaluation
from rnnkit.generate import Sampling
from rnnkit.run.lifecycle import RunStopped, train_run
from rnnkit.training import Trainer

__all__ = ["LoadedModel", "Run", "RunStopped", "resume", "train"]


def train(*, speeds: Mapping[int, float] | None = None, **options: Any) -> Run:
    """Train a new run: ``options`` are ``rnnkit train``'s, by their Python names (``corpus``,
    ``time_budget`` as seconds or ``"3m"``, ``hidden``, ``out``, ``save_every``, ``quiet``, ...; see
    :class:`~rnnkit.config.TrainConfig` and :class:`~rnnkit.config.RunOptions`), and those given
    decide the defaults as on the command line. ``speeds``: the sizing's tokens/s by width, instead
    of measuring them (reproduces a sizing decision). Ctrl-C saves the run and raises
    :class:`RunStopped` (a ``KeyboardInterrupt``)."""
    trainer = train_run(options, set(options), speeds=speeds)
    return Run(Path(options.get("out", RunOptions.out)), trainer)


def resume(run_dir: str | Path, **options: Any) -> Run:
    """Continue the run in ``run_dir`` where it stopped; only ``epochs``, ``max_steps``, the device
    and the saving and display options may change (:data:`rnnkit.config.RESUMABLE`)."""
    trainer = train_run(options, set(options), resume=run_dir)
    return Run(Path(run_dir), trainer)


@dataclass
class LoadedModel:
    """A run's model in evaluation mode with what it needs: vocabulary, config, ``config.json``, which
    checkpoint it is (``best`` or ``last``) and the line saying so."""

    model: Any
    vocab: Any
    config: TrainConfig
    meta: dict
    checkpoint: str
    note: str = ""


@dataclass
class Generation:
    """Text being generated, in pieces: iterating computes it (the first piece, the prefix and the
    first token, is there once the first token is); ``notes`` say which checkpoint and how the
    prefix was read."""

    pieces: Iterator[str]
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def text(self) -> str:
        return "".join(self.pieces)


class Run:
    """A run directory (``config.json``, checkpoints, metrics); ``trainer`` is the trainer that just
    trained it, where this process did (None for a run loaded from disk)."""

    def __init__(self, directory: str | Path, trainer: Trainer | None = None) -> None:
        self.directory, self.trainer = Path(directory), trainer

    @classmethod
    def load(cls, directory: str | Path) -> Run:
        """The run in ``directory`` (checked to be one)."""
        read_config(directory)
        return cls(directory)

    def __repr__(self) -> str:
        return f"Run({str(self.directory)!r})"

    @property
    def meta(self) -> dict:
        """The parsed ``config.json``: config, vocabulary, checkpoint, best validation."""
        return read_config(self.directory)

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"])

    def resume(self, **options: Any) -> Run:
        """Continue this run (:func:`resume`)."""
        return resume(self.directory, **options)

    def load_model(self, checkpoint: str | None = None) -> LoadedModel:
        """The model of the best checkpoint where the run kept one (:func:`chosen_checkpoint`), or of
        ``checkpoint`` (``best`` or ``last``)."""
        meta = read_config(self.directory)
        best, choice = meta.get("best"), chosen_checkpoint(meta, checkpoint)
        model, vocab, config, meta = load_run(self.directory, checkpoint=choice)
        note = ""
        if choice == "best":
            note = (
                f"rnnkit: using the best checkpoint (step {best['step']}, val loss {best['val_loss']:.4f}); "
                "--checkpoint last for the final weights"
            )
        elif best:
            note = f"rnnkit: using the last checkpoint (epoch {meta['epoch']})"
        return LoadedModel(model, vocab, config, meta, choice, note)

    def generation(
        self,
        prefix: str = "",
        n: int = 200,
        sampling: Sampling | None = None,
        seed: int | None = None,
        checkpoint: str | None = None,
    ) -> Generation:
        """``prefix`` (read as the training text was) and ``n`` tokens after it, as they come (``rnnkit
        generate``): greedy unless ``sampling`` says otherwise."""
        from rnnkit.generate import generate
        from rnnkit.text import preprocess
        from rnnkit.tokens import tokenizer_for

        loaded = self.load_model(checkpoint)
        config = loaded.config
        read = preprocess(prefix, config.preprocess)  # the prefix is read as the training text was
        tokens = generate(loaded.model, loaded.vocab, read, n, sampling or Sampling(greedy=True), seed, config.tokens)
        writer = tokenizer_for(config.tokens).writer(read)

        def pieces() -> Iterator[str]:
            first = next(tokens, None)  # errors (unknown prefix, bad settings) surface before anything shows
            yield writer.start() + ("" if first is None else writer.write(first))
            for token in tokens:
                yield writer.write(token)
            yield writer.close()

        notes = [loaded.note] if loaded.note else []
        if read != prefix:
            notes.append(
                f"rnnkit: note: prefix preprocessed as the training text was (--preprocess "
                f"{config.preprocess}): {prefix!r} -> {read!r}"
            )
        return Generation(pieces(), notes)

    def generate(
        self,
        prefix: str = "",
        n: int = 200,
        *,
        greedy: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        alpha: float = 1.0,
        seed: int | None = None,
        checkpoint: str | None = None,
    ) -> str:
        """``prefix`` followed by ``n`` generated tokens (:class:`~rnnkit.generate.Sampling`'s knobs)."""
        return self.generation(prefix, n, Sampling(greedy, temperature, top_k, top_p, alpha), seed, checkpoint).text()

    def evaluate(
        self,
        corpus: str | None = None,
        *,
        encoding: str | None = None,
        strip_gutenberg: bool = False,
        checkpoint: str | None = None,
        dynamic_lr: float | None = None,
    ) -> Evaluation:
        """Perplexity and bits per character on ``corpus`` (a built-in name or a path; default: the
        run's own corpus, or a prepared run's held-out tokens), as ``rnnkit eval``. ``dynamic_lr``:
        also score the text with dynamic evaluation at that rate (``rnnkit eval --dynamic``;
        :func:`rnnkit.evaluate.dynamic_nll`), in :attr:`Evaluation.dynamic`, apart from the static
        score."""
        from rnnkit.evaluate import evaluate_text, evaluate_tokens
        from rnnkit.text import load_corpus_text
        from rnnkit.tokens import tokenizer_for

        loaded = self.load_model(checkpoint)
        config = loaded.config
        if config.data and corpus is None:  # a run trained from a prepared directory: its held-out tokens
            from rnnkit.prepare import open_prepared

            val = open_prepared(config.data).val
            if len(val) < 2:
                raise RnnkitError(f"{config.data}: no held-out tokens to evaluate; pass --corpus")
            evaluation = evaluate_tokens(
                loaded.model, val, f"{config.data} (held-out part)", tokenizer_for(config.tokens).unit, dynamic_lr
            )
        else:
            strip = strip_gutenberg or (config.strip_gutenberg if corpus is None else False) or None
            text = load_corpus_text(corpus or config.corpus, encoding or config.encoding, strip)
            evaluation = evaluate_text(
                loaded.model,
                loaded.vocab,
                text,
                str(corpus or config.corpus),
                config.preprocess,
                config.tokens,
                dynamic_lr,
            )
        evaluation.note = loaded.note
        return evaluation

    def plot(self, out: str | Path | None = None) -> Path:
        """Draw the run's training curves into ``out`` (default: its ``curves.png``)."""
        from rnnkit.plot import plot_runs

        return Path(plot_runs([str(self.directory)], str(out or self.directory / "curves.png")))

    def serve(self, host: str = "127.0.0.1", port: int = 8000, checkpoint: str | None = None, **limits: int) -> None:
        """Serve this run over HTTP with the playground page until interrupted (``rnnkit serve``)."""
        from rnnkit.serve import Limits, serve

        serve([str(self.directory)], host, port, checkpoint, Limits(**limits))
