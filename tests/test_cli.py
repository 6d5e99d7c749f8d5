import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.checkpoint import checkpoint_path
from rnnkit.cli import main

TINY = ["--hidden", "16", "--batch-size", "64", "--num-steps", "8", "--num-train", "512", "--num-val", "128"]


OPENINGS = [
    ("\n  Первый урок: как двигать курсор\nи так далее. ", "Первый урок: как"),
    ("First Citizen:\nBefore we proceed any further. ", "First Citizen:"),
    ("日本語のチュートリアルへようこそ。これは説明です。", "日本語のチュートリアルへ"),
]


@pytest.mark.parametrize("opening, prefix", OPENINGS)
def test_samples_start_from_the_texts_own_opening(tmp_path, capsys, opening, prefix):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(opening * 60, encoding="utf-8")
    assert (
        main(
            [
                "train",
                "--corpus",
                str(corpus),
                "--preprocess",
                "raw",
                "--epochs",
                "1",
                "--hidden",
                "8",
                "--batch-size",
                "4",
                "--num-steps",
                "8",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    sample = capsys.readouterr().out.split("sample: ", 1)[1]
    assert sample.startswith(prefix) and sample.endswith("\n") and len(sample) == len(prefix) + 100 + 1


def test_train_generate_eval_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", *TINY, "--out", str(out), "--sample-chars", "10"]) == 0
    printed = capsys.readouterr().out
    assert "epoch    2" in printed and "sample: time traveller" in printed
    assert {p.name for p in out.iterdir()} >= {checkpoint_path(out).name, "config.json", "metrics.jsonl"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"epoch", "train_loss", "train_ppl", "val_ppl", "seconds"} <= r.keys() for r in rows)

    assert main(["generate", str(out), "--prefix", "the", "-n", "25", "--seed", "1"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("the") and len(text) == 28
    assert main(["generate", str(out), "--prefix", "the", "-n", "25", "--seed", "1", "--top-k", "3"]) == 0
    assert main(["generate", str(out), "--greedy", "-n", "5"]) == 0
    capsys.readouterr()

    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 173427 and 1 < result["ppl"] < 28 and result["bpc"] > 0


def test_console_script_reports_bad_input_with_status_2(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkit.cli", "train", "--corpus", str(empty), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"rnnkit: error: {empty}: file is empty"]


def _bad(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _train(extra):
    return lambda t: ["train", *extra(t), "--out", str(t / "out")]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (_train(lambda t: ["--corpus", str(t / "missing.txt")]), "no such file"),
        (_train(lambda t: ["--corpus", _bad(t, "e.txt", b"")]), "empty"),
        (_train(lambda t: ["--corpus", _bad(t, "b.png", b"\x89PNG\r\n\x1a\n\x00\x00")]), "not a text file"),
        (_train(lambda t: ["--corpus", _bad(t, "l.txt", "d\xe9j\xe0 vu".encode("latin-1"))]), "--encoding"),
        (_train(lambda t: ["--corpus", _bad(t, "s.txt", b"too short")]), "shorter than one window"),
        (_train(lambda t: ["--num-steps", "0"]), "num_steps"),
        (_train(lambda t: ["--batch-size", "-5"]), "batch_size"),
        (_train(lambda t: ["--hidden", "0"]), "hidden"),
        (lambda t: ["generate", str(t)], "not a run directory"),
        (lambda t: ["eval", str(t / "nope"), "--json"], "not a run directory"),
    ],
)
def test_bad_input_one_line_error_status_2(tmp_path, capsys, make_args, message):
    assert main(make_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rnnkit: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_unencodable_prefix(tmp_path, capsys):
    corpus = _bad(tmp_path, "c.txt", ("abc abd abe " * 300).encode())
    out = str(tmp_path / "run")
    assert main(["train", "--corpus", corpus, "--preprocess", "raw", "--epochs", "1", *TINY, "--out", out]) == 0
    capsys.readouterr()
    assert main(["generate", out, "--prefix", "abZ!"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'Z' '!'" in err[0]


def test_the_version_is_written_once(capsys):
    """``rnnkit --version``, the installed distribution's metadata and ``rnnkit.__version__`` agree:
    ``pyproject.toml`` reads the version from the package (``dynamic``)."""
    from importlib.metadata import version

    import rnnkit

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnnkit {rnnkit.__version__}" == f"rnnkit {version('rnnkit')}"
    assert "version =" not in (Path(__file__).parents[1] / "pyproject.toml").read_text().split("[tool.")[0]
