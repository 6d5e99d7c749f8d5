"""The book's own PyTorch cells (read from ../shared/seeds, or $RNNKIT_SEEDS_DIR, at test time) run on ``rnnkit.d2l``.

§9.6 (seed 000, d2lbook source): the cells under ``%%tab`` headers that include pytorch, with
``tab.selected(...)`` answering for pytorch. §9.5 (seed 004, a translated page): code blocks come
in groups of framework variants, PyTorch first. In both, ``from d2l import torch as d2l`` becomes
``from rnnkit import d2l`` and ``max_epochs=100`` becomes a short run; nothing else is changed
except two quoting slips of the translation (printed when repaired).
"""

import ast
import os
import re
from pathlib import Path

import pytest
import torch

from rnnkit import d2l

SEEDS = Path(os.environ.get("RNNKIT_SEEDS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "seeds")
EPOCHS = 2

pytestmark = pytest.mark.skipif(
    not SEEDS.is_dir(),
    reason=f"the book's pages (the seed files of d2l §9.5/§9.6) are not at {SEEDS}; "
    "set RNNKIT_SEEDS_DIR to the folder that holds them",
)


class Tab:
    """d2lbook's ``tab`` object, answering for the PyTorch tab."""

    def selected(self, *names):
        return "pytorch" in names

    def interact_select(self, *names):
        pass


def seed(prefix: str) -> str:
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    return path.read_text(encoding="utf-8")


def parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except SyntaxError:
        return False


def longest_parsing_prefix(lines: list[str]) -> str:
    """The cell's code: the longest run of leading lines, cut at a blank line, that is Python."""
    cuts = [i for i, line in enumerate(lines) if not line.strip()] + [len(lines)]
    for cut in reversed(cuts):
        code = "\n".join(lines[:cut]).strip("\n")
        if code and parses(code):
            return code
    return ""


def cells_of_d2lbook(text: str) -> list[str]:
    """PyTorch cells of a d2lbook markdown page (``%%tab`` headers)."""
    cells, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        header = re.match(r"%%tab (.*)", line)
        if not header or "pytorch" not in [t.strip() for t in header.group(1).split(",")]:
            continue
        body = []
        for nxt in lines[i + 1 :]:
            if nxt.startswith("%%tab") or nxt.startswith("%load_ext") or nxt.startswith("tab.interact"):
                break
            body.append(nxt)
        cells.append(longest_parsing_prefix(body))
    return cells


REPAIRS = [  # the translated page lost a backslash twice; the English book has both
    (re.compile(r"f'(list|tensor)'s"), r"f'\1\\'s"),
    (re.compile(r"assert a\.shape == shape, *\n\s*"), "assert a.shape == shape, "),
]


def repair(code: str) -> tuple[str, list[str]]:
    applied = []
    for pattern, replacement in REPAIRS:
        code, n = pattern.subn(replacement, code)
        if n:
            applied.append(pattern.pattern)
    return code, applied


def cells_of_translation(text: str) -> list[tuple[str, list[str]]]:
    """First variant of each group of code blocks (blocks are separated by non-breaking-space lines)."""
    chunks = re.split(r"\n\xa0\s*\n", text)
    cells, in_group = [], False
    for chunk in chunks:
        code = "\n".join(line for line in chunk.strip("\n").splitlines() if not line.startswith("%"))
        if not code.strip():
            continue  # empty block between variants
        fixed, applied = repair(code)
        if parses(fixed):
            if not in_group:
                cells.append((fixed, applied))
            in_group = True
        else:
            in_group = False  # prose ends a group
    return cells


def run_cells(cells: list[str], capsys) -> dict:
    namespace = {"tab": Tab(), "__name__": "book"}
    for code in cells:
        code = code.replace("from d2l import torch as d2l", "from rnnkit import d2l")
        code = code.replace("max_epochs=100", f"max_epochs={EPOCHS}")
        with capsys.disabled():
            print(f"\n--- running book cell ---\n{code}")
        exec(compile(code, "<book cell>", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(autouse=True)
def board_to_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the board's PNG lands here
    original = d2l.Trainer.clip_gradients
    yield
    d2l.Trainer.clip_gradients = original  # §9.5 adds its own clip_gradients to the class


def test_section_9_6_concise_rnn_cells_run_unchanged(capsys):
    cells = cells_of_d2lbook(seed("000"))
    joined = "\n".join(cells)
    assert "class RNN(d2l.Module)" in joined and "class RNNLM(d2l.RNNLMScratch)" in joined
    assert "trainer.fit(model, data)" in joined and len(cells) == 6
    torch.manual_seed(0)
    ns = run_cells(cells, capsys)
    model, data = ns["model"], ns["data"]
    assert isinstance(model.rnn.rnn, torch.nn.RNN) and ns["trainer"].max_epochs == EPOCHS
    val = model.board.data["val_ppl"]
    assert len(val) == EPOCHS and val[-1].y < 28  # better than uniform over 28 characters
    out = model.predict("it has", 20, data.vocab, d2l.try_gpu())
    assert out.startswith("it has") and len(out) == 26
    assert Path("d2l-board.png").stat().st_size > 1000  # the board was drawn to a file, once at the end


def test_section_9_5_scratch_cells_run_unchanged(capsys):
    cells = cells_of_translation(seed("004"))
    codes = [code for code, _ in cells]
    repaired = [applied for _, applied in cells if applied]
    with capsys.disabled():
        print(f"\nrepairs applied to the translated page: {repaired}")
    assert codes[0].startswith("import math") and "from d2l import torch as d2l" in codes[0]
    assert any("def clip_gradients" in c for c in codes) and any("def predict" in c for c in codes)
    assert not any("mxnet" in c or "jax" in c or "tf." in c for c in codes)
    torch.manual_seed(0)
    ns = run_cells(codes, capsys)
    model, data = ns["model"], ns["data"]
    assert type(ns["rnn"]).__name__ == "RNNScratch" and ns["RNNScratch"].__module__ == "book"
    assert d2l.Trainer.clip_gradients.__module__ == "book"  # the book's own clipping took effect
    val = model.board.data["val_ppl"]
    assert len(val) == EPOCHS and val[-1].y < 28
    assert model.predict("it has", 20, data.vocab, d2l.try_gpu()).startswith("it has")
