import math

import numpy as np
import pytest
import torch

from rnnkit.data import split_corpus
from rnnkit.errors import RnnkitError
from rnnkit.models import build_model
from rnnkit.train import CapturedGradients, TrainConfig, Trainer, clip_gradients, select_device, stream_nll, window_nll


def test_clip_gradients_bounds_global_norm_and_keeps_direction():
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    params[0].grad = torch.full((3, 4), 2.0)
    params[1].grad = torch.arange(5.0)
    before = torch.cat([p.grad.flatten() for p in params])
    norm = clip_gradients(params, 1.0)
    after = torch.cat([p.grad.flatten() for p in params])
    assert math.isclose(norm.item(), before.norm().item(), rel_tol=1e-6)
    assert after.norm().item() <= 1.0 + 1e-6 and math.isclose(after.norm().item(), 1.0, rel_tol=1e-5)
    torch.testing.assert_close(after, before / before.norm())
    clip_gradients(params, 10.0)  # below theta: unchanged
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]), after)


def independent_nll(model, tokens):
    """Token-by-token, float64 numpy log-softmax: the definition of per-token cross-entropy."""
    logits, _ = model(tokens[:-1].unsqueeze(0))
    z = logits[:, 0].double().detach().numpy()
    logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    targets = tokens[1:].numpy()
    return -logp[np.arange(len(targets)), targets].sum(), len(targets)


def test_stream_perplexity_matches_independent_computation():
    torch.manual_seed(1)
    model = build_model("lstm", vocab_size=9, hidden=6).eval()
    tokens = torch.randint(0, 9, (301,))
    nll, count = stream_nll(model, tokens, chunk=37)  # state carried across 9 chunks
    ref_nll, ref_count = independent_nll(model, tokens)
    assert count == ref_count == 300
    assert math.isclose(nll, ref_nll, rel_tol=1e-6)


def test_window_perplexity_is_mean_over_every_window_token():
    torch.manual_seed(2)
    model = build_model("rnn", vocab_size=7, hidden=5).eval()
    corpus = torch.randint(0, 7, (200,))
    data = split_corpus(corpus, "d2l", 16, 10, num_train=50, num_val=40)
    nll, count = window_nll(model, data.val_windows)
    ref = sum(independent_nll(model, corpus[s : s + 11])[0] for s in range(50, 90))
    assert count == 40 * 10 and math.isclose(nll, ref, rel_tol=1e-6)


def test_short_training_run_lowers_loss(tm_text):
    config = TrainConfig(
        hidden=16, batch_size=128, num_steps=16, epochs=6, num_train=1024, num_val=256, lr=2.0, device="cpu"
    )
    history = Trainer(config, text=tm_text).fit()
    assert len(history) == 6
    assert history[-1].train_loss < history[0].train_loss - 0.2
    assert history[-1].val_ppl < history[0].val_ppl
    assert all(b.seconds > a.seconds for a, b in zip(history, history[1:], strict=False))


def test_sequential_training_carries_state(tm_text):
    config = TrainConfig(
        model="gru", split="sequential", hidden=16, batch_size=8, num_steps=20, epochs=2, lr=1.0, device="cpu"
    )
    trainer = Trainer(config, text=tm_text[:20000])
    history = trainer.fit()
    assert history[-1].train_loss < history[0].train_loss
    assert math.isfinite(history[-1].val_ppl) and math.isfinite(history[-1].val_bpc)


def test_training_is_deterministic(tm_text):
    config = TrainConfig(hidden=8, batch_size=64, num_steps=8, epochs=2, num_train=256, num_val=64, device="cpu")
    a = Trainer(config, text=tm_text).fit()
    b = Trainer(config, text=tm_text).fit()
    assert [s.train_loss for s in a] == [s.train_loss for s in b]


def test_cuda_graphs_option_is_refused_where_it_cannot_work():
    with pytest.raises(RnnkitError, match="sequential"):
        TrainConfig(cuda_graphs="on", split="sequential").validate()
    with pytest.raises(RnnkitError, match="dropout"):
        TrainConfig(cuda_graphs="on", model="lstm", layers=2, dropout=0.2).validate()
    with pytest.raises(RnnkitError, match="auto, on, off"):
        TrainConfig(cuda_graphs="yes").validate()
    assert not TrainConfig(split="sequential").graphs_possible() and TrainConfig().graphs_possible()
    small = dict(hidden=8, batch_size=64, num_steps=8, epochs=1, num_train=128, num_val=32, device="cpu")
    assert Trainer(TrainConfig(**small)).step_fn.name == "eager"  # auto: graphs only on a CUDA device
    with pytest.raises(RnnkitError, match="CUDA device"):
        Trainer(TrainConfig(cuda_graphs="on", **small))


def test_captured_gradients_fill_fixed_tensors_with_the_eager_gradients():
    """A CUDA graph replays kernels on fixed memory: the gradient computation it captures must
    write every step's clipped gradients into the same .grad tensors (checked here on the CPU
    by running that computation uncaptured) and equal the usual zero_grad/backward/clip step."""
    torch.manual_seed(0)
    model = build_model("rnn", 11, 8)
    eager = build_model("rnn", 11, 8)
    eager.load_state_dict(model.state_dict())
    captured = CapturedGradients(model, clip=0.5)
    pointers = [p.grad.data_ptr() for p in model.parameters()]
    for _ in range(3):
        X, Y = torch.randint(0, 11, (2, 4, 6))
        loss = captured._gradients(X, Y)
        eager.zero_grad(set_to_none=True)
        eager_loss, _ = eager.loss(X, Y)
        eager_loss.backward()
        clip_gradients(eager.parameters(), 0.5)
        assert [p.grad.data_ptr() for p in model.parameters()] == pointers
        torch.testing.assert_close(loss, eager_loss.detach())
        for p, q in zip(model.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RnnkitError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(RnnkitError, match="unknown device"):
        select_device("tpu9")


@pytest.mark.parametrize("kind,layers", [("lstm", 2), ("gru", 1), ("rnn", 1), ("scratch", 1)])
def test_stream_in_lanes_predicts_every_token_once_from_the_text_before_it(kind, layers):
    torch.manual_seed(3)
    model = build_model(kind, vocab_size=11, hidden=8, layers=layers).eval()
    tokens = torch.randint(0, 11, (1003,))
    one_nll, one_count = stream_nll(model, tokens, chunk=64)
    # a warm-up covering the text: each lane reads everything before its part, so the sum is the one-lane sum
    nll, count = stream_nll(model, tokens, chunk=64, lanes=7, warmup=10**6)
    assert count == one_count == 1002 and math.isclose(nll, one_nll, rel_tol=1e-5)
    # a short warm-up: still every token once (the count), the loss within what 20 tokens of context change
    nll, count = stream_nll(model, tokens, chunk=64, lanes=7, warmup=20)
    assert count == 1002 and math.isclose(nll, one_nll, rel_tol=1e-3)
    assert stream_nll(model, tokens[:5], lanes=32) == pytest.approx(stream_nll(model, tokens[:5]))  # fewer than lanes
