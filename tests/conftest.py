"""The suite finds its corpora the way rnnkit does, once per session, and then never downloads.

Order: ``$RNNKIT_DATA_DIR``; ``../shared/data`` beside the repository when it exists; rnnkit's
cache (``$RNNKIT_CACHE_DIR`` or ``~/.cache/rnnkit``); otherwise rnnkit's own sha1-checked download
into that cache (from ``$RNNKIT_MIRROR`` when set). Each test then sees the found files through
``RNNKIT_DATA_DIR``, an empty cache of its own, and no network.
"""

import itertools
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist, each worker (and every process it starts) gets its share of the cores:
    two workers of two OpenMP threads each on two cores wait on each other's spinning threads and
    run several times slower than one worker. A test that needs a thread count sets its own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        torch.set_num_threads(int(threads))


_share_the_cores_among_workers()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUITE_CORPORA = ("timemachine", "tinyshakespeare")  # the built-in corpora the tests read


@pytest.fixture(scope="session")
def suite_corpora(tmp_path_factory) -> dict[str, dict]:
    """For each corpus of :data:`SUITE_CORPORA`: ``{"path": Path, "source": where it was found,
    "downloads": URLs fetched}``, ``source`` being ``RNNKIT_DATA_DIR``, ``../shared/data``, ``cache``
    or ``download``."""
    from rnnkit.text import CORPORA, find_corpus

    found = {}
    fetched: list[str] = []
    real_urlopen = urllib.request.urlopen

    def counting_urlopen(url, *args, **kwargs):
        fetched.append(str(getattr(url, "full_url", url)))
        return real_urlopen(url, *args, **kwargs)

    for name in SUITE_CORPORA:
        filename = CORPORA[name].filename
        data_dir = os.environ.get("RNNKIT_DATA_DIR")
        if data_dir and (Path(data_dir) / filename).is_file():
            source = "RNNKIT_DATA_DIR"
        elif (SHARED_DATA / filename).is_file():
            source, data_dir = "../shared/data", str(SHARED_DATA)
        else:
            source, data_dir = None, None  # the cache, or a download (told apart below)
        saved = os.environ.pop("RNNKIT_DATA_DIR", None)
        fetched.clear()
        urllib.request.urlopen = counting_urlopen
        try:
            if data_dir:
                os.environ["RNNKIT_DATA_DIR"] = data_dir
            path = find_corpus(name, download=True)  # sha1-checked wherever it comes from
        finally:
            urllib.request.urlopen = real_urlopen
            os.environ.pop("RNNKIT_DATA_DIR", None)
            if saved is not None:
                os.environ["RNNKIT_DATA_DIR"] = saved
        if source is None:  # another pytest-xdist worker may have downloaded it while this one waited
            source = "download" if fetched else "cache"
        found[name] = {"path": path, "source": source, "downloads": list(fetched)}
    links = tmp_path_factory.mktemp("suite-data")
    for name, info in found.items():
        (links / CORPORA[name].filename).symlink_to(info["path"].resolve())
    found["_dir"] = links
    return found


@pytest.fixture(autouse=True)
def _offline_and_deterministic(monkeypatch, tmp_path_factory, suite_corpora):
    """Point rnnkit at the found corpora, give it an empty cache, forbid downloads, fix the seed."""
    monkeypatch.setenv("RNNKIT_DATA_DIR", str(suite_corpora["_dir"]))
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("RNNKIT_MIRROR", raising=False)

    def no_download(*args, **kwargs):
        raise OSError("tests never download")

    monkeypatch.setattr("urllib.request.urlopen", no_download)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tm_text(suite_corpora) -> str:
    from rnnkit.text import read_text

    return read_text(suite_corpora["timemachine"]["path"])


