"""rnnkit's compiled CPU kernel for the book's model (rnnkit.kernels) against the PyTorch path."""

import copy
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnkit.kernels as kernels
from rnnkit.models import KERNEL, build_model, choose_path, linear_cross_entropy


@pytest.fixture(scope="module")
def kernel():
    """The kernel; where it cannot be built the reason must be a missing C++ compiler."""
    module = kernels.rnn_lm_kernel()
    if module is None:
        assert shutil.which("c++") is None and shutil.which("g++") is None, "a compiler is here but no kernel"
    return module


def pytorch_path_loss(model, X, Y, state):
    """The same loss through the layer's forward and the fused output layer (no kernel)."""
    outputs, last = model.hidden(X, state)
    return linear_cross_entropy(
        outputs.reshape(-1, outputs.shape[-1]), model.head.weight, model.head.bias, Y.T.reshape(-1)
    ), last


@pytest.mark.parametrize("kind", ["rnn", "scratch"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("batch", [3, 301])  # one chunk; two uneven chunks (with 2 threads)
def test_kernel_loss_gradients_and_state_are_as_accurate_as_the_pytorch_path(
    kernel, kind, activation, batch, assert_as_accurate
):
    """Large weights (x10) saturate the units and make the recurrence chaotic: a last-bit
    difference in one step grows over the sequence (here to 4e-4 in the final state of the float32
    PyTorch path itself). So both float32 paths are held against the same math in float64: the
    kernel's loss, state and every gradient must be as close to it as the PyTorch path's are (within
    a factor of 2, plus float32's usual tolerance). (Compared with each other directly, the two float32
    paths' gradients differ by up to 3e-2 in this regime, each as far from the float64 ones.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(1)
        model = build_model(kind, 13, 16, activation=activation)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(10)
        X, Y = torch.randint(0, 13, (2, batch, 11))
        h0 = (torch.randn(batch, 16) * 0.5).requires_grad_()
        state = h0 if kind == "scratch" else h0.unsqueeze(0)
        assert (choose_path(model, X).name == KERNEL) == (kernel is not None)
        loss, last = model.loss(X, Y, state, reduction="sum")
        grads = torch.autograd.grad(loss * 0.5, [*model.parameters(), h0])
        ref, ref_last = pytorch_path_loss(model, X, Y, state)
        ref_grads = torch.autograd.grad(ref * 0.5, [*model.parameters(), h0])
        exact = copy.deepcopy(model).double()
        h0_exact = h0.detach().double().requires_grad_()
        exact_loss, exact_last = pytorch_path_loss(exact, X, Y, h0_exact if kind == "scratch" else h0_exact[None])
        exact_grads = torch.autograd.grad(exact_loss * 0.5, [*exact.parameters(), h0_exact])

        as_accurate = assert_as_accurate
        as_accurate(loss, ref, exact_loss, "loss")
        as_accurate(last, ref_last, exact_last, "final state")
        for name, g, r, e in zip(
            [n for n, _ in model.named_parameters()] + ["h0"], grads, ref_grads, exact_grads, strict=True
        ):
            as_accurate(g, r, e, name)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-3)
        with torch.inference_mode():  # evaluation: the forward pass only, same numbers
            eval_loss, _ = model.loss(X, Y, state.detach(), reduction="sum")
        torch.testing.assert_close(eval_loss, loss.detach(), rtol=1e-6, atol=1e-4)
        again, _ = model.loss(X, Y, state, reduction="sum")
        assert torch.equal(again, loss)  # deterministic
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["rnn", "scratch"])
def test_gradient_through_a_carried_state_equals_autograd(kernel, kind):
    """Two calls, the second starting from the first's final state, one backward through both: the
    kernel path must give the gradients of the same math done with autograd (the final state of a
    kernel call once had no gradient path, and W_hh's gradient came out wrong)."""
    torch.manual_seed(3)
    model = build_model(kind, 11, 12)
    X1, Y1, X2, Y2 = torch.randint(0, 11, (4, 5, 9))
    l1, s = model.loss(X1, Y1)
    l2, _ = model.loss(X2, Y2, s)
    grads = torch.autograd.grad(l1 + l2, list(model.parameters()))
    r1, rs = pytorch_path_loss(model, X1, Y1, None)
    r2, _ = pytorch_path_loss(model, X2, Y2, rs)
    ref = torch.autograd.grad((r1 + r2) / Y1.numel(), list(model.parameters()))
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    # and where the state is not used further, the gradients are the kernel's own, as before
    one = torch.autograd.grad(model.loss(X1, Y1)[0], list(model.parameters()))
    ref_one = torch.autograd.grad(pytorch_path_loss(model, X1, Y1, None)[0] / Y1.numel(), list(model.parameters()))
    for g, r in zip(one, ref_one, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_kernel_applies_to_the_book_model_only(kernel):
    if kernel is None:
        pytest.skip("no kernel here (no C++ compiler): every model runs as PyTorch operations")
    X = torch.zeros(4, 5, dtype=torch.int64)
    assert choose_path(build_model("rnn", 7, 8), X).name == KERNEL
    assert choose_path(build_model("scratch", 7, 8), X).name == KERNEL
    for model in (
        build_model("lstm", 7, 8),
        build_model("gru", 7, 8),
        build_model("rnn", 7, 8, layers=2),
        build_model("rnn", 7, 8, embedding=4),
    ):
        assert choose_path(model, X).name != KERNEL
    book = build_model("rnn", 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert choose_path(book, X).name != KERNEL
    assert choose_path(book, X.float()).name != KERNEL
    assert choose_path(book.double(), X).name != KERNEL
    book = build_model("rnn", 7, 8, io_dropout=0.1)
    assert choose_path(book, X).name != KERNEL and choose_path(book.eval(), X).name == KERNEL  # dropout: training only
    assert book.prepare_kernel()


def test_kernel_refuses_ids_out_of_range(kernel):
    if kernel is None:
        pytest.skip("no kernel here (no C++ compiler): the PyTorch path's own index errors apply")
    model = build_model("rnn", 7, 8)
    X = torch.full((2, 3), 7)
    with pytest.raises(RuntimeError, match="outside"):
        model.loss(X, torch.zeros_like(X))
    with pytest.raises(RuntimeError, match="outside"):
        model.loss(torch.zeros_like(X), X)


def test_without_a_kernel_rnnkit_says_so_and_uses_pytorch(monkeypatch, tmp_path, capsys):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_kernel", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with pytest.warns(RuntimeWarning, match="CPU kernel not built"):
        assert kernels.rnn_lm_kernel() is None
    said = capsys.readouterr().err
    assert "compiling its CPU kernel" in said and "no build yet" in said  # every build says so, and why
    torch.manual_seed(0)
    model = build_model("rnn", 7, 8)
    X, Y = torch.randint(0, 7, (2, 4, 5))
    path = choose_path(model, X)
    assert path.name != KERNEL and "the kernel is not built (" in path.reason and not model.prepare_kernel()
    loss, _ = model.loss(X, Y, reduction="sum")
    ref, _ = pytorch_path_loss(model, X, Y, None)
    torch.testing.assert_close(loss, ref)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setenv("RNNKIT_NO_KERNEL", "1")
    assert kernels.rnn_lm_kernel() is None  # switched off: no build, no warning
    assert "the kernel is switched off (RNNKIT_NO_KERNEL)" in choose_path(model, X).reason


def test_kernel_gradients_repeat_bit_for_bit_across_processes(kernel, tmp_path):
    """Fresh processes give the same gradients: the first multithreaded BLAS calls of a process once
    differed in the last bits in about 1 process in 8 (fixed by a single-threaded warm-up call)."""
    if kernel is None:
        pytest.skip("no kernel here (no C++ compiler): nothing to compare across processes")
    script = tmp_path / "once.py"
    script.write_text(
        textwrap.dedent("""
        import hashlib, torch
        from rnnkit.models import build_model
        torch.manual_seed(0)
        torch.set_num_threads(2)
        model = build_model("rnn", 28, 32)
        X, Y = torch.randint(0, 28, (2, 512, 16))
        loss, _ = model.loss(X, Y)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        print(hashlib.sha1(grads.numpy().tobytes()).hexdigest())
    """)
    )
    processes = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(6)]
    digests = {process.communicate(timeout=300)[0] for process in processes}  # side by side: a loaded machine
    assert all(process.returncode == 0 for process in processes)
    assert len(digests) == 1 and len(next(iter(digests)).strip()) == 40


def test_a_lock_left_by_a_killed_build_does_not_block(monkeypatch, tmp_path):
    """PyTorch's build waits for its lock file; one left by a killed build is removed when stale."""
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_kernel", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    broken = tmp_path / "broken.cpp"
    broken.write_text("not C++ either\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    build_dir = tmp_path / kernels.build_name()
    build_dir.mkdir()
    (build_dir / "lock").touch()
    old = kernels.time.time() - 2 * kernels.STALE_LOCK_S
    os.utime(build_dir / "lock", (old, old))
    with pytest.warns(RuntimeWarning, match="CPU kernel not built"):
        assert kernels.rnn_lm_kernel() is None  # got past the lock to the (failing) build


def test_a_lock_of_a_builder_that_died_goes_at_once_and_a_live_ones_stays(tmp_path):
    """A build killed with SIGKILL leaves PyTorch's lock; its builder (pid, host) being gone, the
    next build removes it at once instead of after STALE_LOCK_S."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, host, kept in (
        (dead.pid, socket.gethostname(), False),
        (os.getpid(), socket.gethostname(), True),
        (dead.pid, "another-host", True),
    ):
        (tmp_path / "lock").touch()
        (tmp_path / kernels.BUILDER_FILE).write_text(f"{pid} {host}\n")
        kernels.remove_stale_lock(tmp_path)
        assert (tmp_path / "lock").exists() == kept, (pid, host)
    (tmp_path / kernels.BUILDER_FILE).unlink()  # no builder noted (an older rnnkit): the age rule alone
    kernels.remove_stale_lock(tmp_path)
    assert (tmp_path / "lock").exists()


def test_a_build_cut_short_by_ctrl_c_is_tried_again(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_kernel", None)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(cpp_extension, "load", interrupted)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            kernels.rnn_lm_kernel()
    assert len(calls) == 2 and not kernels._tried


def test_a_kernel_build_is_not_timed_as_training(monkeypatch, tm_text):
    """A build (here: a stand-in that takes 1.5 s) happens before the first epoch's clock starts."""
    from rnnkit.train import TrainConfig, Trainer

    calls = []

    def slow_first_build():
        if not calls:
            kernels.time.sleep(1.5)
        calls.append(1)
        return None  # then train as PyTorch operations

    monkeypatch.setattr(kernels, "rnn_lm_kernel", slow_first_build)
    config = TrainConfig(hidden=8, batch_size=16, num_steps=8, num_train=64, num_val=16, epochs=1)
    history = Trainer(config, text=tm_text[:5000]).fit()
    assert calls and history[0].seconds < 1.0
