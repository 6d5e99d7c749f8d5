"""Runs as served: each loaded once, at start-up, from a consistent checkpoint.

Which checkpoint: :func:`rnnkit.checkpoint.chosen_checkpoint`, the rule ``generate`` and ``eval``
follow too (the best weights where the run kept them, else the last). A save that lands while a
run loads can replace its files between ``config.json`` and the weights; the loader refuses the
mixture and tries again, since the directory's commit point guarantees a consistent checkpoint at
every instant. Restart the server to serve newer weights.

How a text is read (preprocessing, tokens, ``<unk>``) and shown again is the run's
:class:`~rnnkit.tokens.Tokenizer`'s business: nothing here branches on the token kind.
"""

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rnnkit.config import TrainConfig
from rnnkit.errors import RnnkitError
from rnnkit.evaluate import bits_per_token, perplexity
from rnnkit.models import RNNLM
from rnnkit.text import Vocab, preprocess
from rnnkit.tokens import Tokenizer, tokenizer_for

LOAD_TRIES = 5  # a save landing while a run loads is retried this often


@dataclass
class ServedRun:
    """One run as served: its model, vocabulary and what the page shows about it."""

    name: str
    run_dir: Path
    model: RNNLM
    vocab: Vocab
    config: TrainConfig
    checkpoint: str  # best or last
    info: dict  # GET /api/runs's entry: schemas.RunInfo

    @property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_for(self.config.tokens)

    def encode(self, text: str, what: str) -> tuple[str, list[str], list[int], list[str]]:
        """(text as training read it, its tokens, their ids, tokens read as ``<unk>``); refuses
        characters the vocabulary cannot read at all. A word model's text comes back as its words
        joined by spaces."""
        tokens = self.tokenizer.split(preprocess(text, self.config.preprocess))
        text = self.tokenizer.join("", tokens)
        unknown = self.vocab.unknown(tokens)
        if unknown and self.vocab.unk_token is None:
            raise RnnkitError(
                f"{what} has characters run {self.name!r} cannot read: {''.join(repr(t) for t in unknown[:20])}"
            )
        return text, tokens, [self.vocab[t] for t in tokens], unknown

    def shown(self, index: int, first: bool = False) -> str:
        """The text a generated token adds: a character as it is, a word with the space before it."""
        return self.piece(self.vocab.idx_to_token[index], first)

    def piece(self, token: str, first: bool = False) -> str:
        """A word with the space before it (none first); a character or a byte as it is (a byte
        token is shown as the character of its code: bytes of UTF-8 characters appear one by one)."""
        return self.tokenizer.piece(token, first)

    def pieces(self, tokens: list[str]) -> list[str]:
        """The text of each of an encoded text's ``tokens``, as written (a word read as ``<unk>``
        keeps its spelling); joined, they give the text."""
        return [self.piece(t, i == 0) for i, t in enumerate(tokens)]


def load_served_run(run_dir: str | Path, checkpoint: str | None, name: str) -> ServedRun:
    """Load a run for serving (the best checkpoint where kept, unless ``checkpoint`` says).

    A save in progress can replace the files between reading ``config.json`` and the weights; the
    load then refuses the mixture, and is tried again (the directory's commit point guarantees a
    consistent checkpoint at every instant)."""
    # looked up at each call, not imported at the top: a test replaces load_run with a save landing meanwhile
    from rnnkit.checkpoint import chosen_checkpoint, load_run, read_config

    run_dir = Path(run_dir)
    for attempt in range(LOAD_TRIES):
        meta = read_config(run_dir)
        choice = chosen_checkpoint(meta, checkpoint)
        try:
            model, vocab, config, meta = load_run(run_dir, checkpoint=choice)
            break
        except RnnkitError:
            if attempt == LOAD_TRIES - 1 or read_config(run_dir).get("checkpoint") == meta.get("checkpoint"):
                raise  # not a save landing meanwhile: a real problem
            time.sleep(0.1)
    model.requires_grad_(False)
    val_loss = meta["best"]["val_loss"] if choice == "best" else last_val_loss(run_dir)
    info = run_info(name, run_dir, model, vocab, config, meta, choice, val_loss)
    return ServedRun(name, run_dir, model, vocab, config, choice, info)


def run_info(
    name: str,
    run_dir: Path,
    model: RNNLM,
    vocab: Vocab,
    config: TrainConfig,
    meta: dict,
    choice: str,
    val_loss: float | None,
) -> dict:
    """What ``GET /api/runs`` says about a run (:class:`rnnkit.serve.schemas.RunInfo`)."""
    return {
        "name": name,
        "run_dir": str(run_dir),
        "checkpoint": choice,
        "checkpoint_id": meta.get("checkpoint"),
        "corpus": str(config.corpus),
        "model": config.model,
        "hidden": config.hidden,
        "layers": config.layers,
        "embedding": config.embedding,
        "activation": config.activation,
        "preprocess": config.preprocess,
        "tokens": config.tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epoch": meta.get("epoch"),
        "val_ppl": None if val_loss is None else perplexity(val_loss, 1),
        "val_bpc": None if val_loss is None else bits_per_token(val_loss, 1),
        "vocab": vocab.idx_to_token,
        "unk_token": vocab.unk_token,
    }


def last_val_loss(run_dir: Path) -> float | None:
    """Validation loss (nats per token) of the last epoch in ``metrics.jsonl``, if any."""
    try:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        ppl = rows[-1].get("val_ppl") if rows and isinstance(rows[-1], dict) else None
        return math.log(ppl) if isinstance(ppl, (int, float)) and ppl > 0 else None
    except (OSError, ValueError):
        return None


def load_runs(run_dirs: list[str], checkpoint: str | None = None) -> dict[str, ServedRun]:
    """Runs by name (the directory's name; a repeated name gets ``-2``, ``-3``...)."""
    runs: dict[str, ServedRun] = {}
    for run_dir in run_dirs:
        base = Path(run_dir).resolve().name or "run"
        name = base
        for i in itertools.count(2):
            if name not in runs:
                break
            name = f"{base}-{i}"
        runs[name] = load_served_run(run_dir, checkpoint, name)
    return runs