SERVE_TRAINING = [
    "--batch-size",
    "32",
    "--num-steps",
    "8",
    "--num-train",
    "256",
    "--num-val",
    "64",
    "--epochs",
    "2",
    "--quiet",
    "--sample-every",
    "0",
]
SERVE_LIMITS = ["--max-chars=400", "--max-text=3000", "--max-streams=3", "--max-body=20000"]


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory, suite_corpora) -> dict[str, Path]:
    """Two small runs for ``rnnkit serve``: the book's model (one-hot RNN, d2l preprocessing, ``<unk>``
    in its vocabulary) and a 2-layer LSTM with an embedding on raw characters (no ``<unk>``: unknown
    characters cannot be read)."""
    from rnnkit.cli import main

    base = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNKIT_DATA_DIR", str(suite_corpora["_dir"]))
        assert main(["train", *SERVE_TRAINING, "--hidden", "16", "--out", str(base / "book")]) == 0
        assert (
            main(
                [
                    "train",
                    *SERVE_TRAINING,
                    "--model",
                    "lstm",
                    "--layers",
                    "2",
                    "--hidden",
                    "12",
                    "--embedding",
                    "8",
                    "--preprocess",
                    "raw",
                    "--out",
                    str(base / "lstm"),
                ]
            )
            == 0
        )
    return {"book": base / "book", "lstm": base / "lstm"}


def _start_server(run_dirs, *extra) -> tuple[subprocess.Popen, str]:
    """``rnnkit serve RUN_DIR... --port 0`` in a subprocess; (process, host:port) once it listens. The
    server gets Ctrl-C's default handling whatever the suite was started with (a shell's background
    job ignores SIGINT, and its children would inherit that)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnkit.cli", "serve", *map(str, run_dirs), "--port", "0", *SERVE_LIMITS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if "http://" in line:
                return process, line.split("http://", 1)[1].split("/", 1)[0]
            if not line:
                break
    process.kill()
    pytest.fail(f"rnnkit serve did not start: {process.stderr.read()}")


@pytest.fixture(scope="session")
def start_server():
    return _start_server


@pytest.fixture(scope="session")
def live_server(served_runs) -> str:
    """Base URL of one ``rnnkit serve`` of both :func:`served_runs` for the session; stopped with
    Ctrl-C at the end, which must exit 130 without a traceback."""
    process, address = _start_server([served_runs["book"], served_runs["lstm"]])
    yield f"http://{address}"
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=15) == 130
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()


def _assert_as_accurate(value, float32_reference, exact, what: str = "") -> None:
    """``value`` (float32) is as close to ``exact`` (the same math in float64) as
    ``float32_reference`` (another float32 computation of it) is, within twice its largest error
    plus float32's usual tolerance (``torch.testing``'s: 1e-5 absolute, 1.3e-6 relative). For
    saturated or chaotic regimes, where two correct float32 computations differ by far more than
    their rounding."""
    exact = exact.detach().double()
    error = (value.detach().double() - exact).abs().max().item()
    reference_error = (float32_reference.detach().double() - exact).abs().max().item()
    assert error <= 2 * reference_error + 1e-5 + 1.3e-6 * exact.abs().max().item(), (what, error, reference_error)


@pytest.fixture(scope="session")
def assert_as_accurate():
    return _assert_as_accurate


@pytest.fixture
def fixed_clock(monkeypatch):
    """The trainer's clock ticks 50 ms a reading, and the sizing's measured speeds are fixed: a run's
    time budget, schedule and recorded seconds then depend on nothing of the machine. Call the
    returned function to start the clock from zero (before each run that should match another)."""
    import rnnkit.sizing
    import rnnkit.training.clock

    def install():
        ticks = itertools.count()
        monkeypatch.setattr(rnnkit.training.clock, "now", lambda: next(ticks) * 0.05)

    speeds = {128: 40_000, 256: 12_000, 384: 5_000, 512: 2_000}
    monkeypatch.setattr(rnnkit.sizing, "measure_tokens_per_second", lambda width, *a, **k: speeds[width])
    return install
