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


def test_sequential_batches_continue_each_other():
    corpus = torch.arange(10_000)
    data = split_corpus(corpus, "sequential", 4, 35, val_fraction=0.1)
    batches = list(data.train)
    lane = (9000 - 1) // 4
    assert len(batches) == lane // 35
    for (X, Y), (X2, _) in zip(batches, batches[1:], strict=False):
        assert torch.equal(X2[:, 0], Y[:, -1]) and torch.equal(X2[:, 0], X[:, -1] + 1)
    assert torch.equal(batches[0][0][:, 0], torch.arange(4) * lane)
    assert torch.equal(data.val_text, torch.arange(9000, 10_000))


def test_random_sampling_nonoverlapping_windows():
    corpus = torch.arange(1001)
    data = split_corpus(corpus, "random", 8, 10, val_fraction=0.0, seed=1)
    batches = list(data.train.epoch(0))
    assert len(batches) == (1000 // 10) // 8  # whole batches only, as d2l 0.x
    starts = torch.cat([X[:, 0] for X, _ in batches]).tolist()
    assert all(s % 10 == 0 for s in starts) and len(set(starts)) == len(starts)


def test_fraction_split_holds_out_the_tail_and_covers_the_rest_once():
    corpus = torch.arange(1000)
    data = split_corpus(corpus, "fraction", 16, 5, val_fraction=0.2)
    assert torch.equal(data.val_text, torch.arange(800, 1000))
    offsets = set()
    for epoch in range(6):
        X = torch.cat([X for X, Y in data.train.epoch(epoch)])
        assert X.max().item() < 800 and torch.equal(X.flatten().sort().values, X.flatten().unique())
        assert len(X.flatten()) >= 800 - 2 * 5  # every token but those before the offset and at the end
        offsets.add(X[:, 0].min().item())
    assert len(offsets) > 1  # the windows start at a different offset from epoch to epoch


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="d2l", batch_size=8, num_steps=50), "shorter than one window"),
    (dict(split="d2l", batch_size=8, num_steps=0), "num_steps"),
    (dict(split="d2l", batch_size=-1, num_steps=5), "batch_size"),
    (dict(split="sequential", batch_size=30, num_steps=5), "too short"),
    (dict(split="nope", batch_size=8, num_steps=5), "unknown split"),
])
def test_bad_sizes(kwargs, message):
    with pytest.raises(RnnkitError, match=message):
        split_corpus(torch.arange(40), **kwargs)
