import pytest
import torch
import torch.nn.functional as F

from rnnkit.errors import RnnkitError
from rnnkit.generate import Sampling, generate, predict
from rnnkit.models import build_model
from rnnkit.text import Vocab


@pytest.fixture()
def lm():
    torch.manual_seed(0)
    vocab = Vocab(list("the time machine by h g wells"), unk_token=None)
    model = build_model("rnn", len(vocab), 16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # sharper distributions, so sampling and argmax differ visibly
    return model, vocab


def book_predict(model, vocab, prefix, num_preds):
    """d2l's predict loop, one token at a time."""
    state, outputs = None, [vocab[prefix[0]]]
    for i in range(len(prefix) + num_preds - 1):
        logits, state = model(torch.tensor([[outputs[-1]]]), state)
        if i < len(prefix) - 1:
            outputs.append(vocab[prefix[i + 1]])
        else:
            outputs.append(int(logits.argmax(-1).reshape(1)))
    return "".join(vocab.idx_to_token[i] for i in outputs)


def test_greedy_matches_book_loop_and_is_deterministic(lm):
    model, vocab = lm
    out = predict(model, vocab, "the ti", 30)
    assert out == book_predict(model, vocab, "the ti", 30) == predict(model, vocab, "the ti", 30)
    assert len(out) == 36


def test_sampling_reproducible_with_seed(lm):
    model, vocab = lm
    s = Sampling(temperature=1.0)
    a = predict(model, vocab, "the", 60, s, seed=7)
    assert a == predict(model, vocab, "the", 60, s, seed=7)
    assert a != predict(model, vocab, "the", 60, s, seed=8)
    assert a != predict(model, vocab, "the", 60)


def test_top_k_one_and_tiny_top_p_are_greedy(lm):
    model, vocab = lm
    greedy = predict(model, vocab, "the", 40)
    assert predict(model, vocab, "the", 40, Sampling(top_k=1), seed=3) == greedy
    assert predict(model, vocab, "the", 40, Sampling(top_p=1e-6), seed=3) == greedy


def test_probabilities_follow_p_to_the_alpha():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p = F.softmax(logits.double(), 0)
    q = Sampling(alpha=3.0).probabilities(logits)
    torch.testing.assert_close(q, p**3 / (p**3).sum())
    q_t = Sampling(temperature=2.0).probabilities(logits)
    torch.testing.assert_close(q_t, F.softmax(logits.double() / 2, 0))
    top2 = Sampling(top_k=2).probabilities(logits)
    torch.testing.assert_close(top2, torch.cat([p[:2] / p[:2].sum(), torch.zeros(2, dtype=torch.float64)]))
    nucleus = Sampling(top_p=0.8).probabilities(logits)  # p = .64 .24 .09 .03: first two reach 0.8
    assert (nucleus > 0).tolist() == [True, True, False, False]


def test_streaming_and_empty_prefix(lm):
    model, vocab = lm
    stream = generate(model, vocab, "", 5, Sampling(), seed=1)
    tokens = list(stream)
    assert len(tokens) == 5 and all(t in vocab for t in tokens)


def test_unknown_prefix_characters():
    raw_vocab = Vocab(list("abc "), unk_token=None)
    model = build_model("gru", len(raw_vocab), 4)
    with pytest.raises(RnnkitError, match="'X'"):
        predict(model, raw_vocab, "abX", 3)
    d2l_vocab = Vocab(list("abc "))
    model = build_model("gru", len(d2l_vocab), 4)
    with pytest.warns(UserWarning, match="'X'"):
        assert predict(model, d2l_vocab, "abX", 3).startswith("abX")


@pytest.mark.parametrize("bad", [Sampling(temperature=0), Sampling(top_p=0), Sampling(top_k=-1), Sampling(alpha=-1)])
def test_bad_sampling_settings(lm, bad):
    model, vocab = lm
    with pytest.raises(RnnkitError):
        predict(model, vocab, "t", 3, bad)


@pytest.mark.parametrize("kind", ["rnn", "scratch"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_lean_generation_step_follows_the_model(kind, activation):
    """The book's model generates through RNNLM.lean_step (a fifth of forward's time per token):
    the same states bit for bit, the same logits to float rounding, the same text."""
    from rnnkit.generate import Sampling, generate_ids, model_step
    from rnnkit.models import build_model

    torch.manual_seed(4)
    model = build_model(kind, 28, 32, activation=activation).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3 if activation == "tanh" else 1.5)  # away from the near-uniform start (ReLU: not to inf)
    lean, full = model.lean_step(), model_step(model, "cpu")
    assert lean is not None and build_model("lstm", 28, 32).eval().lean_step() is None
    with torch.no_grad():
        (lean_logits, lean_state), (logits, state) = lean([3, 5, 7, 9], None), full([3, 5, 7, 9], None)
        for token in (4, 0, 27):
            assert torch.equal(lean_state, state)
            torch.testing.assert_close(lean_logits, logits, rtol=1e-6, atol=1e-6)
            (lean_logits, lean_state), (logits, state) = lean([token], lean_state), full([token], state)
    for sampling, seed in ((Sampling(greedy=True), None), (Sampling(temperature=0.9, top_k=10), 3)):
        assert list(generate_ids(lean, [1, 2], 300, model.initial_logits(), sampling, seed)) == list(
            generate_ids(full, [1, 2], 300, model.initial_logits(), sampling, seed)
        )
