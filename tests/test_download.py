"""Corpora come from the data directory, the cache, or a sha1-checked download (``$RNNKIT_MIRROR``)."""

import functools
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnnkit.errors import RnnkitError
from rnnkit.text import CORPORA, cache_dir, find_corpus, sha1_of

REAL_URLOPEN = urllib.request.urlopen  # conftest replaces it inside each test; these tests use a local server
STARTED_WITH_DATA_DIR = os.environ.get("RNNKIT_DATA_DIR")


@contextmanager
def mirror(directory: Path, delay_s: float = 0.0):
    """A local HTTP server for ``directory`` that waits ``delay_s`` before each answer; yields (base
    URL, list of requested paths)."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the base class's name
            time.sleep(delay_s)
            super().do_GET()

        def log_request(self, code="-", size="-"):
            requests.append(self.path)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name; keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def online(monkeypatch, tmp_path):
    """No data directory, an empty cache, and real (local) HTTP."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("RNNKIT_DATA_DIR", str(empty))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy from the environment must not intercept
    monkeypatch.setattr("urllib.request.urlopen", REAL_URLOPEN)


def test_mirror_download_is_fetched_once_checked_and_cached(online, monkeypatch, tmp_path, tm_text, suite_corpora):
    served = tmp_path / "served"
    served.mkdir()
    (served / "timemachine.txt").write_bytes(suite_corpora["timemachine"]["path"].read_bytes())
    with mirror(served) as (url, requests):
        monkeypatch.setenv("RNNKIT_MIRROR", url)
        path = find_corpus("timemachine")
        again = find_corpus("timemachine")
    assert path == again == cache_dir() / "timemachine.txt"
    assert requests == ["/timemachine.txt"]  # once: the second lookup found the cached copy
    assert sha1_of(path) == CORPORA["timemachine"].sha1
    assert sorted(p.name for p in cache_dir().iterdir()) == ["timemachine.txt"]  # no temp file left


def test_lookups_at_once_download_once(online, monkeypatch, tmp_path, suite_corpora):
    """torchrun's ranks or runs started together, each looking for a corpus the cache lacks: one
    downloads it, the others wait for it and find it cached (a slow mirror makes them overlap)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "timemachine.txt").write_bytes(suite_corpora["timemachine"]["path"].read_bytes())
    with mirror(served, delay_s=0.5) as (url, requests), ThreadPoolExecutor(3) as pool:
        monkeypatch.setenv("RNNKIT_MIRROR", url)
        paths = list(pool.map(lambda _: find_corpus("timemachine"), range(3)))
    assert paths == [cache_dir() / "timemachine.txt"] * 3
    assert requests == ["/timemachine.txt"]
    assert sorted(p.name for p in cache_dir().iterdir()) == ["timemachine.txt"]  # no lock or temp file left


def test_corrupt_file_on_mirror_is_refused_and_not_cached(online, monkeypatch, tmp_path, suite_corpora):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray(suite_corpora["timemachine"]["path"].read_bytes())
    data[1000] ^= 1  # one flipped bit
    (served / "timemachine.txt").write_bytes(bytes(data))
    with mirror(served) as (url, requests):
        monkeypatch.setenv("RNNKIT_MIRROR", url)
        with pytest.raises(RnnkitError, match=r"sha1 .* expected 090b5e7e.*nothing was saved"):
            find_corpus("timemachine")
    assert requests == ["/timemachine.txt"]
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_mirror_without_the_file_says_where_it_looked(online, monkeypatch, tmp_path):
    with mirror(tmp_path) as (url, requests):
        monkeypatch.setenv("RNNKIT_MIRROR", url.rstrip("/"))  # with or without the trailing slash
        with pytest.raises(RnnkitError) as error:
            find_corpus("timemachine")
    message = str(error.value)
    assert f"{url}timemachine.txt" in message and "404" in message and "RNNKIT_MIRROR" in message
    assert requests == ["/timemachine.txt"]


def test_suite_found_its_corpora_checked_and_without_a_needless_download(suite_corpora):
    for name in ("timemachine", "tinyshakespeare"):
        info = suite_corpora[name]
        assert sha1_of(info["path"]) == CORPORA[name].sha1
        if STARTED_WITH_DATA_DIR and (Path(STARTED_WITH_DATA_DIR) / CORPORA[name].filename).is_file():
            assert info["source"] == "RNNKIT_DATA_DIR"
        # a download happens only when no local copy exists, and then exactly once
        assert len(info["downloads"]) == (1 if info["source"] == "download" else 0)
