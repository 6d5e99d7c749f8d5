"""Every execution path of RNNLM against the reference (rnnkit.models.reference).

A fast path and the reference get the same model, tokens, initial state and seed (hence the same
dropout masks); their loss (or logits), final state and the gradient of every parameter and of the
initial state must agree. The objective adds a fixed weighting of the final state, so that the
gradients flowing back through the state are compared too. In float64 the tolerances are tight
enough that a dropped term, a wrong mask or a transposed weight shows; the kernel runs float32 only.
"""

import pytest
import torch
from torch import nn

import rnnkit.kernels as kernels
from rnnkit.errors import RnnkitError
from rnnkit.models import (
    KERNEL,
    LEAN_STEP,
    MODULE,
    RECURRENCE,
    REFERENCE,
    RNNLM,
    TORCH,
    RNNScratch,
    build_model,
    choose_path,
    describe_training_path,
    layer_states,
    reference_forward,
    reference_loss,
)
from rnnkit.models.reference import gru_step, lstm_step, rnn_step

V, H, B, T = 9, 6, 3, 5
F64 = {"rtol": 1e-10, "atol": 1e-12}
F32 = {"rtol": 2e-5, "atol": 2e-6}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make(kind, dtype=torch.float64, device="cpu", scale=2.0, seed=0, **options):
    """A model whose weights are scaled up from their (small) initial ones, so that every term matters."""
    torch.manual_seed(seed)
    model = build_model(kind, V, H, **options).to(device, dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30 * scale if kind == "scratch" and p.dim() == 2 else scale)  # scratch: N(0, 0.01^2) weights
    return model


def initial_state(model, device="cpu"):
    """A random initial state in the model's format, and its tensors (leaves: their gradients count)."""
    g = torch.Generator().manual_seed(1)
    dtype = model.head.weight.dtype
    shape = (B, H) if isinstance(model.rnn, RNNScratch) else (model.rnn.rnn.num_layers, B, H)
    leaves = [
        (torch.randn(shape, generator=g, dtype=dtype) * 0.5).to(device).requires_grad_()
        for _ in range(2 if getattr(model.rnn, "kind", "") == "lstm" else 1)
    ]
    return (tuple(leaves) if len(leaves) == 2 else leaves[0]), leaves


def weighted(tensors, seed):
    """A fixed random weighting <w, t> summed over ``tensors``."""
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)).sum() for t in tensors)


def outcome(run, model, X, Y, state, leaves):
    """(value, final state, gradients of value + <w, final state> for every parameter and leaf)."""
    torch.manual_seed(7)  # the same dropout masks for both paths
    value, last = run(model, X, Y, state)
    parts = last if isinstance(last, tuple) else (last,)
    grads = torch.autograd.grad(value + weighted(parts, 2), [*model.parameters(), *leaves], allow_unused=True)
    return value, parts, grads


def fast_loss(model, X, Y, state):
    return model.loss(X, Y, state, reduction="sum")


def fast_forward(model, X, Y, state):
    logits, last = model(X, state)
    return weighted([logits], 3), last


def ref_forward(model, X, Y, state):
    logits, last = reference_forward(model, X, state)
    return weighted([logits], 3), last


def ref_loss(model, X, Y, state):
    return reference_loss(model, X, Y, state, reduction="sum")


def assert_parity(model, path, tolerance, device="cpu", through_state=True):
    """The path ``path`` is chosen for this model's loss (or, where the loss takes the kernel, for its
    forward) and agrees with the reference: loss and logits, final state, every gradient."""
    X, Y = torch.randint(0, V, (2, B, T), generator=torch.Generator().manual_seed(3)).to(device)
    names = [n for n, _ in model.named_parameters()] + ["h0", "c0"]
    for purpose, fast, ref in (("loss", fast_loss, ref_loss), ("forward", fast_forward, ref_forward)):
        chosen = choose_path(model, X, purpose=purpose)
        if purpose == "loss" or path != KERNEL:
            assert chosen.name == path, (purpose, str(chosen))
        state, leaves = initial_state(model, device) if through_state else (None, [])
        value, last, grads = outcome(fast, model, X, Y, state, leaves)
        ref_value, ref_last, ref_grads = outcome(ref, model, X, Y, state, leaves)
        torch.testing.assert_close(value, ref_value, **tolerance, msg=f"{purpose}: {chosen}")
        for s, r in zip(last, ref_last, strict=True):
            torch.testing.assert_close(s, r, **tolerance, msg=f"{purpose} final state: {chosen}")
        for name, g, r in zip(names, grads, ref_grads, strict=False):
            assert (g is None) == (r is None), name
            if g is not None:
                torch.testing.assert_close(g, r, **tolerance, msg=f"{purpose} gradient of {name}: {chosen}")


