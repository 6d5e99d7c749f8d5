"""Code shape: no function longer than :data:`MAX_LINES` in the packages and modules listed here.

A function that does not fit on a screen hides its steps; past this length, split it into named
pieces. Add a package (a directory under ``src/rnnkit``) or a module (``name.py``) to :data:`CHECKED`
once it keeps the rule.
"""

import ast
from pathlib import Path

import pytest

import rnnkit

MAX_LINES = 60  # from the def line to the last line, docstring and nested functions included
CHECKED = ["serve", "timeseries", "prepare.py"]


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """``(where, lines)`` of every function and method in a module (nested ones too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (f"{path.name}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def long_functions(name: str, limit: int = MAX_LINES) -> list[str]:
    """Functions over ``limit`` lines in the package or module ``name`` of ``src/rnnkit``."""
    path = Path(rnnkit.__file__).parent / name
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files, f"nothing to check at {path}"
    return [f"{where}: {lines} lines" for file in files for where, lines in function_lengths(file) if lines > limit]


@pytest.mark.parametrize("name", CHECKED)
def test_no_function_is_longer_than_a_screen(name):
    assert long_functions(name) == []


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\nasync def long():\n{body}\n")
    assert [where for where, lines in function_lengths(tmp_path / "long.py") if lines > MAX_LINES] == ["long.py:5 long"]
