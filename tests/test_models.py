import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.models import RNNLM, Recurrent, RNNScratch, build_model


def book_rnn_scratch_forward(inputs, state, W_xh, W_hh, b_h):
    """d2l §9.5's forward, verbatim in spirit: a Python loop over one-hot matmuls."""
    outputs = []
    for X in inputs:
        state = torch.tanh(X @ W_xh + state @ W_hh + b_h)
        outputs.append(state)
    return torch.stack(outputs), state


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_rnn_scratch_equals_nn_rnn_with_same_weights(activation):
    V, H, T, B = 11, 7, 5, 3
    ref = nn.RNN(V, H, nonlinearity=activation)
    scratch = RNNScratch(V, H, activation=activation)
    with torch.no_grad():
        scratch.W_xh.copy_(ref.weight_ih_l0.T)
        scratch.W_hh.copy_(ref.weight_hh_l0.T)
        scratch.b_h.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
    x = torch.randn(T, B, V)
    h0 = torch.randn(B, H)
    out_ref, h_ref = ref(x, h0.unsqueeze(0))
    out, h = scratch(x, h0)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref[0], rtol=1e-5, atol=1e-6)


def test_one_hot_lookup_equals_one_hot_matmul_values_and_gradients():
    V, H, T, B = 13, 6, 9, 4
    scratch = RNNScratch(V, H, sigma=0.3)
    ids = torch.randint(0, V, (T, B))
    out_lookup, _ = scratch(ids)
    out_lookup.square().sum().backward()
    grads_lookup = [p.grad.clone() for p in scratch.parameters()]
    scratch.zero_grad()
    out_matmul, _ = scratch(F.one_hot(ids, V).float())
    out_matmul.square().sum().backward()
    torch.testing.assert_close(out_lookup, out_matmul)
    for g, p in zip(grads_lookup, scratch.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    ref, _ = book_rnn_scratch_forward(F.one_hot(ids, V).float(), torch.zeros(B, H), scratch.W_xh, scratch.W_hh,
                                      scratch.b_h)
    torch.testing.assert_close(out_lookup, ref)


def test_rnn_scratch_accepts_d2l_tuple_state():
    scratch = RNNScratch(5, 4)
    ids = torch.randint(0, 5, (3, 2))
    h0 = torch.randn(2, 4)
    assert torch.equal(scratch(ids, (h0,))[0], scratch(ids, h0)[0])


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_concise_layers_one_hot_input(kind):
    V, H = 10, 8
    layer = Recurrent(kind, V, H, num_layers=2)
    ids = torch.randint(0, V, (6, 3))
    out, state = layer(ids)
    out_ref, _ = layer.rnn(F.one_hot(ids, V).float())
    assert out.shape == (6, 3, H)
    torch.testing.assert_close(out, out_ref)


@pytest.mark.parametrize("kind, embedding", [("rnn", 0), ("scratch", 0), ("gru", 5), ("lstm", 0)])
def test_language_model_shapes_and_state_carry(kind, embedding):
    model = build_model(kind, vocab_size=12, hidden=9, embedding=embedding)
    X = torch.randint(0, 12, (4, 10))
    logits, state = model(X)
    assert logits.shape == (10, 4, 12)
    # running the two halves with the state carried over equals one pass
    first, s = model(X[:, :6])
    second, _ = model(X[:, 6:], s)
    torch.testing.assert_close(torch.cat([first, second]), logits)


def test_scratch_lm_output_layer_init_as_d2l():
    model = build_model("scratch", vocab_size=28, hidden=32)
    assert isinstance(model, RNNLM) and torch.count_nonzero(model.head.bias) == 0
    assert 0.005 < model.head.weight.std().item() < 0.015
