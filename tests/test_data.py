import pytest
import torch

from rnnkit.data import split_corpus
from rnnkit.errors import RnnkitError


def test_d2l_split_windows_and_batch_counts():
    corpus = torch.arange(20000) % 97
    data = split_corpus(corpus, "d2l", 1024, 32, seed=0)
    assert data.train.num_windows == 10000 and len(data.train) == 10
    assert data.val_windows.num_windows == 5000 and len(data.val_windows) == 5
    batches = list(data.train.epoch(0))
    assert [len(X) for X, _ in batches] == [1024] * 9 + [784]
    starts = torch.cat([X[:, 0] for X, _ in batches])
    # every training window exactly once per epoch, shuffled
    full = torch.arange(20000)
    data_ids = split_corpus(full, "d2l", 1024, 32)
    seen = torch.cat([X[:, 0] for X, _ in data_ids.train.epoch(0)])
    assert sorted(seen.tolist()) == list(range(10000)) and seen.tolist() != list(range(10000))
    for X, Y in batches[:2]:
        assert X.shape[1] == 32 and torch.equal(X[:, 1:], Y[:, :-1])
    X0, Y0 = next(iter(data_ids.val_windows))
    assert X0[0].tolist() == list(range(10000, 10032)) and Y0[0].tolist() == list(range(10001, 10033))
    assert len(starts) == 10000


def test_shuffle_depends_only_on_seed_and_epoch():
    corpus = torch.arange(3000)
    a = split_corpus(corpus, "d2l", 64, 8, num_train=1000, seed=3).train
    b = split_corpus(corpus, "d2l", 64, 8, num_train=1000, seed=3).train
    first = [X for X, _ in a.epoch(5)]
    assert all(torch.equal(x, y) for x, y in zip(first, (X for X, _ in b.epoch(5)), strict=True))
    assert not torch.equal(first[0], next(iter(a.epoch(6)))[0])


# Transcriptions of d2l's samplers (d2l 0.17 / Dive into Deep Learning §8.3, the ones the 0.x
# notebook's training loop uses), with their two random draws, the offset and the shuffle, passed in.
def d2l_seq_data_iter_random(corpus, batch_size, num_steps, offset, shuffle):
    corpus = corpus[offset:]  # d2l: corpus[random.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    initial_indices = shuffle(initial_indices)  # d2l: random.shuffle(initial_indices)

    def data(pos):
        return corpus[pos : pos + num_steps]

    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        initial_indices_per_batch = initial_indices[i : i + batch_size]
        X = [data(j) for j in initial_indices_per_batch]
        Y = [data(j + 1) for j in initial_indices_per_batch]
        yield torch.tensor(X), torch.tensor(Y)


def d2l_seq_data_iter_sequential(corpus, batch_size, num_steps, offset):
    # d2l: offset = random.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset : offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1 : offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        X = Xs[:, i : i + num_steps]
        Y = Ys[:, i : i + num_steps]
        yield X, Y


@pytest.mark.parametrize("length, batch_size, num_steps", [(10_000, 4, 35), (1001, 3, 7), (500, 32, 5)])
def test_sequential_split_is_d2ls_seq_data_iter_sequential(length, batch_size, num_steps):
    corpus = (torch.arange(length) * 7919) % 1009  # distinct enough that any shift shows
    data = split_corpus(corpus, "sequential", batch_size, num_steps, val_fraction=0.0, seed=2)
    offsets = set()
    for epoch in range(12):
        offset = data.train.epoch_offset(epoch)
        assert 0 <= offset <= num_steps
        offsets.add(offset)
        ours = list(data.train.epoch(epoch))
        theirs = list(d2l_seq_data_iter_sequential(corpus.tolist(), batch_size, num_steps, offset))
        assert len(ours) == len(theirs) > 0
        for (X, Y), (X_ref, Y_ref) in zip(ours, theirs, strict=True):
            assert torch.equal(X, X_ref) and torch.equal(Y, Y_ref)
        for (_, Y), (X2, _) in zip(ours, ours[1:], strict=False):  # batch k+1 continues batch k
            assert torch.equal(X2[:, 0], Y[:, -1])
    assert len(offsets) > 1  # a new offset every epoch


