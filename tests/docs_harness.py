"""Runs the code blocks of the README and the documentation pages as a reader would copy them.

Used by ``tests/test_docs.py``, which runs this file once in a subprocess (``python
tests/docs_harness.py --json OUT PAGE...``) and reports each page's result. The rules a page
follows are in CONTRIBUTING.md ("Documentation"); what the harness does to them:

- each page runs top to bottom in a new directory holding the fixture files (:func:`write_fixtures`);
- ``bash`` blocks: every ``rnnkit`` command runs in this process (``rnnkit.cli.main``), but one
  that sets a variable rnnkit reads once per process (:data:`READ_ONCE`) runs in a new one
  (``RNNKIT_NO_KERNEL`` stays here: the kernel's state is that of a new process for the command); a
  command with pipes or redirections, ``python -m rnnkit`` and ``torchrun`` run in a shell (a
  training may not be piped);
  ``rnnkit serve`` is started in the background for the rest of the page, on a free port that
  replaces the port shown in every later command and block;
- ``python`` blocks run in order in one namespace per page;
- trainings are cut short: each training stops after :data:`STEPS` steps of its own (``torchrun``
  and ``python -m rnnkit`` get ``--max-steps`` appended; in this process ``Trainer.fit`` is capped,
  and a resume may go on from there), the book's ``d2l.Trainer`` trains one epoch and ``rnnkit
  timeseries`` :data:`SERIES_EPOCHS` epochs per model, the automatic
  sizing gets fixed speeds instead of measuring them, and the trainer's clock ticks
  :data:`TICK_S` a reading (a time budget's checks do not depend on this machine's speed);
- ``<!-- docs-test: parse-only REASON -->`` blocks are not run: ``rnnkit``, ``torchrun``,
  ``mkdocs`` and ``python SCRIPT`` commands go through their own argument parsers; ``pip install``
  must name extras that ``pyproject.toml`` declares and files that exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
STEPS = 3  # training steps each training of a page takes
SERIES_EPOCHS = 3  # epochs per model of `rnnkit timeseries`
TICK_S = 0.05  # the trainer's clock in this process advances this much a reading (no test of the machine's speed)
FIXED_SPEEDS = {128: 40_000, 256: 12_000, 384: 5_000, 512: 2_000, 768: 900, 1024: 500}  # tokens/s by width
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)[^\n]*$")
MARKER = re.compile(r"^[ \t]*<!-- docs-test: (?P<kind>parse-only|exit) ?(?P<arg>.*?) -->[ \t]*$")
READ_ONCE = {"RNNKIT_KERNEL_CFLAGS"}  # environment variables rnnkit reads once per process (a kernel build)
SHELL_OPERATORS = {"|", "||", ";", "&", ">", ">>", "<", "2>", "2>&1", "&>"}
EXTERNAL_TOOLS = {"git", "cd", "pre-commit", "apt-get", "sudo", "export"}


@dataclass
class Block:
    page: str
    line: int
    lang: str  # "bash" or "python"
    code: str
    parse_only: str | None = None  # the reason, where the block is not run
    exit_status: int = 0  # of the block's last command


@dataclass
class Result:
    page: str
    line: int
    lang: str
    what: str
    mode: str  # "run", "parse", or "unchecked" (an external tool in a parse-only block)
    ok: bool
    seconds: float
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def doc_pages() -> list[Path]:
    """The README, CONTRIBUTING.md and every Markdown page of the site."""
    return [
        REPO / "README.md",
        REPO / "CONTRIBUTING.md",
        *sorted(p for p in (REPO / "docs").rglob("*.md") if "hooks" not in p.parts),
    ]


def extract_blocks(path: Path) -> list[Block]:
    """The ``bash`` and ``python`` fences of a Markdown file (also inside tabs and admonitions, dedented),
    with the marker of the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    name = str(path.relative_to(REPO))
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == fence and lines[j].startswith(indent)),
            len(lines),
        )
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        if lang in ("bash", "sh", "shell", "python", "py"):
            previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(previous)
            block = Block(name, i + 1, "python" if lang in ("python", "py") else "bash", body)
            if marker and marker["kind"] == "parse-only":
                block.parse_only = marker["arg"] or "(no reason given)"
            elif marker:
                block.exit_status = int(marker["arg"])
            blocks.append(block)
        i = end + 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """A bash block's commands: continuation lines joined, blank and comment lines dropped."""
    joined = re.sub(r"\\\n[ \t]*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def split_words(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def and_parts(words: list[str]) -> list[list[str]]:
    parts, current = [], []
    for word in words:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [*parts, current]


def env_prefix(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``NAME=value ... program args`` -> ({NAME: value}, [program, args])."""
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, _, value = words[0].partition("=")
        env[key] = value
        words = words[1:]
    return env, words


def rnnkit_args(words: list[str]) -> list[str] | None:
    """The arguments of an ``rnnkit ...`` or ``python -m rnnkit ...`` command (None: another program)."""
    program = Path(words[0]).name if words else ""
    if program == "rnnkit":
        return words[1:]
    if re.fullmatch(r"python3?(\.\d+)?", program) and words[1:3] == ["-m", "rnnkit"]:
        return words[3:]
    return None


def capped_train(args: list[str]) -> list[str]:
    """``train`` arguments for another process: ``--max-steps`` set to the steps a page's training takes
    (twice that on ``--resume``: the first part took one share)."""
    if not args or args[0] != "train":
        return args
    steps = 2 * STEPS if "--resume" in args else STEPS
    if "--max-steps" in args:
        at = args.index("--max-steps")
        return [*args[:at], "--max-steps", str(steps), *args[at + 2 :]]
    return [*args, "--max-steps", str(steps)]


# ---------------------------------------------------------------------------------- parse-only checks


class Parsed(Exception):
    """Raised by the patched ``ArgumentParser.parse_args`` once a program's arguments parsed."""


@contextlib.contextmanager
def stop_after_parsing():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def parse_quietly(name: str, parse):
    """``parse()``'s result, argparse's output captured: ``None`` where it exits 0 (``--help``,
    ``--version``), an ``AssertionError`` with argparse's last line where it refuses the arguments."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parse()
    except SystemExit as exc:
        if exc.code == 0:
            return None
        raise AssertionError(f"{name}: exit {exc.code}: {err.getvalue().strip().splitlines()[-1:]}") from None


def parse_with_argparse(name: str, run) -> None:
    """Run ``run()`` until its argument parser has parsed (an error exits 2 with argparse's message)."""

    def until_parsed() -> bool:
        try:
            with stop_after_parsing():
                run()
        except Parsed:
            return True
        return False

    if parse_quietly(name, until_parsed) is not True:
        raise AssertionError(f"{name}: the program ran without parsing arguments")


def check_rnnkit(args: list[str]) -> str:
    from rnnkit.cli import build_parser

    parse_quietly("rnnkit's parser", lambda: build_parser().parse_args(args))
    return "rnnkit's parser"


def check_torchrun(args: list[str]) -> str:
    from torch.distributed.run import get_args_parser

    parsed = parse_quietly("torchrun's parser", lambda: get_args_parser().parse_args(args))
    if parsed is None or not (parsed.module and parsed.training_script == "rnnkit"):
        raise AssertionError("torchrun should start `-m rnnkit`")
    check_rnnkit(parsed.training_script_args)
    return "torchrun's and rnnkit's parsers"


def check_script(script: str, args: list[str]) -> str:
    path = REPO / script
    if not path.is_file():
        raise AssertionError(f"{script}: no such file in the repository")
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    try:
        parse_with_argparse(f"{script}'s parser", lambda: runpy.run_path(str(path), run_name="__main__"))
        return f"{script}'s parser"
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def check_pip(args: list[str]) -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for i, word in enumerate(args):
        if word in ("-c", "-r", "--constraint", "--requirement") and not (REPO / args[i + 1]).is_file():
            raise AssertionError(f"pip {word} {args[i + 1]}: no such file in the repository")
        match = re.fullmatch(r"(?:\.|rnnkit)\[([\w,-]+)\]", word)
        if match:
            unknown = set(match[1].split(",")) - set(extras)
            if unknown:
                raise AssertionError(f"pip install: pyproject.toml declares no extra {sorted(unknown)}")
    return "extras and files exist"


def check_mkdocs(args: list[str]) -> str:
    from mkdocs.__main__ import cli

    context = cli.make_context("mkdocs", list(args), resilient_parsing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 deprecates protected_args
        name, command, rest = cli.resolve_command(context, context.protected_args + context.args)
    command.make_context(name, rest, parent=context)
    return "mkdocs's parser"


def check_command(words: list[str]) -> tuple[str, str]:
    """(mode, what was checked) for a command of a parse-only block."""
    _, words = env_prefix(words)
    program = Path(words[0]).name
    args = rnnkit_args(words)
    if args is not None:
        return "parse", check_rnnkit(args)
    if program == "torchrun":
        return "parse", check_torchrun(words[1:])
    if re.fullmatch(r"pip3?", program):
        return "parse", check_pip(words[2:])
    if program == "mkdocs":
        return "parse", check_mkdocs(words[1:])
    if re.fullmatch(r"python3?(\.\d+)?", program):
        if words[1:3] == ["-m", "pytest"]:
            return "parse", "the test command (.ci/run runs it)"
        if words[1:3] == ["-m", "venv"]:
            return "unchecked", "python -m venv"
        if words[1].endswith(".py"):
            return "parse", check_script(words[1], words[2:])
    if program == "tensorboard":
        if not shutil.which("tensorboard") and not (Path(sys.executable).parent / "tensorboard").exists():
            raise AssertionError("tensorboard is not installed (the `tensorboard` extra)")
        return "parse", "tensorboard is installed"
    if program in EXTERNAL_TOOLS:
        return "unchecked", program
    raise AssertionError(f"no check known for {program!r} in a parse-only block")


# ---------------------------------------------------------------------------------------- running


class Page:
    """One page's run: its directory, its Python namespace, the server it started."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.cwd = directory
        self.namespace: dict = {"__name__": "__main__"}
        self.server: subprocess.Popen | None = None
        self.ports: dict[str, str] = {}  # port shown -> port used

    def with_ports(self, text: str) -> str:
        for shown, used in self.ports.items():
            text = re.sub(rf"(?<=[:=]){shown}\b|(?<=--port ){shown}\b", used, text)
        return text

    def close(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()


def capture(run) -> tuple[object, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        value = run()
    return value, out.getvalue()


def shell_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_in_shell(page: Page, command: str, timeout: float = 300) -> tuple[int, str]:
    done = subprocess.run(
        ["bash", "-c", command], cwd=page.cwd, env=shell_env(), capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr


def start_server(page: Page, env: dict[str, str], args: list[str]) -> tuple[int, str]:
    """``rnnkit serve ...`` in the background on a free port, which replaces the one shown from here on."""
    shown = args[args.index("--port") + 1] if "--port" in args else "8000"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = str(probe.getsockname()[1])
    page.ports[shown] = free
    args = [a for i, a in enumerate(args) if not (a == "--port" or (i and args[i - 1] == "--port"))]
    page.server = subprocess.Popen(
        [sys.executable, "-m", "rnnkit", *args, "--port", free],
        cwd=page.cwd,
        env={**shell_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if page.server.poll() is not None:
            return page.server.returncode, page.server.stdout.read()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", int(free))) == 0:
                return 0, f"serving on port {free} (shown: {shown})"
        time.sleep(0.2)
    return 1, "the server did not listen within 60 s"


@contextlib.contextmanager
def kernel_as_in_a_new_process(when: bool):
    """rnnkit decides once per process whether it uses its kernel (``RNNKIT_NO_KERNEL``): for the
    command, that decision is forgotten, as in a new process, and restored afterwards."""
    from rnnkit import kernels

    saved = kernels._kernel, kernels._tried, kernels._why_not
    if when:
        kernels._kernel, kernels._tried, kernels._why_not = None, False, ""
    try:
        yield
    finally:
        kernels._kernel, kernels._tried, kernels._why_not = saved


def run_rnnkit(page: Page, env: dict[str, str], args: list[str]) -> tuple[int, str]:
    from rnnkit.cli import main

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    os.chdir(page.cwd)

    def call() -> int:
        try:
            return main(args)
        except SystemExit as exc:  # argparse: --help, or a bad flag (exit 2)
            return exc.code if isinstance(exc.code, int) else 1

    try:
        with kernel_as_in_a_new_process(when="RNNKIT_NO_KERNEL" in env):
            return capture(call)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_command(page: Page, command: str) -> tuple[int, str]:
    command = page.with_ports(command)
    words = split_words(command)
    if any(word in SHELL_OPERATORS for word in words):
        if re.search(r"rnnkit (train|timeseries)\b", command):
            return 1, "a training in a pipe or redirection: the harness cannot cut it short (write it alone)"
        return run_in_shell(page, command)
    status, output = 0, ""
    for part in and_parts(words):
        env, part = env_prefix(part)
        args = rnnkit_args(part)
        program = Path(part[0]).name
        if program == "cd":
            page.cwd = (page.cwd / part[1]).resolve()
            continue
        if args is not None and args[:1] == ["serve"]:
            status, said = start_server(page, env, args)
        elif args is not None and Path(part[0]).name == "rnnkit" and not set(env) & READ_ONCE:
            status, said = run_rnnkit(page, env, args)
        elif args is not None and Path(part[0]).name == "rnnkit":  # a variable read once per process: a process
            command = [*(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "rnnkit", *capped_train(args)]
            status, said = run_in_shell(page, shlex.join(command))
        elif args is not None:
            status, said = run_in_shell(page, shlex.join([*part[:3], *capped_train(args)]))
        elif program == "torchrun":
            at = part.index("rnnkit") + 1
            status, said = run_in_shell(page, shlex.join([*part[:at], *capped_train(part[at:])]))
        else:
            status, said = run_in_shell(page, shlex.join([*(f"{k}={v}" for k, v in env.items()), *part]))
        output += said
        if status:
            break
    return status, output


def run_block(page: Page, block: Block) -> list[Result]:
    results = []
    if block.lang == "python":
        started = time.monotonic()
        what = block.code.strip().splitlines()[0] if block.code.strip() else "(empty)"
        try:
            code = compile(page.with_ports(block.code), f"{block.page}:{block.line}", "exec")
            if block.parse_only is None:
                os.chdir(page.cwd)
                capture(lambda: exec(code, page.namespace))
            results.append(
                Result(
                    block.page,
                    block.line,
                    "python",
                    what,
                    "parse" if block.parse_only else "run",
                    True,
                    time.monotonic() - started,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - a block's failure is reported, not raised
            if isinstance(exc, KeyboardInterrupt) and not hasattr(exc, "signum"):
                raise
            detail = "".join(traceback.format_exception(exc)[-6:])
            results.append(
                Result(block.page, block.line, "python", what, "run", False, time.monotonic() - started, detail)
            )
        return results
    commands = shell_commands(block.code)
    for n, command in enumerate(commands):
        started = time.monotonic()
        try:
            if block.parse_only is not None:
                words = split_words(command)
                cut = next((i for i, word in enumerate(words) if word in SHELL_OPERATORS), len(words))
                for part in and_parts(words[:cut]):  # the commands before any pipe or redirection
                    mode, checked = check_command(part)
                    results.append(
                        Result(
                            block.page,
                            block.line,
                            "bash",
                            shlex.join(part),
                            mode,
                            True,
                            time.monotonic() - started,
                            checked,
                        )
                    )
                continue
            expected = block.exit_status if n == len(commands) - 1 else 0
            status, output = run_command(page, command)
            ok = status == expected
            detail = "" if ok else f"exit {status} (expected {expected}):\n{output[-3000:]}"
            results.append(
                Result(block.page, block.line, "bash", command, "run", ok, time.monotonic() - started, detail)
            )
        except Exception as exc:  # noqa: BLE001
            results.append(
                Result(
                    block.page,
                    block.line,
                    "bash",
                    command,
                    "parse" if block.parse_only is not None else "run",
                    False,
                    time.monotonic() - started,
                    f"{type(exc).__name__}: {exc}",
                )
            )
    return results


# ------------------------------------------------------------------------------ fixtures and caps


def write_fixtures(directory: Path) -> None:
    """The files a page may use: ``my.txt``, ``other.txt``, ``big.txt`` and ``data.csv``."""
    import math

    from rnnkit.text import load_corpus_text

    shakespeare = load_corpus_text("tinyshakespeare")
    wells = load_corpus_text("timemachine")
    (directory / "my.txt").write_text(shakespeare[:100_000], encoding="utf-8")
    (directory / "other.txt").write_text(wells[60_000:120_000], encoding="utf-8")
    (directory / "big.txt").write_text(shakespeare, encoding="utf-8")
    rows = ["date,price"]
    for day in range(300):
        price = 100 + 10 * math.sin(day / 15) + 0.05 * day + 2 * math.sin(day * 1.7)
        rows.append(f"2025-{1 + day // 28 % 12:02d}-{1 + day % 28:02d},{'' if day in (40, 41) else f'{price:.2f}'}")
    (directory / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def cap_trainings() -> None:
    """Each training in this process takes :data:`STEPS` steps of its own (a resumed run is let go on
    from where it was), the book's ``d2l.Trainer`` one epoch, and the automatic sizing gets fixed
    speeds instead of measuring them."""
    import rnnkit.run.lifecycle as lifecycle
    import rnnkit.sizing
    import rnnkit.training.clock
    from rnnkit.training.trainer import Trainer

    fit = Trainer.fit

    def capped_fit(self, *args, **kwargs):
        if not self.config.max_steps or self.config.max_steps > self.step + STEPS:
            self.config.max_steps = self.step + STEPS
        return fit(self, *args, **kwargs)

    resume_trainer = lifecycle.resume_trainer

    def resumable(out, values, given, *args, **kwargs):
        if "max_steps" not in given:  # a run stopped by the cap above is not finished
            values, given = {**values, "max_steps": 10**9}, given | {"max_steps"}
        return resume_trainer(out, values, given, *args, **kwargs)

    import rnnkit.d2l

    book_init = rnnkit.d2l.Trainer.__init__

    def one_epoch(self, max_epochs, *args, **kwargs):  # the book's own trainer: one epoch
        book_init(self, min(max_epochs, 1), *args, **kwargs)

    ticks = itertools.count()
    rnnkit.training.clock.now = lambda: next(ticks) * TICK_S

    from rnnkit.timeseries.training import SeriesTrainer

    series_fit = SeriesTrainer.fit

    def few_epochs(self):  # rnnkit timeseries: a few epochs per model
        self.config.epochs = min(self.config.epochs, SERIES_EPOCHS)
        return series_fit(self)

    Trainer.fit = capped_fit
    SeriesTrainer.fit = few_epochs
    lifecycle.resume_trainer = resumable
    rnnkit.d2l.Trainer.__init__ = one_epoch
    rnnkit.sizing.measure_tokens_per_second = lambda width, *a, **k: FIXED_SPEEDS[width]


def print_result(r: Result) -> None:
    print(f"{'ok  ' if r.ok else 'FAIL'} {r.mode:9} {r.seconds:6.2f}s {r.page}:{r.line} {r.what[:90]}", flush=True)
    if not r.ok:
        print("     " + r.detail.replace("\n", "\n     "), flush=True)


def run_pages(pages: list[Path], report=lambda result: None) -> list[Result]:
    """Run the pages' blocks, each page in a new directory; ``report`` is called with each result."""
    cap_trainings()
    results = []
    for path in pages:
        blocks = extract_blocks(path)
        if not blocks:
            continue
        with tempfile.TemporaryDirectory(prefix="rnnkit-docs-") as tmp:
            page = Page(str(path.relative_to(REPO)), Path(tmp))
            write_fixtures(page.cwd)
            try:
                for block in blocks:
                    for result in run_block(page, block):
                        report(result)
                        results.append(result)
            finally:
                page.close()
                os.chdir(REPO)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="Markdown files (default: all)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    pages = [p.resolve() for p in args.pages] or doc_pages()
    results = run_pages(pages, report=print_result)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
