#!/usr/bin/env python3
"""Texts other than Tiny Shakespeare to check ``--time-budget`` on, built from files this machine
already has (nothing is downloaded and no text is committed): code, technical English and
languages other than English, in several scripts and sizes.

    .venv/bin/python benchmarks/other_texts.py /tmp/texts   # prints one path per line

- ``python-stdlib.txt``: the Python standard library's top-level modules in name order, up to
  600,000 characters (code).
- ``vim-manual.txt``: Vim's user manual, ``usr_*.txt`` (technical English, 640 KB).
- ``tutors-european.txt``, ``tutors-cyrillic.txt``, ``tutors-cjk.txt``: Vim's tutor translated
  into 18 Latin-script European languages, Russian/Ukrainian/Bulgarian, and
  Japanese/Korean/Chinese. Each translation is cut 90/10 and the first parts come before the last
  parts, so that the held-out last 10% of the file (nanoGPT's split, and ``--split fraction``'s)
  is in the languages the model trained on, not a language it never saw.

The Time Machine (``../shared/data/timemachine.txt``) is the sixth: another book, and small.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

VIM = Path("/usr/share/vim/vim90")
EUROPEAN = "ca cs da de eo es fr hr hu it lv nb nl pl pt sk sv tr".split()
CYRILLIC = "ru uk bg".split()
CJK = "ja ko zh_cn".split()


def interleaved_tutors(languages: list[str]) -> str:
    texts = [(VIM / "tutor" / f"tutor.{lang}.utf-8").read_text(encoding="utf-8") for lang in languages]
    cuts = [int(len(text) * 0.9) for text in texts]
    return "".join(t[:c] for t, c in zip(texts, cuts, strict=True)) + "".join(
        t[c:] for t, c in zip(texts, cuts, strict=True)
    )


def python_stdlib(limit: int = 600_000) -> str:
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_path("stdlib")).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def build(directory: Path) -> list[Path]:
    """Write the texts into ``directory``; returns their paths (The Time Machine last)."""
    directory.mkdir(parents=True, exist_ok=True)
    texts = {
        "python-stdlib.txt": python_stdlib(),
        "vim-manual.txt": "".join(p.read_text(encoding="utf-8") for p in sorted((VIM / "doc").glob("usr_*.txt"))),
        "tutors-european.txt": interleaved_tutors(EUROPEAN),
        "tutors-cyrillic.txt": interleaved_tutors(CYRILLIC),
        "tutors-cjk.txt": interleaved_tutors(CJK),
    }
    paths = []
    for name, text in texts.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return [*paths, Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the texts")
    for built in build(parser.parse_args().directory):
        text = built.read_text(encoding="utf-8")
        print(built, len(text), len(set(text)), sep="\t")
