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


def test_linear_cross_entropy_under_bf16_autocast_runs_in_float32():
    """Under autocast the recurrent layers may hand over bf16 outputs: the head and its loss
    then run in the weight's precision (float32), on the upcast inputs."""
    from rnnkit.models import linear_cross_entropy

    torch.manual_seed(4)
    inputs = torch.randn(40, 8).bfloat16().requires_grad_()
    head = nn.Linear(8, 11)
    targets = torch.randint(0, 11, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(inputs, head.weight, head.bias, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and inputs.grad.dtype == torch.bfloat16
    ref = F.cross_entropy(head(inputs.detach().float()), targets, reduction="sum")
    torch.testing.assert_close(loss, ref)


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
    ref, _ = book_rnn_scratch_forward(
        F.one_hot(ids, V).float(), torch.zeros(B, H), scratch.W_xh, scratch.W_hh, scratch.b_h
    )
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


def test_fused_linear_cross_entropy_equals_autograd_reference():
    from rnnkit.models import linear_cross_entropy

    torch.manual_seed(3)
    inputs = torch.randn(50, 8, requires_grad=True)
    head = nn.Linear(8, 11)
    targets = torch.randint(0, 11, (50,))
    ref = F.cross_entropy(head(inputs), targets, reduction="sum")
    ref_grads = torch.autograd.grad(ref, [inputs, head.weight, head.bias])
    fused = linear_cross_entropy(inputs, head.weight, head.bias, targets)
    grads = torch.autograd.grad(fused * 0.5, [inputs, head.weight, head.bias])
    torch.testing.assert_close(fused, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, 0.5 * r)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_recurrence_gradients_equal_autograd_of_the_book_loop(activation):
    torch.manual_seed(4)
    V, H, T, B = 9, 6, 7, 5
    scratch = RNNScratch(V, H, sigma=0.5, activation=activation)
    ids = torch.randint(0, V, (T, B))
    h0 = torch.randn(B, H, requires_grad=True)
    weights = torch.randn(T, B, H)
    out, _ = scratch(ids, h0)
    grads = torch.autograd.grad((out * weights).sum(), [scratch.W_xh, scratch.W_hh, scratch.b_h, h0])
    phi = torch.tanh if activation == "tanh" else torch.relu
    state, ref_out = h0, []
    for x in F.one_hot(ids, V).float():
        state = phi(x @ scratch.W_xh + state @ scratch.W_hh + scratch.b_h)
        ref_out.append(state)
    ref_out = torch.stack(ref_out)
    ref_grads = torch.autograd.grad((ref_out * weights).sum(), [scratch.W_xh, scratch.W_hh, scratch.b_h, h0])
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_fast_concise_rnn_path_equals_nn_rnn():
    torch.manual_seed(5)
    layer = Recurrent("rnn", 10, 7)
    ids = torch.randint(0, 10, (6, 4))
    h0 = torch.randn(1, 4, 7)
    out, h = layer(ids, h0)
    grads = torch.autograd.grad(out.square().sum() + h.sum(), list(layer.parameters()))
    ref_out, ref_h = layer.rnn(F.one_hot(ids, 10).float(), h0)
    ref_grads = torch.autograd.grad(ref_out.square().sum() + ref_h.sum(), list(layer.parameters()))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize(
    "kind, activation", [("scratch", "tanh"), ("scratch", "relu"), ("rnn", "tanh"), ("rnn", "relu")]
)
def test_book_model_loss_equals_autograd_reference(kind, activation, assert_as_accurate):
    """Against the book's loop with one-hot matmuls and plain autograd, in float32 and in float64:
    large weights (x20) saturate the units, so rnnkit's float32 results are held to being as
    accurate as the float32 reference (the kernel's tanh and softmax are its own, within 2 ulp)."""
    torch.manual_seed(6)
    V, H, B, T = 11, 7, 5, 9
    model = build_model(kind, V, H, activation=activation)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # away from the tiny-init regime, so that every term matters
    X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    h0 = torch.randn(B, H, requires_grad=True)
    state = h0 if kind == "scratch" else h0.unsqueeze(0)
    loss, last = model.loss(X, Y, state, reduction="sum")
    grads = torch.autograd.grad(loss, [*model.parameters(), h0])

    def book_loop(dtype):
        if kind == "scratch":
            W_xh, W_hh, b = model.rnn.W_xh, model.rnn.W_hh, model.rnn.b_h
        else:
            r = model.rnn.rnn
            W_xh, W_hh, b = r.weight_ih_l0.T, r.weight_hh_l0.T, r.bias_ih_l0 + r.bias_hh_l0
        W_xh, W_hh, b, Wq, bq = (t.to(dtype) for t in (W_xh, W_hh, b, model.head.weight, model.head.bias))
        phi = torch.tanh if activation == "tanh" else torch.relu
        h, outs = h0.to(dtype), []
        for x in F.one_hot(X.T, V).to(dtype):
            h = phi(x @ W_xh + h @ W_hh + b)
            outs.append(h)
        logits = torch.stack(outs) @ Wq.T + bq
        ref = F.cross_entropy(logits.reshape(-1, V), Y.T.reshape(-1), reduction="sum")
        return ref, h, torch.autograd.grad(ref, [*model.parameters(), h0])

    ref, ref_last, ref_grads = book_loop(torch.float32)
    exact, exact_last, exact_grads = book_loop(torch.float64)
    torch.testing.assert_close(loss, ref)
    assert_as_accurate(loss, ref, exact, "loss")
    assert_as_accurate(last.reshape(B, H), ref_last, exact_last, "final state")
    for g, r, e in zip(grads, ref_grads, exact_grads, strict=True):
        assert_as_accurate(g, r, e, "gradient")
