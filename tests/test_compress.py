"""``rnnkit compress``: exact round trips, the same bytes in every process, a coder that wastes
nothing beyond the framing, gzip's file conventions, and one line with status 2 for every damaged,
truncated or foreign input."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from rnnkit.cli import main
from rnnkit.compress import CorruptFile, coders, compress_bytes, container, decompress_bytes, mixer

HEADER = 4 + 5 + len(container.coder_version())  # magic, 5 bytes, the coder's version
END = 1 + 4 + 8  # the end mark and the trailer
BLOCK = 1 + 4 + 4  # a coded block's own fields


@pytest.fixture(scope="module")
def text(tm_text) -> bytes:
    return tm_text[:6000].encode()


@pytest.fixture(scope="module")
def packed(text) -> bytes:
    return compress_bytes(text)


@pytest.mark.parametrize(
    "data",
    [b"", b"a", b"\x00" * 1500, bytes(range(256)) * 3, os.urandom(2000), "naïve café — 日本語\n".encode() * 40],
    ids=["empty", "one byte", "zeros", "every byte value", "random", "utf-8"],
)
def test_round_trip_is_exact(data):
    assert decompress_bytes(compress_bytes(data)) == data


def test_many_blocks_round_trip_and_carry_the_model(monkeypatch, text):
    monkeypatch.setattr(container, "BLOCK_SIZE", 1000)  # 6 blocks; the model learns across them
    packed = compress_bytes(text)
    assert decompress_bytes(packed) == text
    assert len(packed) < len(text) / 2


def test_the_coder_wastes_nothing_beyond_the_framing(text):
    sink = io.BytesIO()
    totals = container.compress_stream(io.BytesIO(text), sink, size=len(text))
    coded = totals.compressed - HEADER - BLOCK - END
    assert totals.compressed == len(sink.getvalue())
    assert totals.model_bits / 8 <= coded <= totals.model_bits / 8 * 1.005 + 4, (coded, totals.model_bits / 8)
    assert 8 * totals.compressed / len(text) < 3.2  # English text: well under 8 bits per byte


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(3000)], ids=["empty", "one byte", "random"])
def test_the_compiled_model_is_the_python_model(text, data):
    """Bit for bit: the same probabilities from both, and each decodes what the other coded."""
    data = data or text
    compiled, python = mixer.adaptive_model(14), mixer.adaptive_model(14, compiled=False)
    assert isinstance(python, mixer.ContextMixer) and not isinstance(compiled, mixer.ContextMixer)
    for got, expected in zip(compiled.learn(data), python.learn(data), strict=True):
        assert np.array_equal(got, expected)
    packed = compress_bytes(data)
    for flag in (False, True):
        sink = io.BytesIO()
        header = container.read_header(source := io.BytesIO(packed))
        coder = coders.MixerCoder(header.table_bits, compiled=flag)
        while (block := container.read_block(source, coder)) is not None:
            sink.write(block)
        assert sink.getvalue() == data


def test_random_bytes_grow_by_the_framing_only():
    data = os.urandom(5000)
    packed = compress_bytes(data)
    assert len(packed) == len(data) + HEADER + (1 + 4) + END  # a stored block
    assert decompress_bytes(packed) == data


def test_every_process_writes_the_same_bytes(packed, text, tmp_path):
    """The model is integer arithmetic: no thread count, BLAS or CPU feature enters it; the Python
    model (RNNKIT_NO_KERNEL: no compiled code) writes the compiled one's bytes."""
    source = tmp_path / "t.txt"
    source.write_bytes(text)
    script = (
        "import sys; from rnnkit.compress import compress_bytes; "
        "sys.stdout.buffer.write(compress_bytes(open(sys.argv[1], 'rb').read()))"
    )
    for threads, python in (("1", ""), ("2", "1")):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "RNNKIT_NO_KERNEL": python}
        done = subprocess.run([sys.executable, "-c", script, str(source)], capture_output=True, env=env, check=True)
        assert done.stdout == packed


@pytest.fixture
def small(monkeypatch, text) -> tuple[bytes, bytes]:
    """A short text in blocks of 128 bytes, and its ``.rnz`` bytes: damage tests decode it often."""
    monkeypatch.setattr(container, "BLOCK_SIZE", 128)
    return text[:300], compress_bytes(text[:300])


def test_truncation_at_every_kilobyte_is_refused(packed):
    for cut in range(1024, len(packed), 1024):  # the 6,000-byte text's file
        with pytest.raises(CorruptFile, match="truncated"):
            decompress_bytes(packed[:cut])


def test_truncation_anywhere_is_refused(small):
    _, packed = small
    for cut in range(len(packed)):  # every byte of a short one
        with pytest.raises(CorruptFile, match="truncated" if cut >= 4 else "not an rnnkit compressed file"):
            decompress_bytes(packed[:cut])


