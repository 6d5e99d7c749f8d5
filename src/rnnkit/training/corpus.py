"""A run's training data: the corpus read, its vocabulary, and its split into batches and held-out data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from rnnkit.config import TrainConfig
from rnnkit.data import DataSplit, RandomWindows, split_corpus
from rnnkit.errors import RnnkitError
from rnnkit.text import Vocab, build_corpus, load_corpus_text


@dataclass
class TrainingData:
    """The corpus as token ids (N,), its vocabulary, the sha1 that a resume checks it against, and
    its :class:`~rnnkit.data.DataSplit` (training batches, held-out windows or text)."""

    corpus: torch.Tensor
    vocab: Vocab
    corpus_sha1: str
    split: DataSplit
    unknown_tokens: int = 0  # tokens of the text read as <unk> (word models: words below min_freq)


def load_training_data(
    config: TrainConfig, device: torch.device, text: str | None = None, vocab: Vocab | None = None
) -> TrainingData:
    """Read the run's corpus (``text`` where the caller has read it already; a prepared directory
    with ``config.data``) with ``vocab`` where one is given (a resumed run's), and split it.
    A prepared corpus sets ``config.tokens`` to the kind of tokens it holds."""
    data = load_prepared(config, device, vocab) if config.data else load_text(config, device, text, vocab)
    if config.val_tokens and data.split.val_text is not None:
        data.split.val_text = data.split.val_text[: config.val_tokens + 1]
    return data


def load_text(config: TrainConfig, device: torch.device, text: str | None, vocab: Vocab | None) -> TrainingData:
    if text is None:
        text = load_corpus_text(config.corpus, config.encoding, config.strip_gutenberg or None)
    sha1 = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()  # of the text as read
    ids, vocab = build_corpus(text, config.preprocess, config.tokens, vocab=vocab, min_freq=config.min_freq)
    corpus = torch.tensor(ids, dtype=torch.int64, device=device)
    unknown = ids.count(vocab.unk) if vocab.unk_token is not None else 0
    split = split_corpus(
        corpus,
        config.split,
        config.batch_size,
        config.num_steps,
        num_train=config.num_train,
        num_val=config.num_val,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
    return TrainingData(corpus, vocab, sha1, split, unknown)


def load_prepared(config: TrainConfig, device: torch.device, vocab: Vocab | None) -> TrainingData:
    """A prepared directory: its token files stay on disk, read through memory maps, as random windows."""
    from rnnkit.prepare import open_prepared

    prepared = open_prepared(config.data)
    kind = prepared.manifest["tokens"]
    tokens = [chr(t) for t in prepared.idx_to_token] if kind == "bytes" else prepared.idx_to_token
    if config.tokens not in (kind, "char"):
        raise RnnkitError(f"{config.data} holds {kind} tokens, not {config.tokens}")
    config.tokens = kind
    prepared_vocab = Vocab.from_tokens_list(tokens, unk_token=None)
    if vocab is not None and vocab.idx_to_token != prepared_vocab.idx_to_token:
        raise RnnkitError(f"{config.data}: its vocabulary is not the one this run was trained with")
    if device.type != "cpu":
        raise RnnkitError("--data trains on the CPU for now (batches are gathered from the memory map)")
    if len(prepared.train) < config.num_steps + 1:
        raise RnnkitError(f"{config.data}: {len(prepared.train)} training tokens, shorter than one window")
    val = prepared.val if len(prepared.val) >= 2 else None
    split = DataSplit(RandomWindows(prepared.train, config.batch_size, config.num_steps, config.seed), None, val)
    return TrainingData(prepared.train, prepared_vocab, prepared.manifest["files"]["train"]["sha1"], split)
