"""Minibatches of token windows, pre-built as tensors on the training device (no DataLoader).

Five ways to cut a corpus, selected by ``split``:

- ``d2l``: d2l 1.0's ``TimeMachine``: overlapping windows ``corpus[i:i+num_steps+1]``; the first
  ``num_train`` for training (shuffled every epoch), the next ``num_val`` for validation.
- ``random``: d2l's ``seq_data_iter_random``: each epoch drops a random ``offset`` in
  ``[0, num_steps - 1]`` tokens from the front, cuts the rest into non-overlapping windows and
  shuffles them; full batches only.
- ``sequential``: d2l's ``seq_data_iter_sequential``: each epoch drops a random ``offset`` in
  ``[0, num_steps]``, lays the rest out as ``batch_size`` parallel lanes and reads them left to
  right, so that batch ``k+1`` continues batch ``k`` (the trainer carries the state over).
- ``fraction``: the first ``1 - val_fraction`` of the corpus cut into consecutive windows from a
  random offset each epoch, shuffled; one window more at each end where the offset or the length
  leaves tokens over, so every token is read every epoch (those few at the ends twice).
- ``sample``: windows drawn at random positions of the first ``1 - val_fraction`` (with
  replacement, nanoGPT's ``get_batch``); an epoch is as many batches as would cover it once. Its
  memory does not grow with the corpus (no list of windows), which is what a memory-mapped corpus
  (``rnnkit prepare``, ``--data``) needs.

All but ``d2l`` hold out the last ``val_fraction`` of the corpus as one contiguous validation text.

Every ``epoch(epoch, start, part)`` is a function of (seed, epoch) only: ``start`` skips the first
batches (a run resumed mid-epoch reads exactly the batches it had not read), and ``part`` =
``(rank, world_size)`` yields only that process's rows of each batch (:func:`part_rows`), so that
the processes of a distributed run together read each batch of a one-process run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rnnkit.errors import RnnkitError

SPLITS = ("d2l", "random", "sequential", "fraction", "sample")


Part = tuple[int, int]  # (rank, world size): which rows of each batch a process reads
WHOLE: Part = (0, 1)


def part_rows(num_rows: int, part: Part) -> slice:
    """The rows of a batch of ``num_rows`` that process ``rank`` of ``world_size`` trains on:
    consecutive, as equal as possible (a batch smaller than the world leaves some processes none)."""
    rank, size = part
    return slice(rank * num_rows // size, (rank + 1) * num_rows // size)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch), so a resumed run shuffles identically."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (1 << 63))


class WindowBatches:
    """Windows of ``num_steps + 1`` tokens starting at ``starts``; yields (X, Y), each (batch, num_steps).

    ``Y`` is ``X`` shifted by one token. Shuffled batches use :func:`epoch_generator`.
    """

    stateful = False

    def __init__(
        self,
        corpus: torch.Tensor,
        starts: torch.Tensor,
        batch_size: int,
        num_steps: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        random_offset: bool = False,
        cover_ends: bool = False,
    ) -> None:
        self.corpus, self.starts = corpus, starts.to(corpus.device)
        self.batch_size, self.num_steps = batch_size, num_steps
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.random_offset = random_offset  # shift all starts by one random amount < num_steps per epoch
        self.cover_ends = cover_ends  # add windows at the two ends so that no token is left out
        self.offsets = torch.arange(num_steps + 1, device=corpus.device)

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def batched(self, batch_size: int) -> WindowBatches:
        """The same windows, in order, in batches of ``batch_size`` (for evaluation)."""
        return WindowBatches(self.corpus, self.starts, max(batch_size, 1), self.num_steps, shuffle=False)

    def _num_batches(self, num_windows: int) -> int:
        b = self.batch_size
        return num_windows // b if self.drop_last else -(-num_windows // b)

    def __len__(self) -> int:
        return self._num_batches(self.num_windows)

    def epoch_starts(self, epoch: int = 0) -> torch.Tensor:
        """The window starts of an epoch, in the order they are read (a function of seed and epoch)."""
        starts = self.starts
        generator = epoch_generator(self.seed, epoch)
        if self.random_offset:  # d2l: corpus[random.randint(0, num_steps - 1):]
            offset = int(torch.randint(self.num_steps, (), generator=generator))
            starts = starts + offset
            starts = starts[starts + self.num_steps < len(self.corpus)]
            if self.cover_ends:
                last = len(self.corpus) - 1 - self.num_steps  # the window that ends at the last token
                head = [0] if offset > 0 else []
                tail = [last] if len(starts) == 0 or int(starts[-1]) < last else []
                starts = torch.cat([starts.new_tensor(head), starts, starts.new_tensor(tail)])
        if self.shuffle:
            perm = torch.randperm(len(starts), generator=generator)
            starts = starts[perm.to(starts.device)]
        return starts

    def epoch(self, epoch: int = 0, start: int = 0, part: Part = WHOLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = self.epoch_starts(epoch)
        for k in range(start, self._num_batches(len(starts))):
            rows = starts[k * self.batch_size : (k + 1) * self.batch_size]
            window = self.corpus[rows[part_rows(len(rows), part), None] + self.offsets]
            yield window[:, :-1], window[:, 1:]

    __iter__ = epoch


class RandomWindows:
    """Batches of windows at random positions of ``corpus`` (a tensor or a memory map: anything with
    ``len`` and index-tensor lookup), drawn from a generator of (seed, epoch) only."""

    stateful = False

    def __init__(self, corpus, batch_size: int, num_steps: int, seed: int = 0) -> None:
        self.corpus, self.batch_size, self.num_steps, self.seed = corpus, batch_size, num_steps, seed
        self.offsets = torch.arange(num_steps + 1)

    def __len__(self) -> int:
        return max(1, (len(self.corpus) - 1) // (self.batch_size * self.num_steps))

    @property
    def num_windows(self) -> int:
        return len(self) * self.batch_size

    def epoch(self, epoch: int = 0, start: int = 0, part: Part = WHOLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = epoch_generator(self.seed, epoch)
        mine = part_rows(self.batch_size, part)
        for k in range(len(self)):  # the skipped batches' draws are replayed: the generator's stream is the data
            starts = torch.randint(len(self.corpus) - self.num_steps, (self.batch_size,), generator=generator)
            if k >= start:
                window = self.corpus[starts[mine, None] + self.offsets]
                yield window[:, :-1], window[:, 1:]

    __iter__ = epoch


class TensorBatches:
    """Minibatches of the rows of equally long tensors (what ``DataLoader(TensorDataset(...))``
    yields), gathered with one index per tensor instead of collating rows one by one.

    Shuffled with the global torch RNG each time it is iterated, like ``DataLoader(shuffle=True)``.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise RnnkitError("tensors must have the same number of rows")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            else:
                idx = order[start : start + self.batch_size]
                yield tuple(t[idx.to(t.device)] for t in self.tensors)


