"""Text in, token indices out: built-in corpora, reading files safely, preprocessing, vocabulary.

A corpus is found in this order: an explicit path; ``$RNNKIT_DATA_DIR/<file>``; the user cache
(``$RNNKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnkit``, else ``~/.cache/rnnkit``); a download
into that cache, checked against the entry's sha1 before it is renamed into place. The download
comes from the entry's own address, or from ``$RNNKIT_MIRROR/<file>`` when that base URL is set
(behind a firewall, in an air-gapped cluster, or a local ``python -m http.server``). Processes
that look for the same corpus at once (torchrun's ranks, runs started together) take turns on the
cache: one downloads, the others wait and find it there.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import itertools
import json
import os
import re
import stat
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rnnkit.errors import RnnkitError
from rnnkit.files import TEMP_SUFFIX, UMASK, atomic_write, taking_turns
from rnnkit.tokens import TOKEN_KINDS, tokenizer_for  # noqa: F401 - TOKEN_KINDS: its old home

D2L_DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"


GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/{0}/pg{0}.txt"


@dataclass(frozen=True)
class CorpusEntry:
    """A built-in corpus: where to fetch it and the sha1 its bytes must have.

    ``sha1=None``: not pinned in the code; the sha1 seen at first use is recorded in the cache's
    ``pins.json`` and required from then on, so a copy that changes later is refused all the same.
    ``gutenberg``: a Project Gutenberg file, whose licence header and footer are stripped.
    """

    name: str
    filename: str
    url: str
    sha1: str | None
    description: str
    gutenberg: bool = False


CORPORA: dict[str, CorpusEntry] = {
    "timemachine": CorpusEntry(
        "timemachine",
        "timemachine.txt",
        D2L_DATA_URL + "timemachine.txt",
        "090b5e7e70c295757f55df93cb0a180b9691891a",
        "H. G. Wells, The Time Machine (the file d2l downloads)",
    ),
    "tinyshakespeare": CorpusEntry(
        "tinyshakespeare",
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "04486597058d11dcc2c556b1d0433891eb639d2e",
        "Tiny Shakespeare (karpathy/char-rnn's data/tinyshakespeare/input.txt; nanoGPT's shakespeare_char)",
    ),
    "war_of_the_worlds": CorpusEntry(
        "war_of_the_worlds",
        "war_of_the_worlds.txt",
        GUTENBERG_URL.format(36),
        None,
        "H. G. Wells, The War of the Worlds (Project Gutenberg #36)",
        gutenberg=True,
    ),
    "pride_and_prejudice": CorpusEntry(
        "pride_and_prejudice",
        "pride_and_prejudice.txt",
        GUTENBERG_URL.format(1342),
        None,
        "Jane Austen, Pride and Prejudice (Project Gutenberg #1342)",
        gutenberg=True,
    ),
    "alice": CorpusEntry(
        "alice",
        "alice.txt",
        GUTENBERG_URL.format(11),
        None,
        "Lewis Carroll, Alice's Adventures in Wonderland (Project Gutenberg #11)",
        gutenberg=True,
    ),
}

PREPROCESS_MODES = ("d2l", "raw")


def cache_dir() -> Path:
    """Directory where downloaded corpora are kept."""
    if os.environ.get("RNNKIT_CACHE_DIR"):
        return Path(os.environ["RNNKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "rnnkit"


def download_url(entry: CorpusEntry) -> str:
    """Where a built-in corpus is downloaded from: ``$RNNKIT_MIRROR/<file>`` if set, else its own URL."""
    mirror = os.environ.get("RNNKIT_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{entry.filename}" if mirror else entry.url


def _pins_path() -> Path:
    return cache_dir() / "pins.json"


def recorded_pins() -> dict[str, str]:
    """sha1s recorded at first use for entries without a pinned sha1."""
    try:
        pins = json.loads(_pins_path().read_text())
        return pins if isinstance(pins, dict) else {}
    except (OSError, ValueError):
        return {}


def expected_sha1(entry: CorpusEntry) -> str | None:
    return entry.sha1 or recorded_pins().get(entry.name)


def _record_pin(entry: CorpusEntry, sha1: str) -> None:
    pins = recorded_pins()
    pins[entry.name] = sha1
    try:
        _pins_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_pins_path(), (json.dumps(pins, indent=1) + "\n").encode())
    except OSError:
        pass  # a read-only cache: the corpus still works, unpinned


def sha1_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(entry: CorpusEntry, dest: Path) -> None:
    """Fetch ``entry`` to ``dest`` via a temp file; rename only once the sha1 matches."""
    from tqdm import tqdm

    url = download_url(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, 0o666 & ~UMASK)
    try:
        digest = hashlib.sha1()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {entry.name}") as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        expected = expected_sha1(entry)
        if expected is not None and digest.hexdigest() != expected:
            raise RnnkitError(
                f"download of {url} has sha1 {digest.hexdigest()}, expected {expected}; nothing was saved"
            )
        os.replace(tmp, dest)
        if expected is None:
            _record_pin(entry, digest.hexdigest())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_copies(entry: CorpusEntry) -> list[Path]:
    """Where a built-in corpus is looked for, in order: ``$RNNKIT_DATA_DIR``, then the cache."""
    data_dir = os.environ.get("RNNKIT_DATA_DIR")
    return ([Path(data_dir) / entry.filename] if data_dir else []) + [cache_dir() / entry.filename]


def find_corpus(name_or_path: str | os.PathLike, download: bool = True) -> Path:
    """Return a local path for a built-in corpus name or a text file path (see module doc)."""
    text = str(name_or_path)
    if text not in CORPORA:
        path = Path(text).expanduser()
        if not path.exists():
            known = ", ".join(sorted(CORPORA))
            raise RnnkitError(f"{text}: no such file, and not a built-in corpus ({known})")
        return path  # read_text refuses what is not a regular file
    entry = CORPORA[text]
    looked = local_copies(entry)
    for candidate in looked:
        if candidate.is_file():
            return _checked(candidate, entry)
    candidate = looked[-1]  # the cache
    if download:
        try:
            with taking_turns(candidate.parent):  # processes started together download once
                if candidate.is_file():  # another one did while this one waited
                    return _checked(candidate, entry)
                _download(entry, candidate)
            return candidate
        except OSError as exc:  # URLError is an OSError
            reason = f"download from {download_url(entry)} failed ({exc})"
    else:
        reason = "downloading is off"
    raise RnnkitError(
        f"corpus '{entry.name}' not found: looked in {' and '.join(map(str, looked))}; {reason}. "
        f"Put a copy of {entry.filename} ({entry.url}) in a folder and set "
        f"RNNKIT_DATA_DIR to it, set RNNKIT_MIRROR to a base URL that serves it, "
        f"or pass the file's path instead of '{entry.name}'."
    )


def _checked(path: Path, entry: CorpusEntry) -> Path:
    actual, expected = sha1_of(path), expected_sha1(entry)
    if expected is None:
        _record_pin(entry, actual)  # first use: from now on these bytes are required
    elif actual != expected:
        how = "pinned" if entry.sha1 else "recorded at first use"
        raise RnnkitError(f"{path}: sha1 is {actual}, expected {expected} ({how}) for corpus '{entry.name}'")
    return path


_BINARY_MAGIC = (b"\x89PNG", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x7fELF", b"%PDF", b"\xff\xd8\xff", b"GIF8")


def check_regular_file(path: Path) -> None:
    """Refuse what cannot be read as a file's contents: a missing path, a directory, a FIFO, a
    socket or a device such as /dev/zero (which would hang or never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RnnkitError(f"{path}: no such file") from None
    except OSError as exc:
        raise RnnkitError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise RnnkitError(f"{path}: is a directory, not a text file")
    if not stat.S_ISREG(mode):
        raise RnnkitError(f"{path}: not a regular file (a FIFO, socket or device); give a text file")


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Read a whole text file, refusing what is not a regular file (a directory, a FIFO, a device
    such as /dev/zero), empty, binary and wrongly-encoded files with a clear error."""
    path = Path(path)
    check_regular_file(path)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise RnnkitError(f"unknown encoding '{encoding}'") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RnnkitError(f"{path}: cannot read ({exc.strerror})") from None
    wide = codec.startswith(("utf-16", "utf-32"))  # their text is full of NUL bytes: look after decoding
    if data.startswith(_BINARY_MAGIC) or (not wide and b"\x00" in data[: 1 << 16]):
        raise RnnkitError(f"{path}: not a text file (binary data)")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise RnnkitError(
            f"{path}: not valid {encoding} (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "if it is in another encoding, pass it with --encoding (e.g. --encoding latin-1)"
        ) from None
    if not text.strip():
        raise RnnkitError(f"{path}: file is empty")
    if "\x00" in text[: 1 << 16]:
        raise RnnkitError(f"{path}: not a text file (binary data)")
    return text


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's ``*** START OF ...`` and ``*** END OF ...`` lines
    (unchanged if it has neither)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\r\n") + "\n"


def load_corpus_text(
    name_or_path: str | os.PathLike, encoding: str = "utf-8", strip_gutenberg_header: bool | None = None
) -> str:
    """Find (see :func:`find_corpus`) and read a corpus; strip a Gutenberg header and footer when
    asked, or by default for the built-in Gutenberg books."""
    text = read_text(find_corpus(name_or_path), encoding)
    if strip_gutenberg_header is None:
        entry = CORPORA.get(str(name_or_path))
        strip_gutenberg_header = bool(entry and entry.gutenberg)
    return strip_gutenberg(text) if strip_gutenberg_header else text


def preprocess(text: str, mode: str = "d2l") -> str:
    """``d2l``: d2l 1.0's ``re.sub('[^A-Za-z]+', ' ', text).lower()``; ``raw``: the text as it is."""
    if mode == "d2l":
        return re.sub("[^A-Za-z]+", " ", text).lower()
    if mode == "raw":
        return text
    raise RnnkitError(f"unknown preprocessing '{mode}' (choose from {', '.join(PREPROCESS_MODES)})")


def tokenize(text: str, token: str = "char") -> list[str]:
    """Characters (d2l's ``list(text)``), words (d2l's ``text.split()``), or the UTF-8 bytes of the
    text (each as the character of that code, 0-255: a prepared ``--tokens bytes`` corpus); see
    :mod:`rnnkit.tokens`."""
    return tokenizer_for(token).split(text)


class Vocab:
    """d2l 1.0's vocabulary: tokens sorted, ``<unk>`` included, tokens rarer than ``min_freq`` dropped.

    ``Vocab(tokens)`` gives exactly d2l's indices. ``unk_token=None`` builds a vocabulary without
    ``<unk>`` (rnnkit's ``raw`` mode), where looking up an unknown token raises ``KeyError``.
    """

    def __init__(
        self,
        tokens: Iterable = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
        unk_token: str | None = "<unk>",
    ) -> None:
        tokens = list(tokens)
        if tokens and isinstance(tokens[0], list):  # flatten a list of lines, as d2l does
            tokens = [token for line in tokens for token in line]
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        specials = ([unk_token] if unk_token is not None else []) + list(reserved_tokens)
        kept = [token for token, freq in self.token_freqs if freq >= min_freq]
        self.unk_token = unk_token
        self.idx_to_token = sorted(set(specials + kept))
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}

    @classmethod
    def from_tokens_list(cls, idx_to_token: Sequence[str], unk_token: str | None = "<unk>") -> Vocab:
        """Rebuild a saved vocabulary with exactly the given index order."""
        vocab = cls.__new__(cls)
        vocab.token_freqs = []
        vocab.unk_token = unk_token
        vocab.idx_to_token = list(idx_to_token)
        vocab.token_to_idx = {token: idx for idx, token in enumerate(vocab.idx_to_token)}
        if len(vocab.token_to_idx) != len(vocab.idx_to_token):
            raise RnnkitError("vocabulary has duplicate tokens")
        if unk_token is not None and unk_token not in vocab.token_to_idx:
            raise RnnkitError(f"vocabulary lacks its unknown token {unk_token!r}")
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            if self.unk_token is None:
                return self.token_to_idx[tokens]
            return self.token_to_idx.get(tokens, self.unk)
        try:  # a flat list: one dictionary lookup a token
            if self.unk_token is None:
                return list(map(self.token_to_idx.__getitem__, tokens))
            return list(map(self.token_to_idx.get, tokens, itertools.repeat(self.unk, len(tokens))))
        except TypeError:  # a list of lists (unhashable), as d2l's Vocab allows
            return [self.__getitem__(token) for token in tokens]

    def to_tokens(self, indices):
        if hasattr(indices, "__len__") and len(indices) > 1:
            return [self.idx_to_token[int(index)] for index in indices]
        return self.idx_to_token[indices]

    @property
    def unk(self) -> int:
        """Index of the unknown token (d2l's name)."""
        if self.unk_token is None:
            raise KeyError("this vocabulary has no unknown token")
        return self.token_to_idx[self.unk_token]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens of ``tokens`` this vocabulary lacks, in order of first appearance."""
        return list(dict.fromkeys(t for t in tokens if t not in self.token_to_idx))


def has_unknown_token(mode: str, token: str) -> bool:
    """Whether a vocabulary built for this preprocessing and token kind has ``<unk>``: d2l's
    character vocabulary does, rnnkit's ``raw`` characters do not (every character is known), and
    a word vocabulary always does (rare words, and words never seen, are read as ``<unk>``)."""
    return mode == "d2l" or tokenizer_for(token).open_vocabulary


def build_corpus(
    text: str, mode: str = "d2l", token: str = "char", vocab: Vocab | None = None, min_freq: int = 0
) -> tuple[list[int], Vocab]:
    """d2l's ``TimeMachine.build``: preprocess, tokenize (characters or words), build a vocabulary
    if none is given (tokens rarer than ``min_freq`` left out, as d2l's ``Vocab``), index."""
    tokens = tokenize(preprocess(text, mode), token)
    if vocab is None:
        vocab = Vocab(tokens, min_freq=min_freq, unk_token="<unk>" if has_unknown_token(mode, token) else None)
    if vocab.unk_token is None:
        missing = vocab.unknown(tokens)
        if missing:
            raise RnnkitError(f"text has tokens the vocabulary lacks: {missing[:20]!r}")
    return vocab[tokens], vocab
