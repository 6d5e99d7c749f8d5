"""The documentation works: every command and Python block of the README and the site runs as
written (``tests/docs_harness.py``, which says what it shortens), the site builds with ``mkdocs
build --strict`` and loads nothing from elsewhere, and the tutorial notebook executes."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from docs_harness import REPO, doc_pages, extract_blocks

PAGES = [str(p.relative_to(REPO)) for p in doc_pages() if extract_blocks(p)]
SITE_TIMEOUT_S = 300
HARNESS_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def doc_results(tmp_path_factory) -> dict[str, list[dict]]:
    """Every page's blocks, run once in one process: {page: [result, ...]}."""
    out = tmp_path_factory.mktemp("docs") / "results.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "docs_harness.py"), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
    )
    if not out.exists():
        pytest.fail(f"the docs harness crashed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    results = json.loads(out.read_text())
    by_page = {}
    for result in results:
        by_page.setdefault(result["page"], []).append(result)
    modes = [r["mode"] for r in results]
    print(
        f"\ndocs harness: {len(results)} commands and blocks in {time.monotonic() - started:.0f} s: "
        f"{modes.count('run')} run, {modes.count('parse')} only parsed, {modes.count('unchecked')} unchecked"
    )
    slowest = sorted(results, key=lambda r: -r["seconds"])[:8]  # where the harness's time goes (pytest -s)
    print("slowest: " + "; ".join(f"{r['page']}:{r['line']} {r['seconds']:.1f} s" for r in slowest))
    return by_page


@pytest.mark.parametrize("page", PAGES)
def test_every_command_and_block_of_the_page_works(doc_results, page):
    results = doc_results.get(page)
    assert results, f"{page}: none of its blocks was run"
    failures = [f"{r['page']}:{r['line']} {r['what']}\n{r['detail']}" for r in results if not r["ok"]]
    assert not failures, "\n\n".join(failures)


def test_the_readme_shows_the_test_command_that_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r"README_TEST_COMMAND\(\) \{\n(?:\s*#.*\n)*\s*(.+)\n", ci)[1].strip()
    assert command in (REPO / "README.md").read_text()


def test_the_site_builds_strictly_and_loads_nothing_from_elsewhere(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SITE_TIMEOUT_S,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in done.stderr.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    external = set()
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        external |= set(re.findall(r'<(?:script|img|iframe)[^>]*\bsrc="(https?://[^"]+)"', html))
        external |= set(re.findall(r'<link[^>]*\bhref="(https?://[^"]+)"[^>]*>', html))
        external |= set(re.findall(r"@import url\(['\"]?(https?://[^)'\"]+)", html))
    for sheet in site.rglob("*.css"):
        external |= set(re.findall(r"url\(['\"]?(https?://[^)'\"]+)", sheet.read_text(encoding="utf-8")))
    assert not external, f"the site loads from elsewhere: {sorted(external)[:10]}"
    assert (site / "reference" / "cli" / "index.html").is_file() and (site / "tutorial" / "index.html").is_file()


def test_the_cli_reference_lists_every_option_of_every_command():
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        from reference import cli_reference
    finally:
        sys.path.pop(0)
    from rnnkit.cli import build_parser

    page = cli_reference()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in commands.choices.items():
        assert f"## `rnnkit {name}`" in page
        for action in subparser._actions:
            for flag in action.option_strings if action.dest != "help" else []:
                assert f"`{flag}" in page, f"rnnkit {name} {flag}"


def test_the_tutorial_notebook_runs(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "docs" / "tutorial.ipynb", as_version=4)
    monkeypatch.setenv("RNNKIT_DOCS_QUICK", "1")  # small sizes (the notebook's first cell): the kernel inherits it
    started = time.monotonic()
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    print(f"\ntutorial notebook: {len(notebook.cells)} cells in {time.monotonic() - started:.1f} s")
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
