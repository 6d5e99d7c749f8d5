"""``rnnkit compress --model RUN``: the portable network computes the model's probabilities, files
round-trip exactly (bytes the vocabulary lacks, ``<unk>``, block edges inside a character), the
network's knowledge shows in the size, the same bytes come out of every process whatever numpy's
vector instructions, the thread count or compiled code, and a file refuses every run but its own."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.compress import compress_bytes, container, decompress_bytes
from rnnkit.compress.network import PortableLM, exp32, fold_rows, tanh32
from rnnkit.models import build_model

MIXED = "Hello, World — naïve 日本語 text\n".encode() + b"\xff\xfe invalid \xc3 UTF-8\n"


@pytest.mark.parametrize(
    "kind, options",
    [
        ("rnn", {}),
        ("rnn", {"layers": 2, "activation": "relu"}),
        ("scratch", {}),
        ("gru", {"layers": 2}),
        ("lstm", {}),
        ("lstm", {"embedding": 24, "hidden": 24, "tie_weights": True}),
    ],
    ids=["rnn", "rnn-relu-2-layers", "scratch", "gru-2-layers", "lstm", "lstm-tied-embedding"],
)
def test_the_portable_network_computes_the_models_probabilities_compiled_or_not(kind, options):
    """Within rounding of PyTorch's; and the compiled operations give numpy's bits exactly."""
    torch.manual_seed(0)
    options = {"hidden": 32, **options}
    model = build_model(kind, 11, **options).eval()
    with torch.no_grad():  # weights large enough that the gates saturate somewhere
        for parameter in model.parameters():
            parameter.mul_(2.0 if kind != "scratch" else 15.0)
    ids = torch.randint(0, 11, (60,)).tolist()
    with torch.no_grad():
        expected = torch.softmax(model(torch.tensor([ids]))[0][:, 0].double(), -1).numpy()
    results = []
    for compiled in (True, False):
        network = PortableLM(model, compiled)
        assert (network.native is not None) == compiled  # the suite runs where a compiler is
        got = []
        for token in ids:
            network.feed(token)
            got.append(network.probabilities())
        results.append(np.array(got))
    np.testing.assert_allclose(results[0], expected, atol=2e-5, rtol=1e-4)
    assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32))


def test_exp_and_tanh_are_accurate_and_sums_have_one_order():
    x = np.linspace(-40, 40, 200_001, dtype=np.float32)
    assert np.max(np.abs(exp32(x) / np.exp(x.astype(np.float64)) - 1)) < 3e-7
    assert np.max(np.abs(tanh32(x) - np.tanh(x.astype(np.float64)))) < 3e-7
    rows = np.array([[1e8], [1.0], [-1e8], [1.0], [1.0]], dtype=np.float32)
    r = rows[:, 0]
    assert fold_rows(rows.copy())[0] == ((r[0] + r[2]) + (r[1] + r[3])) + r[4] == 3.0  # not 1e8 + 1 - 1e8 + 1 + 1
    assert fold_rows(np.ones((7, 3), np.float32)).tolist() == [7.0, 7.0, 7.0]


@pytest.fixture(scope="module")
def sample(tm_text) -> bytes:
    return tm_text[:1500].encode() + MIXED


@pytest.mark.parametrize("run", ["book", "lstm"])
def test_round_trips_are_exact_across_blocks_and_unknown_tokens(run, served_runs, sample, monkeypatch):
    """``book``: d2l's letters and ``<unk>`` (capitals and punctuation are fed to it as ``<unk>``);
    ``lstm``: raw characters without ``<unk>`` (for a character it lacks the state stays).
    Blocks of 100 bytes cut the UTF-8 characters of ``MIXED``."""
    monkeypatch.setattr(container, "BLOCK_SIZE", 100)
    packed = compress_bytes(sample, model=served_runs[run])
    assert decompress_bytes(packed, model=served_runs[run]) == sample
    assert len(packed) < len(sample)
    for data in (b"", b"e", os.urandom(300)):
        assert decompress_bytes(compress_bytes(data, model=served_runs[run]), model=served_runs[run]) == data


@pytest.fixture(scope="module")
def wells_run(tmp_path_factory, tm_text) -> str:
    """An LSTM trained for 200 steps (about 1.5 s) on The Time Machine's first 40,000 characters."""
    directory = tmp_path_factory.mktemp("wells")
    (directory / "wells.txt").write_text(tm_text[:40_000], encoding="utf-8")
    options = "--preprocess raw --model lstm --hidden 48 --max-steps 200 --batch-size 32 --num-steps 32 --lr 0.02"
    arguments = ["train", "--corpus", str(directory / "wells.txt"), *options.split(), "--optimizer", "adam"]
    assert main([*arguments, "--sample-every", "0", "--quiet", "--out", str(directory / "run")]) == 0
    return str(directory / "run")


