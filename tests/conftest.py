"""Tests read The Time Machine from ../shared/data and never download."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMEMACHINE = SHARED_DATA / "timemachine.txt"


@pytest.fixture(autouse=True)
def _offline_and_deterministic(monkeypatch, tmp_path_factory):
    """Point rnnkit at the shared data, give it an empty cache, forbid downloads, fix threads."""
    if "RNNKIT_DATA_DIR" not in os.environ:
        monkeypatch.setenv("RNNKIT_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("RNNKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))

    def no_download(*args, **kwargs):
        raise OSError("tests never download")

    monkeypatch.setattr("urllib.request.urlopen", no_download)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tm_text() -> str:
    return TIMEMACHINE.read_text()