@pytest.mark.parametrize("length, batch_size, num_steps", [(1001, 8, 10), (5000, 16, 35), (200, 2, 9)])
def test_random_split_is_d2ls_seq_data_iter_random(length, batch_size, num_steps):
    corpus = (torch.arange(length) * 7919) % 1009
    data = split_corpus(corpus, "random", batch_size, num_steps, val_fraction=0.0, seed=1)
    offsets = set()
    for epoch in range(12):
        starts = data.train.epoch_starts(epoch).tolist()
        offset = min(starts) % num_steps
        offsets.add(offset)
        assert offset < num_steps and all((s - offset) % num_steps == 0 for s in starts)
        # d2l's order of its window starts (relative to corpus[offset:]) is ours, shifted back
        rank = {s - offset: k for k, s in enumerate(starts)}
        theirs = list(
            d2l_seq_data_iter_random(
                corpus.tolist(),
                batch_size,
                num_steps,
                offset,
                shuffle=lambda indices, rank=rank: sorted(indices, key=rank.get),
            )
        )
        ours = list(data.train.epoch(epoch))
        assert len(ours) == len(theirs) == ((length - offset - 1) // num_steps) // batch_size
        for (X, Y), (X_ref, Y_ref) in zip(ours, theirs, strict=True):
            assert torch.equal(X, X_ref) and torch.equal(Y, Y_ref)
    assert len(offsets) > 1


def test_fraction_split_holds_out_the_tail_and_reads_every_token_every_epoch():
    corpus = torch.arange(1000)
    data = split_corpus(corpus, "fraction", 16, 7, val_fraction=0.2)
    assert torch.equal(data.val_text, torch.arange(800, 1000))
    offsets = set()
    for epoch in range(10):
        batches = list(data.train.epoch(epoch))
        X = torch.cat([X for X, _ in batches])
        Y = torch.cat([Y for _, Y in batches])
        assert set(X.flatten().tolist()) == set(range(799)) and set(Y.flatten().tolist()) == set(range(1, 800))
        counts = torch.bincount(Y.flatten(), minlength=800)
        assert counts[1:].max() <= 2 and (counts[1:] == 2).sum() < 2 * 7  # twice only at the two ends
        offsets.add(sorted(X[:, 0].tolist())[1] % 7)
    assert len(offsets) > 1  # the windows start at a different offset from epoch to epoch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="d2l", batch_size=8, num_steps=50), "shorter than one window"),
        (dict(split="d2l", batch_size=8, num_steps=0), "num_steps"),
        (dict(split="d2l", batch_size=-1, num_steps=5), "batch_size"),
        (dict(split="sequential", batch_size=30, num_steps=5), "too short"),
        (dict(split="nope", batch_size=8, num_steps=5), "unknown split"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(RnnkitError, match=message):
        split_corpus(torch.arange(40), **kwargs)


@pytest.mark.parametrize("split", ["d2l", "random", "sequential", "fraction", "sample"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_parts_of_batches_make_up_the_batch_and_start_skips_batches(split, world_size):
    """What processes of a distributed run read together is what one process reads, batch by batch
    (an uneven last batch included), and a mid-epoch start reads the same remaining batches."""
    corpus = torch.arange(5000)
    data = split_corpus(corpus, split, 48, 8, num_train=1001, seed=5).train
    whole = list(data.epoch(2))
    parts = [list(data.epoch(2, part=(rank, world_size))) for rank in range(world_size)]
    assert all(len(p) == len(whole) for p in parts) and len(whole) >= 3
    for k, (X, Y) in enumerate(whole):
        assert torch.equal(torch.cat([p[k][0] for p in parts]), X)
        assert torch.equal(torch.cat([p[k][1] for p in parts]), Y)
        sizes = [len(p[k][0]) for p in parts]
        assert max(sizes) - min(sizes) <= 1  # as equal as the rows allow
    later = list(data.epoch(2, start=2))
    assert len(later) == len(whole) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(later, whole[2:], strict=True))
    if split == "d2l":
        assert [len(X) for X, _ in whole][-1] == 1001 % 48  # the uneven last batch was covered
