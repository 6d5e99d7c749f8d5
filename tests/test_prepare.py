"""rnnkit prepare and train --data: token files read through memory maps."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import rnnkit.prepare as prepare_module
from rnnkit.checkpoint import checkpoint_path
from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.prepare import decode, open_prepared, prepare

AWKWARD = "\ufeffFirst line, CRLF\r\nnaïve café — 日本語 😀\rold Mac line\nlast line without newline"
TRAIN = [
    "--model",
    "lstm",
    "--hidden",
    "16",
    "--embedding",
    "8",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--batch-size",
    "8",
    "--num-steps",
    "16",
    "--quiet",
    "--sample-every",
    "0",
]


def ids_of(prepared):
    return torch.cat([prepared.train[0 : len(prepared.train)], prepared.val[0 : len(prepared.val)]]).tolist()


@pytest.mark.parametrize("chunk", [7, 1 << 22])  # 7 bytes: chunks cut through multi-byte characters
def test_char_tokens_round_trip_the_text_exactly(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(prepare_module, "CHUNK", chunk)
    source = tmp_path / "awkward.txt"
    source.write_bytes((AWKWARD * 3).encode("utf-8"))
    manifest = prepare(source, tmp_path / "data", val_fraction=0.25)
    prepared = open_prepared(tmp_path / "data")
    assert decode(prepared.idx_to_token, ids_of(prepared)) == AWKWARD * 3  # BOM, CRLF and CR kept as they are
    assert manifest["files"]["val"]["tokens"] == int(len(AWKWARD * 3) * 0.25)
    assert manifest["dtype"] == "|u1" and manifest["vocab_size"] == len(set(AWKWARD))


def test_byte_tokens_round_trip_any_file(tmp_path):
    data = random.Random(0).randbytes(5000) + b"\x00\xff" * 10
    (tmp_path / "blob.bin").write_bytes(data)
    manifest = prepare(tmp_path / "blob.bin", tmp_path / "data", tokens="bytes")
    prepared = open_prepared(tmp_path / "data")
    assert decode(prepared.idx_to_token, ids_of(prepared)) == data and manifest["vocab_size"] == 256


def test_a_large_vocabulary_takes_wider_ids(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) * 2
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    manifest = prepare(tmp_path / "wide.txt", tmp_path / "data")
    assert manifest["dtype"] == "<u2" and (tmp_path / "data" / "train.bin").stat().st_size == 2 * len(text) - 2 * 60
    assert decode(open_prepared(tmp_path / "data").idx_to_token, ids_of(open_prepared(tmp_path / "data"))) == text


def damaged(tmp_path, how):
    (tmp_path / "t.txt").write_text("hello prepared world\n" * 50)
    data = tmp_path / "data"
    prepare(tmp_path / "t.txt", data)
    train = data / "train.bin"
    if how == "truncated":
        train.write_bytes(train.read_bytes()[:-3])
    elif how == "flipped":
        raw = bytearray(train.read_bytes())
        raw[10] ^= 1
        train.write_bytes(bytes(raw))
    elif how == "foreign manifest":
        (data / "manifest.json").write_text(json.dumps({"format": "something else"}))
    elif how == "no manifest":
        (data / "manifest.json").unlink()
    elif how == "vocab changed":
        (data / "vocab.json").write_text(json.dumps({"tokens": "char", "idx_to_token": ["a", "b"]}))
    return data


@pytest.mark.parametrize(
    "how,words",
    [
        ("truncated", "truncated or foreign"),
        ("flipped", "does not match"),
        ("foreign manifest", "not an rnnkit data manifest"),
        ("no manifest", "rnnkit prepare makes one"),
        ("vocab changed", "does not match manifest.json"),
    ],
)
def test_damaged_data_directories_are_refused_with_one_line(tmp_path, capsys, how, words):
    data = damaged(tmp_path, how)
    assert main(["train", "--data", str(data), *TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "source,options,words",
    [
        ("missing.txt", [], "no such file"),
        ("/dev/zero", [], "not a regular file"),
        ("empty.txt", [], "empty"),
        ("latin.txt", [], "not valid utf-8"),
        ("t.txt", ["--val-fraction", "1.5"], "--val-fraction"),
    ],
)
def test_prepare_refuses_bad_sources(tmp_path, capsys, source, options, words):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "t.txt").write_text("text " * 10)
    path = source if source.startswith("/") else str(tmp_path / source)
    assert main(["prepare", path, "--out", str(tmp_path / "data"), *options]) == 2
    assert words in capsys.readouterr().err


def test_training_from_a_memory_map_learns_and_resumes_bitwise(tmp_path, capsys, tm_text):
    (tmp_path / "tm.txt").write_text(tm_text[:60000])
    assert main(["prepare", str(tmp_path / "tm.txt"), "--out", str(tmp_path / "data")]) == 0
    base = ["train", "--data", str(tmp_path / "data"), *TRAIN]
    assert main([*base, "--epochs", "4", "--out", str(tmp_path / "straight")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3 and rows[-1]["val_ppl"] < rows[0]["val_ppl"]
    assert main([*base, "--epochs", "2", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "4", "--quiet"]) == 0
    a, b = load_file(str(checkpoint_path(tmp_path / "straight"))), load_file(str(checkpoint_path(tmp_path / "resumed")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "straight"), "--json", "--dynamic"]) == 0  # the held-out part of the data
    scored = json.loads(capsys.readouterr().out)
    assert scored["tokens"] == int(60000 * 0.1) - 1 and 0 < scored["dynamic"]["bpc"] < scored["bpc"] + 0.5
    # the directory prepared again from another text: the run refuses to continue on it
    (tmp_path / "tm.txt").write_text(tm_text[60000:120000] + "§")
    assert main(["prepare", str(tmp_path / "tm.txt"), "--out", str(tmp_path / "data")]) == 0
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "6"]) == 2
    assert "vocabulary is not the one" in capsys.readouterr().err


def test_random_windows_hold_no_per_window_state(tmp_path):
    from rnnkit.data import RandomWindows

    (tmp_path / "t.txt").write_text("abcdefgh" * 10000)
    prepare(tmp_path / "t.txt", tmp_path / "data", val_fraction=0)
    prepared = open_prepared(tmp_path / "data")
    batches = RandomWindows(prepared.train, batch_size=4, num_steps=5, seed=1)
    assert len(batches) == (80000 - 1) // 20
    X, Y = next(batches.epoch(0))
    assert X.dtype == torch.int64 and X.shape == (4, 5) and torch.equal(X[:, 1:], Y[:, :-1])
    assert torch.equal(next(batches.epoch(0))[0], X) and not torch.equal(next(batches.epoch(1))[0], X)
    assert not any(isinstance(v, torch.Tensor) and v.numel() > 100 for v in vars(batches).values())


def test_data_options_that_cannot_work_are_refused(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("hello world " * 200)
    prepare(tmp_path / "t.txt", tmp_path / "data")
    for options, words in (
        (["--tokens", "word"], "--split sample"),
        (["--split", "d2l"], "--split sample"),
        (["--time-budget", "5s"], "give the model's size"),
    ):
        assert main(["train", "--data", str(tmp_path / "data"), *options, "--out", str(tmp_path / "r")]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(RnnkitError, match="byte tokens come from a prepared directory"):
        from rnnkit.train import TrainConfig

        TrainConfig(tokens="bytes").validate()


def test_max_steps_ends_a_run_after_that_many_steps_and_can_be_raised(tmp_path, tm_text):
    (tmp_path / "tm.txt").write_text(tm_text[:40000])
    prepare(tmp_path / "tm.txt", tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "data"), *TRAIN, "--eval-every", "5"]
    assert main(["train", *common, "--epochs", "100", "--max-steps", "7", "--out", str(run)]) == 0
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 7 and [e["step"] for e in evals] == [5, 7]  # 7 steps, not 100 epochs of 281
    config = json.loads((run / "config.json").read_text())
    assert config["finished"] == "7 steps done" and config["config"]["max_steps"] == 7
    assert main(["train", "--resume", str(run), "--max-steps", "12", "--quiet"]) == 0
    evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    assert evals[-1]["step"] == 12 and json.loads((run / "config.json").read_text())["finished"] == "12 steps done"


def test_a_byte_model_generates_utf8_and_is_served_byte_by_byte(tmp_path, capsys):
    from rnnkit.serve import load_served_run, score

    (tmp_path / "t.txt").write_text("naïve café, héllo wörld! " * 400)
    assert main(["prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "data"), "--tokens", "bytes"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), *TRAIN, "--max-steps", "60", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prefix", "café", "-n", "30", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("café") and "\ufffd" not in out[:4]  # bytes decoded back to text as they stream
    scored = score(load_served_run(run, None, "bytes"), "café")
    assert "".join(c["char"] for c in scored["chars"]) == "café".encode().decode("latin-1")  # one piece per byte
    assert scored["tokens"] == len("café".encode()) - 1


def test_held_out_tokens_are_scored_from_the_memory_map_as_from_a_tensor(tmp_path, tm_text):
    from rnnkit.models import build_model
    from rnnkit.train import stream_nll

    (tmp_path / "tm.txt").write_text(tm_text[:50000])
    prepare(tmp_path / "tm.txt", tmp_path / "data")
    prepared = open_prepared(tmp_path / "data")
    tensor = prepared.val[0 : len(prepared.val)]
    torch.manual_seed(0)
    model = build_model("lstm", len(prepared.idx_to_token), 8).eval()
    for lanes in (1, 3):  # read chunk by chunk from the map, never as one tensor
        assert stream_nll(model, prepared.val, chunk=100, lanes=lanes, warmup=50) == pytest.approx(
            stream_nll(model, tensor, chunk=100, lanes=lanes, warmup=50), rel=1e-6
        )


def test_a_prepared_runs_samples_do_not_start_with_a_byte_order_mark(tmp_path, capsys, tm_text):
    (tmp_path / "book.txt").write_text("\ufeff" + tm_text[:20000], encoding="utf-8")
    assert main(["prepare", str(tmp_path / "book.txt"), "--out", str(tmp_path / "data")]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "data"),
                *TRAIN,
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    sample = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sample: ")]
    assert sample and sample[0].startswith("sample: The Time Machine") and "\ufeff" not in sample[0]