@pytest.fixture(scope="module")
def kernel():
    return kernels.rnn_lm_kernel()


@pytest.mark.parametrize("through_state", [False, True])
@pytest.mark.parametrize(
    "kind, activation", [("rnn", "tanh"), ("rnn", "relu"), ("scratch", "tanh"), ("scratch", "relu")]
)
def test_fused_kernel_path_equals_the_reference(kernel, kind, activation, through_state):
    """float32 both; without a carried state the gradients are the kernel's own, with one they are
    recomputed (see fused.py)."""
    if kernel is None:
        pytest.skip(f"no kernel here: {kernels.unavailable_reason()}")
    model = make(kind, torch.float32, activation=activation)
    assert_parity(model, KERNEL, F32, through_state=through_state)
    model.eval()
    assert_parity(model, KERNEL, F32, through_state=through_state)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind, options",
    [
        ("scratch", {}),
        ("scratch", {"activation": "relu"}),
        ("scratch", {"embedding": 4}),
        ("scratch", {"embedding": 4, "io_dropout": 0.3}),
        ("rnn", {}),
        ("rnn", {"activation": "relu"}),
        ("rnn", {"io_dropout": 0.3}),
        ("rnn", {"weight_drop": 0.5}),
        ("rnn", {"weight_drop": 0.5, "io_dropout": 0.2, "activation": "relu"}),
    ],
)
def test_recurrence_path_equals_the_reference(kind, options, device):
    """float64 (the kernel declines it); dropout in training, one mask per call for DropConnect."""
    model = make(kind, device=device, **options)
    if device != "cpu" and kind == "rnn":
        pytest.skip("a one-layer nn.RNN runs rnnkit's recurrence on the CPU only")
    if device != "cpu" and (options.get("io_dropout") or options.get("weight_drop")):
        pytest.skip("dropout masks are compared on the CPU")
    for training in (True, False):
        model.train(training)
        assert_parity(model, RECURRENCE, F64, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kind, options",
    [
        ("rnn", {"layers": 2}),
        ("rnn", {"layers": 2, "activation": "relu"}),
        ("rnn", {"embedding": 4}),
        ("gru", {}),
        ("gru", {"layers": 2, "embedding": 4}),
        ("lstm", {}),
        ("lstm", {"layers": 3}),
        ("rnn", {"layers": 2, "dropout": 0.3, "io_dropout": 0.2, "weight_drop": 0.4, "embedding": 4}),
        ("gru", {"layers": 2, "dropout": 0.3, "weight_drop": 0.5}),
        ("lstm", {"layers": 2, "dropout": 0.3, "io_dropout": 0.2, "weight_drop": 0.4, "embedding": 4}),
    ],
)
def test_torch_layer_path_equals_the_reference(kind, options, device):
    """nn.RNN/GRU/LSTM in float64 (ATen on the CPU, cuDNN where CUDA is); in training the masks of
    io dropout, DropConnect and dropout between layers are drawn in the reference's order."""
    if device != "cpu" and any(options.get(k) for k in ("dropout", "io_dropout", "weight_drop")):
        pytest.skip("cuDNN draws its own dropout masks: compared on the CPU")
    model = make(kind, device=device, **options)
    for training in (True, False):
        model.train(training)
        assert_parity(model, TORCH, F64, device)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_torch_layer_path_in_float32_equals_the_reference(kind):
    """float32 on the CPU (oneDNN's LSTM): the same numbers within float32's rounding."""
    assert_parity(make(kind, torch.float32, layers=2), TORCH, F32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind, activation", [("rnn", "tanh"), ("rnn", "relu"), ("scratch", "tanh")])
def test_lean_step_equals_the_reference(kind, activation, dtype):
    """Generation's step (no gradients): logits of the last token and the state, over a prefix
    and then one token at a time."""
    model = make(kind, dtype, activation=activation).eval()
    assert choose_path(model, purpose="step").name == LEAN_STEP
    step = model.lean_step()
    ids = [1, 4, 0, 8, 2]
    tolerance = F64 if dtype == torch.float64 else F32
    with torch.inference_mode():
        logits, state = step(ids[:3], None)
        for i in range(3, len(ids) + 1):
            ref_logits, ref_state = reference_forward(model, torch.tensor([ids[:i]]))
            torch.testing.assert_close(logits, ref_logits[-1, 0], **tolerance)
            torch.testing.assert_close(state, ref_state, **tolerance)
            if i < len(ids):
                logits, state = step(ids[i : i + 1], state)


def test_lean_step_is_chosen_for_the_book_model_in_evaluation_on_the_cpu_only():
    assert make("rnn").lean_step() is None  # training
    for model in (make("lstm"), make("rnn", layers=2), make("rnn", embedding=4)):
        path = choose_path(model.eval(), purpose="step")
        assert path.name == TORCH and "no lean step" in path.reason and model.lean_step() is None


@pytest.mark.parametrize(
    "kind, options",
    [
        ("scratch", {}),
        ("scratch", {"embedding": 4}),
        ("rnn", {}),
        ("rnn", {"layers": 2, "dropout": 0.5}),
        ("gru", {"layers": 2}),
        ("lstm", {"layers": 2, "embedding": 4}),
    ],
)
def test_layer_states_are_the_layers_of_the_model_in_evaluation(kind, options):
    """Introspection reads the reference's per-layer states; its last layer is what the model's own
    path computes in evaluation (the scratch model with an embedding included)."""
    model = make(kind, **options)
    ids = torch.tensor([3, 1, 4, 1, 5, 8, 2])
    layers = layer_states(model, ids)
    assert len(layers) == options.get("layers", 1) and model.training
    assert all((c is not None) == (kind == "lstm") and h.shape == (len(ids), H) for h, c in layers)
    with torch.no_grad():
        outputs, state = model.eval().hidden(ids.view(1, -1))
    torch.testing.assert_close(layers[-1][0], outputs[:, 0], **F64)
    assert choose_path(model, purpose="layers").name == REFERENCE


def test_reference_cells_are_pytorchs_cells_bit_for_bit():
    """The reference's steps compute exactly what torch's cell functions do (layer_states' numbers
    are the ones PyTorch's cells give)."""
    g = torch.Generator().manual_seed(0)
    x, h, c = (torch.randn(2, n, generator=g) for n in (5, 4, 4))
    for gates, step, cell in (
        (1, rnn_step, torch.rnn_tanh_cell),
        (3, gru_step, torch.gru_cell),
        (4, lstm_step, torch.lstm_cell),
    ):
        W_ih, W_hh = torch.randn(gates * 4, 5, generator=g), torch.randn(gates * 4, 4, generator=g)
        b_ih, b_hh = torch.randn(gates * 4, generator=g), torch.randn(gates * 4, generator=g)
        if gates == 4:
            assert all(map(torch.equal, step(x, h, c, W_ih, W_hh, b_ih, b_hh), cell(x, (h, c), W_ih, W_hh, b_ih, b_hh)))
        elif gates == 3:
            assert torch.equal(step(x, h, W_ih, W_hh, b_ih, b_hh), cell(x, h, W_ih, W_hh, b_ih, b_hh))
        else:
            assert torch.equal(step(x, h, W_ih, W_hh, b_ih, b_hh, torch.tanh), cell(x, h, W_ih, W_hh, b_ih, b_hh))


def test_choose_path_names_the_path_and_why(kernel, monkeypatch):
    X = torch.zeros(2, 3, dtype=torch.int64)
    book = make("rnn", torch.float32)
    if kernel is not None:
        assert str(choose_path(book, X)) == (
            "fused CPU kernel: one-layer rnn (tanh), one-hot input, float32 on the CPU, no dropout"
        )
    cases = [  # (model, expected path, words its reason must contain)
        (make("rnn"), RECURRENCE, "not the fused kernel: weights not float32"),
        (make("rnn", torch.float32, io_dropout=0.2), RECURRENCE, "not the fused kernel: io dropout in training"),
        (make("rnn", torch.float32, weight_drop=0.2), RECURRENCE, "weight drop on W_hh"),
        (make("rnn", torch.float32, embedding=4), TORCH, "not the fused kernel: a learned embedding"),
        (
            make("lstm", torch.float32, layers=2, weight_drop=0.3),
            TORCH,
            "2-layer lstm, one-hot input, on cpu, weight drop needs torch.func.functional_call",
        ),
        (make("scratch", embedding=4), RECURRENCE, "scratch model (tanh), embedding input"),
    ]
    for model, name, words in cases:
        path = choose_path(model, X)
        assert path.name == name and words in path.reason, str(path)
    assert choose_path(make("gru"), X).label == "nn.GRU (ATen)"
    assert choose_path(make("gru"), device="cuda").label == "nn.GRU (cuDNN)"  # describing needs no GPU
    assert "not on the CPU" in choose_path(book, device="cuda").reason
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "CPU autocast" in choose_path(book, X).reason
    monkeypatch.setenv("RNNKIT_REFERENCE", "1")
    path = choose_path(book, X)
    assert path.name == REFERENCE and str(path) == "reference (plain PyTorch): RNNKIT_REFERENCE is set"
    Y = torch.ones_like(X)
    assert torch.equal(book.loss(X, Y)[0], reference_loss(book, X, Y)[0]) and book.lean_step() is None
    with pytest.raises(ValueError, match="purpose"):
        choose_path(book, X, purpose="train")


def test_describe_training_path_is_one_line_with_evaluation_where_it_differs(kernel):
    described = describe_training_path(make("lstm", torch.float32, layers=2))
    assert described == "nn.LSTM (ATen): 2-layer lstm, one-hot input, on cpu"
    described = describe_training_path(make("rnn", torch.float32, io_dropout=0.3))
    train, evaluation = described.split("; evaluation: ")
    assert train.startswith("rnnkit recurrence") and "io dropout in training" in train
    assert evaluation.startswith("fused CPU kernel" if kernel is not None else "rnnkit recurrence")
    assert "\n" not in described and "cuDNN" in describe_training_path(make("lstm"), "cuda")


def test_a_recurrent_layer_of_ones_own_runs_its_forward():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_hiddens, self.gru = H, nn.GRU(V, H)

        def forward(self, inputs, state=None):
            return self.gru(nn.functional.one_hot(inputs, V).float(), state)

    model = RNNLM(Wrapped(), V)
    X = torch.randint(0, V, (B, T))
    assert choose_path(model, X).name == MODULE and str(choose_path(model, X)).startswith("Wrapped.forward")
    logits, state = model(X)
    assert logits.shape == (T, B, V) and state.shape == (1, B, H)


def test_dropout_settings_are_constructor_arguments():
    model = build_model("lstm", V, H, layers=2, io_dropout=0.25, weight_drop=0.5)
    assert (model.io_dropout, model.weight_drop) == (0.25, 0.5)
    assert (build_model("rnn", V, H).io_dropout, build_model("rnn", V, H).weight_drop) == (0.0, 0.0)
    model.io_dropout = 0.1  # still settable, and checked
    assert model.io_dropout == 0.1
    with pytest.raises(RnnkitError, match="io_dropout must be in"):
        model.io_dropout = 1.0
    with pytest.raises(RnnkitError, match="weight_drop must be in"):
        build_model("gru", V, H, weight_drop=-0.1)
    with pytest.raises(RnnkitError, match="not scratch"):
        build_model("scratch", V, H, weight_drop=0.2)
    assert build_model("scratch", V, H, io_dropout=0.2).io_dropout == 0.2