def test_the_network_makes_files_smaller(wells_run, tm_text):
    """A run trained a little on the book's beginning codes a later part 7% smaller than the
    adaptive model alone (2,430 -> 2,266 bytes here; Tiny Shakespeare's last 10% with a 3-minute run:
    15%, docs/guides/compression.md)."""
    text = tm_text[60_000:66_000].encode()
    assert len(compress_bytes(text, model=wells_run)) < 0.96 * len(compress_bytes(text))


def test_the_coder_writes_the_models_code_length(served_runs, tm_text):
    text = tm_text[:3000].encode()
    sink = io.BytesIO()
    totals = container.compress_stream(io.BytesIO(text), sink, model=served_runs["lstm"])
    framing = len(container.Header(container.TRAINED_RUN, checkpoint="x" * 12, sha256=b"0" * 32).encode())
    coded = totals.compressed - framing - (1 + 4 + 4) - (1 + 4 + 8)
    assert totals.model_bits / 8 <= coded <= totals.model_bits / 8 * 1.005 + 4, (coded, totals.model_bits / 8)


def test_every_process_writes_the_same_bytes_whatever_the_cpus_vector_instructions(served_runs, sample, tmp_path):
    """numpy picks its loops by the CPU (here AVX-512, AVX2 or SSE4.2); float32 element-wise
    operations are correctly rounded in each, and no sum's order is left to it. The compiled
    operations (this process) and numpy's alone (RNNKIT_NO_KERNEL) give the same bytes."""
    source = tmp_path / "t.txt"
    source.write_bytes(sample)
    expected = compress_bytes(sample, model=served_runs["lstm"])
    script = (
        "import sys; from rnnkit.compress import compress_bytes; "
        "sys.stdout.buffer.write(compress_bytes(open(sys.argv[1], 'rb').read(), model=sys.argv[2]))"
    )
    # (threads, numpy vector instructions switched off, RNNKIT_NO_KERNEL: no compiled code)
    settings = [("1", "", ""), ("2", "X86_V3 X86_V4 AVX512_ICL AVX512_SPR", "1")]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(source), str(served_runs["lstm"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": threads, "NPY_DISABLE_CPU_FEATURES": off, "RNNKIT_NO_KERNEL": python},
        )
        for threads, off, python in settings
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        assert out == expected


def test_a_file_refuses_every_run_but_its_own(served_runs, sample, tmp_path, capsys):
    packed = compress_bytes(sample[:200], model=served_runs["lstm"])
    with pytest.raises(container.RnnkitError, match="compressed with a trained run .*decompress it with --model"):
        decompress_bytes(packed)
    with pytest.raises(container.RnnkitError, match="compressed with checkpoint .* and --model is .*book"):
        decompress_bytes(packed, model=served_runs["book"])
    (tmp_path / "f.rnz").write_bytes(packed)
    assert main(["decompress", "-c", "--model", str(served_runs["book"]), str(tmp_path / "f.rnz")]) == 2
    err = capsys.readouterr().err
    assert "give the run it was compressed with" in err and err.count("\n") == 1
    assert main(["compress", "-c", "-f", "--model", str(tmp_path), str(tmp_path / "f.rnz")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_the_command_line_round_trip(served_runs, sample, tmp_path, capsysbinary):
    source = tmp_path / "t.txt"
    source.write_bytes(sample)
    run = str(served_runs["book"])
    assert main(["compress", "-k", "--model", run, str(source)]) == 0
    assert b"bits per byte" in capsysbinary.readouterr().err
    assert main(["decompress", "-c", "--model", run, str(source) + ".rnz"]) == 0
    assert capsysbinary.readouterr().out == sample