def test_a_flipped_bit_is_refused_or_harmless(small):
    """Bits of every part of the file: either one line of error, or (a bit the decoder never
    reads) exactly the original; never other bytes."""
    original, packed = small
    positions = [*range(8 * (HEADER + BLOCK)), *range(8 * (HEADER + BLOCK), 8 * len(packed), 23)]
    refused = 0
    for position in positions:
        damaged = bytearray(packed)
        damaged[position // 8] ^= 1 << (position % 8)
        try:
            assert decompress_bytes(bytes(damaged)) == original, position
        except CorruptFile:
            refused += 1
    assert refused >= len(positions) - 3, (refused, len(positions))


def test_foreign_files_and_other_versions_are_named(packed):
    with pytest.raises(CorruptFile, match="not an rnnkit compressed file"):
        decompress_bytes(b"\x1f\x8b\x08\x00 a gzip file")
    with pytest.raises(CorruptFile, match="format 9; this rnnkit reads format 1"):
        decompress_bytes(packed[:4] + b"\x09" + packed[5:])
    with pytest.raises(CorruptFile, match=r"model 1; this rnnkit reads mode 0 \(adaptive\) with model 2"):
        decompress_bytes(packed[:6] + b"\x01" + packed[7:])  # a file of the first adaptive model
    coder = container.coder_version().encode()
    other = packed.replace(coder, b"9" * len(coder), 1)
    with pytest.raises(CorruptFile, match=f"constriction {'9' * len(coder)}, and this machine has constriction"):
        decompress_bytes(other)
    with pytest.raises(CorruptFile, match="after the end"):
        decompress_bytes(packed + b"x")


def test_files_follow_gzips_conventions(tmp_path, text, capsys):
    source = tmp_path / "t.txt"
    source.write_bytes(text)
    assert main(["compress", str(source)]) == 0
    packed = tmp_path / "t.txt.rnz"
    assert packed.is_file() and not source.exists()  # the input is removed after success
    assert "bits per byte" in capsys.readouterr().err
    assert main(["decompress", "-k", str(packed)]) == 0
    assert source.read_bytes() == text and packed.is_file()
    assert main(["compress", str(source)]) == 2  # t.txt.rnz exists
    assert "already exists (-f overwrites it)" in capsys.readouterr().err
    assert source.is_file()
    assert main(["compress", "-f", "-q", str(source)]) == 0 and not source.exists()
    assert main(["decompress", "-c", str(packed)]) == 0
    assert capsys.readouterr().out.encode() == text and packed.is_file()  # -c keeps the input
    assert main(["decompress", "-o", str(tmp_path / "back"), str(packed)]) == 0
    assert (tmp_path / "back").read_bytes() == text and not packed.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "{d}/missing"], "cannot read"),
        (["compress", "{d}"], "is not a regular file"),
        (["compress", "{d}/fifo"], "is not a regular file"),
        (["decompress", "{d}/t.txt"], "no .rnz suffix to remove"),
        (["compress", "{d}/t.txt.rnz"], "already has the .rnz suffix"),
        (["compress", "-o", "{d}/x", "{d}/t.txt", "{d}/t.txt"], "-o names one output"),
        (["decompress", "-o", "{d}/out", "{d}/t.txt"], "not an rnnkit compressed file"),
        (["compress", "-o", "{d}/t.txt", "{d}/t.txt"], "is the input itself"),
        (["compress", "-f", "-o", "{d}/t.txt", "{d}/t.txt"], "is the input itself"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, argv, message):
    (tmp_path / "t.txt").write_bytes(b"some text\n")
    (tmp_path / "t.txt.rnz").write_bytes(b"not really\n")
    os.mkfifo(tmp_path / "fifo")
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert (tmp_path / "t.txt").read_bytes() == b"some text\n"  # the input is left alone
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*.tmp"))


def test_ctrl_c_and_a_full_disk_leave_no_output_and_keep_the_input(tmp_path, monkeypatch, capsys, text):
    source = tmp_path / "t.txt"
    source.write_bytes(text)
    monkeypatch.setattr(container, "BLOCK_SIZE", 1000)
    real = coders.MixerCoder.learn
    calls = iter(range(10**9))

    def interrupted(self, block):
        if next(calls) == 3:  # in the fourth block, with three written
            raise KeyboardInterrupt
        return real(self, block)

    monkeypatch.setattr(coders.MixerCoder, "learn", interrupted)
    assert main(["compress", str(source)]) == 130
    assert source.read_bytes() == text and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    monkeypatch.setattr(coders.MixerCoder, "learn", real)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rnnkit.files.os.fsync", full)
    assert main(["compress", str(source)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert source.read_bytes() == text and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