class SequentialBatches:
    """d2l's ``seq_data_iter_sequential``: each epoch starts at a random offset in ``[0, num_steps]``;
    the rest is ``batch_size`` contiguous lanes read in consecutive column blocks."""

    stateful = True

    def __init__(self, corpus: torch.Tensor, batch_size: int, num_steps: int, seed: int = 0) -> None:
        self.corpus, self.batch_size, self.num_steps, self.seed = corpus, batch_size, num_steps, seed
        self.num_windows = batch_size * len(self)

    def __len__(self) -> int:
        """Batches in an epoch at offset 0 (an epoch at a larger offset may have one fewer)."""
        return self._num_batches(0)

    def _num_batches(self, offset: int) -> int:
        return (len(self.corpus) - offset - 1) // self.batch_size // self.num_steps

    def epoch_offset(self, epoch: int = 0) -> int:
        """d2l's ``random.randint(0, num_steps)``, from (seed, epoch)."""
        return int(torch.randint(self.num_steps + 1, (), generator=epoch_generator(self.seed, epoch)))

    def epoch(self, epoch: int = 0, start: int = 0, part: Part = WHOLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offset = self.epoch_offset(epoch)
        num_tokens = (len(self.corpus) - offset - 1) // self.batch_size * self.batch_size
        lanes = part_rows(self.batch_size, part)
        X = self.corpus[offset : offset + num_tokens].reshape(self.batch_size, -1)[lanes]
        Y = self.corpus[offset + 1 : offset + 1 + num_tokens].reshape(self.batch_size, -1)[lanes]
        for k in range(start, self._num_batches(offset)):
            cols = slice(k * self.num_steps, (k + 1) * self.num_steps)
            yield X[:, cols], Y[:, cols]

    __iter__ = epoch


@dataclass
class DataSplit:
    """Training batches (:class:`WindowBatches`, :class:`SequentialBatches` or :class:`RandomWindows`)
    plus validation data: windows (``d2l``) or one contiguous text (the other splits)."""

    train: WindowBatches | SequentialBatches
    val_windows: WindowBatches | None
    val_text: torch.Tensor | None


def check_sizes(batch_size: int, num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1 or num_steps > 1_000_000:
        raise RnnkitError(f"num_steps must be between 1 and 1000000, got {num_steps}")
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size > 10_000_000:
        raise RnnkitError(f"batch_size must be between 1 and 10000000, got {batch_size}")


def split_corpus(
    corpus: torch.Tensor,
    split: str,
    batch_size: int,
    num_steps: int,
    *,
    num_train: int = 10000,
    num_val: int = 5000,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplit:
    """Cut a 1-D tensor of token indices into training batches and validation data (module doc)."""
    check_sizes(batch_size, num_steps)
    n = len(corpus)
    if n < num_steps + 1:
        raise RnnkitError(f"corpus has {n} tokens, shorter than one window of num_steps + 1 = {num_steps + 1}")
    if split == "d2l":
        num_windows = n - num_steps
        if num_train < 1 or num_val < 0:
            raise RnnkitError("num_train must be positive and num_val non-negative")
        train_starts = torch.arange(min(num_train, num_windows))
        val_starts = torch.arange(len(train_starts), min(num_train + num_val, num_windows))
        train = WindowBatches(corpus, train_starts, batch_size, num_steps, shuffle=True, seed=seed)
        val = WindowBatches(corpus, val_starts, batch_size, num_steps, shuffle=False) if len(val_starts) else None
        return DataSplit(train, val, None)
    if split not in SPLITS:
        raise RnnkitError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if not 0 <= val_fraction < 1:
        raise RnnkitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cut = n - int(n * val_fraction)
    train_text, val_text = corpus[:cut], corpus[cut:]
    if len(train_text) < num_steps + 1:
        raise RnnkitError(f"training part has {len(train_text)} tokens, shorter than one window of {num_steps + 1}")
    val_text = val_text if len(val_text) >= 2 else None
    if split == "sequential":
        if (len(train_text) - num_steps - 1) // batch_size < num_steps:  # even at the largest offset
            raise RnnkitError(
                f"training part ({len(train_text)} tokens) is too short for {batch_size} lanes of "
                f"{num_steps} steps after an offset of up to {num_steps}; lower --batch-size"
            )
        return DataSplit(SequentialBatches(train_text, batch_size, num_steps, seed), None, val_text)
    if split == "random":
        if (len(train_text) - num_steps) // num_steps < batch_size:  # windows at the largest offset
            raise RnnkitError(
                f"training part has {(len(train_text) - num_steps) // num_steps} windows of "
                f"{num_steps} steps after an offset of up to {num_steps - 1}, fewer than one batch "
                f"of {batch_size}"
            )
        starts = torch.arange(0, len(train_text) - num_steps, num_steps)  # offset 0; shifted every epoch
        train = WindowBatches(
            train_text, starts, batch_size, num_steps, shuffle=True, drop_last=True, seed=seed, random_offset=True
        )
        return DataSplit(train, None, val_text)
    if split == "sample":
        return DataSplit(RandomWindows(train_text, batch_size, num_steps, seed), None, val_text)
    starts = torch.arange(0, len(train_text) - num_steps, num_steps)  # fraction
    train = WindowBatches(
        train_text, starts, batch_size, num_steps, shuffle=True, seed=seed, random_offset=True, cover_ends=True
    )
    return DataSplit(train, None, val_text)
