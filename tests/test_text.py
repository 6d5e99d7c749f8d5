import collections
import re

import pytest

from rnnkit.errors import RnnkitError
from rnnkit.text import Vocab, build_corpus, find_corpus, preprocess, read_text, tokenize


def d2l_vocab_order(tokens, min_freq=0, reserved=()):
    """d2l 1.0's rule, written out: sorted set of <unk>, reserved and frequent-enough tokens."""
    counts = collections.Counter(tokens)
    return sorted(set(["<unk>", *reserved] + [t for t, c in counts.items() if c >= min_freq]))


def test_timemachine_vocab_and_indices_match_d2l(tm_text):
    corpus, vocab = build_corpus(tm_text, "d2l")
    chars = list(re.sub("[^A-Za-z]+", " ", tm_text).lower())
    assert vocab.idx_to_token == d2l_vocab_order(chars)
    assert len(vocab) == 28 and vocab.idx_to_token[:3] == [" ", "<unk>", "a"]
    assert len(corpus) == len(chars) == 173428
    assert corpus[:10] == [vocab.idx_to_token.index(c) for c in chars[:10]]
    assert vocab["z"] == 27 and vocab["Z"] == vocab.unk == 1


def test_vocab_min_freq_reserved_and_word_tokens(tm_text):
    words = tokenize(preprocess(tm_text), "word")
    vocab = Vocab(words, min_freq=5, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == d2l_vocab_order(words, 5, ["<pad>"])
    assert vocab["the"] == vocab.idx_to_token.index("the")
    assert vocab.to_tokens([vocab["time"], vocab["machine"]]) == ["time", "machine"]
    assert vocab.token_freqs[0] == ("the", words.count("the"))
    assert vocab[["no-such-word"]] == [vocab.unk]


def test_raw_vocab_has_no_unk_and_roundtrips():
    corpus, vocab = build_corpus("Hé, wörld!\n", "raw")
    assert vocab.unk_token is None and "<unk>" not in vocab
    assert "".join(vocab.idx_to_token[i] for i in corpus) == "Hé, wörld!\n"
    with pytest.raises(KeyError):
        vocab["☃"]
    rebuilt = Vocab.from_tokens_list(vocab.idx_to_token, None)
    assert rebuilt.token_to_idx == vocab.token_to_idx


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"  \n\n ", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not a text file"),
        (bytes(range(256)) * 4, "not a text file"),
        ("caf\xe9 au lait".encode("latin-1"), "--encoding"),
    ],
)
def test_read_text_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(RnnkitError, match=message):
        read_text(path)


def test_read_text_other_encoding(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    assert read_text(path, "latin-1") == "caf\xe9"


def test_missing_file_and_offline_error(tmp_path, monkeypatch):
    with pytest.raises(RnnkitError, match="no such file"):
        find_corpus(tmp_path / "nope.txt")
    monkeypatch.setenv("RNNKIT_DATA_DIR", str(tmp_path))
    with pytest.raises(RnnkitError) as err:
        find_corpus("timemachine")
    text = str(err.value)
    assert str(tmp_path) in text and "RNNKIT_DATA_DIR" in text and "download" in text


def test_wrong_bytes_under_a_corpus_name_are_refused(tmp_path, monkeypatch):
    (tmp_path / "timemachine.txt").write_text("not the time machine")
    monkeypatch.setenv("RNNKIT_DATA_DIR", str(tmp_path))
    with pytest.raises(RnnkitError, match="sha1"):
        find_corpus("timemachine")
