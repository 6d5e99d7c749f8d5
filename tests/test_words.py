"""Word-level models (§9.2's word tokens and min_freq): train, eval, generate, resume, serve."""

import collections
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.checkpoint import checkpoint_path, read_config
from rnnkit.cli import main

WORDS = [
    "--tokens",
    "word",
    "--min-freq",
    "3",
    "--model",
    "lstm",
    "--embedding",
    "16",
    "--hidden",
    "24",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--batch-size",
    "16",
    "--num-steps",
    "12",
    "--split",
    "fraction",
    "--quiet",
    "--sample-every",
    "0",
]


@pytest.fixture(scope="module")
def word_run(tmp_path_factory, suite_corpora):
    out = tmp_path_factory.mktemp("words") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNKIT_DATA_DIR", str(suite_corpora["_dir"]))
        assert main(["train", *WORDS, "--epochs", "2", "--out", str(out)]) == 0
    return out


def book_words(tm_text):
    return re.sub("[^A-Za-z]+", " ", tm_text).lower().split()


def test_vocabulary_keeps_words_seen_min_freq_times(word_run, tm_text):
    counts = collections.Counter(book_words(tm_text))
    expected = sorted({w for w, c in counts.items() if c >= 3} | {"<unk>"})
    vocab = read_config(word_run)["vocab"]
    assert vocab["idx_to_token"] == expected and vocab["unk_token"] == "<unk>"
    assert read_config(word_run)["config"]["tokens"] == "word"


def test_word_tokens_round_trip_the_text(tm_text):
    from rnnkit.text import build_corpus

    ids, vocab = build_corpus(tm_text, "d2l", "word")  # min_freq 0: every word kept
    assert " ".join(vocab.to_tokens(ids)) == " ".join(book_words(tm_text))
    ids, vocab = build_corpus(tm_text, "raw", "word", min_freq=2)
    words = tm_text.split()
    assert [t if t in vocab else "<unk>" for t in words] == vocab.to_tokens(ids)


def test_training_says_how_many_words_are_unknown(tmp_path, capsys, tm_text):
    assert main(["train", *[o for o in WORDS if o != "--quiet"], "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    counts = collections.Counter(book_words(tm_text))
    rare = sum(c for c in counts.values() if c < 3)
    assert f"{rare:,} of {sum(counts.values()):,} words" in out and "read as <unk>" in out


def test_generate_writes_words_joined_by_spaces(word_run, capsys):
    vocab = set(read_config(word_run)["vocab"]["idx_to_token"])
    assert main(["generate", str(word_run), "--prefix", "The Time Traveller", "-n", "25", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    words = out.strip().split(" ")
    assert words[:3] == ["the", "time", "traveller"] and len(words) == 28
    assert all(w in vocab for w in words[3:])
    assert main(["generate", str(word_run), "--prefix", "the zyzzyva", "-n", "3", "--seed", "3"]) == 0
    assert "read as <unk>: 'zyzzyva'" in capsys.readouterr().err


def test_eval_reports_per_word_perplexity_and_bits_per_character(word_run, capsys, tm_text):
    assert main(["eval", str(word_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    words = book_words(tm_text)
    assert result["tokens"] == len(words) - 1
    assert result["chars"] == sum(len(w) + 1 for w in words[1:])  # each predicted word and the space before it
    nll = result["bits_per_word"] * result["tokens"] * math.log(2)
    assert result["ppl"] == pytest.approx(math.exp(nll / result["tokens"]), rel=1e-9)
    assert result["bpc"] == pytest.approx(nll / result["chars"] / math.log(2), rel=1e-9)
    vocab = set(read_config(word_run)["vocab"]["idx_to_token"])
    assert result["unknown_words"] == sum(w not in vocab for w in words[1:])


def test_word_run_resumes_bitwise(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *WORDS, "--epochs", "2", "--out", str(straight)]) == 0
    assert main(["train", *WORDS, "--epochs", "1", "--out", str(resumed)]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "2", "--quiet"]) == 0
    a, b = load_file(str(checkpoint_path(straight))), load_file(str(checkpoint_path(resumed)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_served_word_run_scores_as_eval(word_run, capsys, tmp_path):
    from rnnkit.serve import load_served_run, score

    text = "the time traveller held in his hand a glittering metallic framework scarcely larger than a clock"
    path = tmp_path / "t.txt"
    path.write_text(text)
    assert main(["eval", str(word_run), "--corpus", str(path), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    scored = score(load_served_run(word_run, None, "words"), text)
    assert scored["tokens"] == evaluated["tokens"] and scored["bpc"] == pytest.approx(evaluated["bpc"], rel=1e-9)
    assert "".join(c["char"] for c in scored["chars"]) == text


def test_min_freq_needs_an_unknown_token(tmp_path, capsys):
    assert main(["train", "--preprocess", "raw", "--min-freq", "2", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    assert "min_freq needs" in capsys.readouterr().err


def test_tied_weights_share_one_matrix_through_save_load_and_resume(tmp_path, capsys):
    from rnnkit.checkpoint import load_run

    options = [
        "--model",
        "lstm",
        "--hidden",
        "16",
        "--embedding",
        "16",
        "--tie-weights",
        "--preprocess",
        "raw",
        "--split",
        "fraction",
        "--batch-size",
        "64",
        "--num-steps",
        "32",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--quiet",
        "--sample-every",
        "0",
    ]
    assert main(["train", *options, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    model, _, config, _ = load_run(tmp_path / "straight")
    assert config.tie_weights and model.head.weight is model.embedding.weight
    untied = sum(p.numel() for p in model.parameters()) + model.head.weight.numel()
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["config"]["tie_weights"] is True
    assert untied - model.head.weight.numel() == sum(p.numel() for p in model.parameters())  # counted once
    assert main(["train", *options, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--epochs", "2", "--quiet"]) == 0
    a, b = load_file(str(checkpoint_path(tmp_path / "straight"))), load_file(str(checkpoint_path(tmp_path / "resumed")))
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(a["head.weight"], a["embedding.weight"])
    capsys.readouterr()
    assert main(["train", "--tie-weights", "--embedding", "8", "--hidden", "16", "--out", str(tmp_path / "x")]) == 2
    assert "embedding equal to --hidden" in capsys.readouterr().err
