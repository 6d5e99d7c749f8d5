"""The code is ruff-clean and ruff-formatted, as the pre-commit hooks keep it (``.pre-commit-config.yaml``
runs the same ruff, from this environment)."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "docs"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing():
    done = ruff("check", "--output-format", "concise")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted():
    done = ruff("format", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pre_commit_hooks_run_ruff_check_and_format():
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert entries == ["ruff check --fix", "ruff format"]
