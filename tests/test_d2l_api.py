import torch

from rnnkit import d2l


def test_time_machine_matches_d2l_windows_and_loaders(tm_text):
    data = d2l.TimeMachine(batch_size=1024, num_steps=32)
    corpus, vocab = data.build(tm_text)
    assert len(vocab) == 28 and data.vocab.idx_to_token == vocab.idx_to_token
    ref = torch.tensor([corpus[i : i + 33] for i in range(0, 200)])  # d2l's list comprehension
    assert torch.equal(data.X[:200], ref[:, :-1]) and torch.equal(data.Y[:200], ref[:, 1:])
    assert len(data.X) == len(corpus) - 32
    train, val = data.train_dataloader(), data.val_dataloader()
    assert len(train) == 10 and len(val) == 5
    X, Y = next(iter(val))
    assert torch.equal(X, data.X[10000:11024]) and torch.equal(Y, data.Y[10000:11024])
    rows = torch.cat([X for X, _ in train])
    assert rows.shape == (10000, 32)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, data.X[:10000].tolist()))


def test_save_hyperparameters_and_add_to_class():
    class Thing(d2l.HyperParameters):
        def __init__(self, a, b=2, _hidden=3):
            self.save_hyperparameters(ignore=["b"])

    thing = Thing(1)
    assert thing.a == 1 and not hasattr(thing, "b") and not hasattr(thing, "_hidden")

    @d2l.add_to_class(Thing)
    def double(self):
        return 2 * self.a

    assert thing.double() == 2


def test_scratch_model_shapes_and_sgd():
    rnn = d2l.RNNScratch(num_inputs=16, num_hiddens=32)
    outputs, state = rnn(torch.ones((100, 2, 16)))
    d2l.check_len(outputs, 100)
    d2l.check_shape(outputs[0], (2, 32))
    d2l.check_shape(state, (2, 32))
    model = d2l.RNNLMScratch(rnn, 16)
    d2l.check_shape(model(torch.ones((2, 100), dtype=torch.int64)), (2, 100, 16))
    w = torch.ones(3, requires_grad=True)
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    opt = d2l.SGD([w], lr=0.5)
    with torch.no_grad():
        opt.step()
    assert w.tolist() == [0.5, 0.0, -0.5]
    opt.zero_grad()
    assert w.grad.tolist() == [0.0, 0.0, 0.0]
