#!/usr/bin/env python3
"""Run the same ``rnnkit`` command lines against two source trees and say where they behave
differently: exit status, stdout and stderr lines, the files each run leaves, ``config.json``,
``metrics.jsonl``/``evals.jsonl`` and the weights (bit for bit).

Each case is a short list of steps run in order in a fresh temporary directory, once per tree, with
the same relative paths. Before comparing, what legitimately differs from one run to the next is
masked (timings, tokens/s, temporary paths, checkpoint ids, pids); known, intended changes
(:data:`INTENDED`) are rewritten away and named in the result. Prints JSON (one entry per case) and
writes it to ``benchmarks/results/before_after.json``.

    git worktree add --detach /tmp/ba-trees/before c0b8cf0
    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/before_after.py \\
        --before /tmp/ba-trees/before/src --after src [--only book gru ...]
    git worktree remove --force /tmp/ba-trees/before
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bad_input_matrix import TINY, config_field, truncate, weights  # the same small runs and the same damage

RESULTS = Path(__file__).parent / "results" / "before_after.json"
BOOK = ["--hidden", "16", "--batch-size", "64", "--num-steps", "16", "--num-train", "512", "--num-val", "128"]
# One thread and MKL's thread count fixed (unless the environment sets them): under load, MKL may change its
# thread count, and with it the order of a GEMM's sums, so two processes of one tree can differ in the last bits.
STEADY = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}


@dataclass
class Cmd:
    """One ``rnnkit`` call. ``check``: what of it is compared: ``lines`` (exit status, every line),
    ``error`` (the same, an argparse usage block reduced to its error line), ``head`` (exit status,
    the first line of stdout and of stderr: wall-clock dependent runs), ``loose`` (exit status, stderr
    with every digit masked: a signal lands on any step), ``stderr`` (exit status, stderr: generated
    text without a seed). ``interrupt``: send this signal once stdout shows epoch 5. ``locked``: a
    directory whose lock (DirectoryLock's flock) this process holds during the call. ``module``: how
    the new tree is run (``-m rnnkit.cli``, or ``-m rnnkit``, which the old tree does not have)."""

    args: list[str]
    check: str = "lines"
    env: dict = field(default_factory=dict)
    interrupt: int = 0
    locked: str = ""
    module: str = "rnnkit.cli"


@dataclass
class Case:
    """Steps (a :class:`Cmd`, or a function of the working directory that prepares files) run in
    order in one directory. ``files``: compare the files left there. ``fixture``: start from a copy of
    the bad-input fixture. ``expected``: why this case's output is meant to differ."""

    name: str
    steps: list
    files: bool = True
    fixture: bool = False
    expected: str = ""


# ---------------------------------------------------------------- masking


INTENDED = {  # name: (pattern, replacement) for changes the refactor made on purpose
    "execution path in the first line":  # "... on cpu (fused CPU kernel: ...)[, 2 processes (...)]"
    (re.compile(r"^(corpus .*parameters\) on [\w:]+) \(.*\)(, \d+ processes \(\d+ rows each\))?$"), r"\1\2"),
}


def masked(text: str, work: Path, src: Path) -> str:
    text = text.replace(str(work), "TMP").replace(str(src), "SRC").replace(str(src.parent), "SRC/..")
    text = re.sub(r"\b(\d+)-[0-9a-f]{12}\b", r"\1-ID", text)  # checkpoint ids
    text = re.sub(r"[\d,]+(\.\d+)? tok/s", "N tok/s", text)
    text = re.sub(r" *\d+(\.\d+)? ?s\b", " Ns", text)  # 0.3s, 12 s (and the spaces that align them)
    text = re.sub(r"\b(\d+): [\d,]+(?=[,;])", r"\1: N", text)  # the sizing line: tokens/s by width, ...
    text = re.sub(r"[\d.]+ passes over the text", "N passes over the text", text)  # ... and what they buy
    text = re.sub(r"pid \d+ on \S+\)", "pid N on HOST)", text)
    text = re.sub(r"has [\d.]+ GiB free", "has N GiB free", text)  # the memory check: what the machine has now
    return text


def lines(text: str, work: Path, src: Path) -> list[str]:
    """Output lines as the terminal would leave them (a progress bar's \\r), masked."""
    return [masked(line.split("\r")[-1], work, src) for line in text.splitlines()]


def reduce_usage(out: list[str]) -> list[str]:
    """argparse's usage lines (they list the options, in the parser's order), then its error line."""
    return [out[-1]] if out and out[0].startswith("usage:") else out


def checked(cmd: Cmd, result: dict) -> dict:
    """What of one call's result is compared (see :class:`Cmd`)."""
    out, err = result["stdout"], result["stderr"]
    if cmd.check == "error":
        out, err = reduce_usage(out), reduce_usage(err)
    elif cmd.check == "head":
        out, err = out[:1], err[:1]
    elif cmd.check == "stderr":
        out = []
    elif cmd.check == "loose":
        out, err = [], [re.sub(r"\d+", "#", line) for line in err]
    return {"rc": result["rc"], "stdout": out, "stderr": err}


# ---------------------------------------------------------------- running


def rnnkit(src: Path, work: Path, cmd: Cmd, module: str = "rnnkit.cli") -> dict:
    if cmd.locked:
        (work / cmd.locked).mkdir(parents=True, exist_ok=True)
        fd = os.open(work / cmd.locked / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, b"pid 1 on benchmark\n")
            return rnnkit(src, work, Cmd(cmd.args, cmd.check, cmd.env, cmd.interrupt), module)
        finally:
            os.close(fd)
    env = {**STEADY, **os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1", **cmd.env}
    args = [sys.executable, "-m", module, *cmd.args]
    if not cmd.interrupt:
        proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    else:  # SIGINT at its default disposition even where this script runs in the background
        proc = subprocess.Popen(
            args,
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch    5"):
                time.sleep(0.02)
                proc.send_signal(cmd.interrupt)
                break
        rest, err = proc.communicate(timeout=600)
        out, rc = "".join(seen) + rest, proc.returncode
    return {"rc": rc, "stdout": lines(out, work, src), "stderr": lines(err, work, src)}


def run_case(case: Case, src: Path, fixture: Path | None, new: bool) -> tuple[list[dict], dict]:
    """(each call's checked result, a snapshot of the files) of ``case`` against the tree ``src``
    (``new``: the tree after the change)."""
    with tempfile.TemporaryDirectory(prefix="before_after-") as tmp:
        work = Path(tmp).resolve() / "w"
        if case.fixture:
            shutil.copytree(fixture, work, symlinks=True)
        else:
            work.mkdir()
        results = []
        for step in case.steps:
            if isinstance(step, Cmd):
                result = checked(step, rnnkit(src, work, step, step.module if new else "rnnkit.cli"))
                results.append({"args": " ".join(step.args), **result})
            else:
                step(work)
        return results, (snapshot(work) if case.files else {})


def build_fixture(src: Path, into: Path) -> Path:
    """bad_input_matrix.py's starting point: a good run, a raw run of a small text."""
    into.mkdir()
    for cmd in (
        Cmd(["train", *TINY, "--epochs", "2", "--out", "good", "--quiet"]),
        Cmd(["train", *TINY, "--corpus", "abc.txt", "--preprocess", "raw", "--epochs", "1", "--out", "raw", "--quiet"]),
    ):
        (into / "abc.txt").write_text("abc abd abe " * 300)
        result = rnnkit(src, into, cmd)
        assert result["rc"] == 0, result
    return into


# ---------------------------------------------------------------- files


def safetensors(path: Path, work: Path) -> dict:
    """A safetensors file as its header (minus the checkpoint id) and the sha1 of its tensor bytes."""
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
    except (struct.error, ValueError):
        return {"not safetensors": hashlib.sha1(data).hexdigest()}
    metadata = header.pop("__metadata__", {})
    metadata.pop("checkpoint", None)
    if "state" in metadata:  # the training state's skeleton (JSON): history, evals, timings, ...
        metadata["state"] = json.loads(metadata["state"])
    return {
        "metadata": scrub(metadata, work),
        "tensors": header,
        "tensor bytes sha1": hashlib.sha1(data[8 + size :]).hexdigest(),
    }


VARIES = {"seconds", "tokens_per_s", "train_seconds", "wall_seconds", "last_eval_wall"}  # timings


def scrub(value, work: Path):
    """A parsed JSON value without what differs from run to run: timings (:data:`VARIES`), the
    temporary directory, checkpoint ids (in ``config.json``'s checkpoint and the file names it
    lists). A training state's ``{"__dict__": [[key, value], ...]}`` is read as the mapping it
    stands for."""
    if isinstance(value, dict) and list(value) == ["__dict__"] and isinstance(value["__dict__"], list):
        value = dict(value["__dict__"])
    if isinstance(value, dict):
        return {k: scrub(v, work) for k, v in value.items() if k not in VARIES}
    if isinstance(value, list):
        return [scrub(v, work) for v in value]
    if isinstance(value, str):
        return re.sub(r"\b(\d+)-[0-9a-f]{12}\b", r"\1-ID", value.replace(str(work), "TMP"))
    return value


def snapshot(work: Path) -> dict:
    """Every file under ``work`` (checkpoint ids masked in names): what of it is compared."""
    files = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file() or p.is_fifo()):
        name = re.sub(r"-(\d+)-[0-9a-f]{12}\.", r"-\1-ID.", str(path.relative_to(work)))
        if path.is_fifo() or path.suffix == ".png" or path.name == ".lock":
            files[name] = "present"
        elif path.suffix == ".safetensors":
            files[name] = safetensors(path, work)
        elif path.suffix == ".json":
            text = path.read_text()
            files[name] = scrub(json.loads(text), work)
            if path.name == "config.json" and '"format": "rnnkit-run"' in text:
                files[name + " key order"] = " ".join(json.loads(text)["config"])
        elif path.suffix == ".jsonl":
            files[name] = [scrub(json.loads(line), work) for line in path.read_text().splitlines()]
        else:
            files[name] = hashlib.sha1(path.read_bytes()).hexdigest()
    return files


# ---------------------------------------------------------------- comparing


def intended(result: dict) -> tuple[dict, set[str]]:
    """``result`` with :data:`INTENDED` changes rewritten away, and the names of those that applied."""
    used, rewritten = set(), {}
    for stream in ("stdout", "stderr"):
        rewritten[stream] = []
        for line in result[stream]:
            for name, (pattern, replacement) in INTENDED.items():
                new = pattern.sub(replacement, line)
                if new != line:
                    used.add(name)
                    line = new
            rewritten[stream].append(line)
    return {**result, **rewritten}, used


def differences(before: list[dict], after: list[dict], files_before: dict, files_after: dict) -> list[str]:
    diffs = []
    for b, a in zip(before, after, strict=True):
        if b["rc"] != a["rc"]:
            diffs.append(f"`{b['args']}`: exit status {b['rc']} -> {a['rc']}")
        for stream in ("stdout", "stderr"):
            old, new = b[stream], a[stream]
            for i in range(max(len(old), len(new))):
                o, n = (old[i] if i < len(old) else "<none>"), (new[i] if i < len(new) else "<none>")
                if o != n:
                    diffs.append(f"`{b['args']}`: {stream} line {i + 1}: before {o!r} after {n!r}")
                    break  # the first differing line of each stream
    for name in sorted(set(files_before) | set(files_after)):
        where = first_difference(files_before.get(name, "<absent>"), files_after.get(name, "<absent>"))
        if where:
            diffs.append(f"file {name}{where}")
    return diffs


def first_difference(old, new, path: str = "") -> str:
    """Where two parsed values first differ (``.key[3]: before -> after``), or ''."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = first_difference(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}")
            if where:
                return where
        return ""
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            where = first_difference(o, n, f"{path}[{i}]")
            if where:
                return where
        return ""
    if old == new:
        return ""
    return f"{path}: {short(old)} -> {short(new)}"


def short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 300 else text[:300] + "..."


def compare(case: Case, before: Path, after: Path, fixtures: dict) -> dict:
    old, old_files = run_case(case, before, fixtures.get(before), new=False)
    new, new_files = run_case(case, after, fixtures.get(after), new=True)
    applied = set()
    old = [intended(r)[0] for r in old]
    for i, r in enumerate(new):
        new[i], used = intended(r)
        applied |= used
    diffs = differences(old, new, old_files, new_files)
    key_order = [
        d.split(":")[0] + " differs (the parsed config is compared above)"
        for d in diffs
        if d.startswith("file ") and " key order:" in d
    ]
    diffs = [d for d in diffs if not (d.startswith("file ") and " key order:" in d)]
    if diffs:
        verdict = f"different (expected: {case.expected})" if case.expected else "different"
    else:
        verdict = "same after intended changes" if applied else "same"
    entry = {"case": case.name, "result": verdict, "differences": diffs[:12]}
    if applied:
        entry["intended changes seen"] = sorted(applied)
    if key_order:
        entry["notes"] = key_order
    return entry


# ---------------------------------------------------------------- the cases


def write(name: str, data: bytes):
    def step(work: Path) -> None:
        (work / name).write_bytes(data)

    return step


def book_excerpt(work: Path) -> None:
    text = (Path(os.environ["RNNKIT_DATA_DIR"]) / "timemachine.txt").read_text(encoding="utf-8")
    (work / "tm.txt").write_text(text[:30_000], encoding="utf-8")


def broken_run(name: str, edit):
    """A copy of the fixture's good run, edited (bad_input_matrix.py's broken runs)."""

    def step(work: Path) -> None:
        shutil.copytree(work / "good", work / name)
        (work / name / ".lock").unlink(missing_ok=True)
        edit(work / name)

    return step


def nan_weights(run: Path) -> None:
    data = bytearray(weights(run).read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    for entry in json.loads(data[8 : 8 + size]).values():
        if isinstance(entry, dict) and entry.get("dtype") == "F32":
            start, end = (8 + size + offset for offset in entry["data_offsets"])
            data[start:end] = struct.pack("<f", float("nan")) * ((end - start) // 4)
    weights(run).write_bytes(bytes(data))


def weights_dir(run: Path) -> None:
    weights(run).unlink()
    weights(run).mkdir()


def pickled(run: Path) -> None:
    weights(run).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")  # pickle.dumps({})


def metrics_line(line: str):
    def edit(run: Path) -> None:
        (run / "metrics.jsonl").write_text(line + "\n")

    return edit


def fifo(work: Path) -> None:
    os.mkfifo(work / "fifo")


def bad_input_rows() -> list[tuple[str, list]]:
    """bad_input_matrix.py's rows (its cases are built inside its main(): the argument lists are
    copied here, with paths relative to the fixture's copy)."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    new = ["--out", "new"]
    rows = [
        ("empty file", [write("empty.txt", b""), Cmd(["train", "--corpus", "empty.txt", "--out", "good", "--force"])]),
        (
            "binary file (random bytes)",
            [
                write("noise.bin", random.Random(0).randbytes(4096)),
                Cmd(["train", "--corpus", "noise.bin", "--out", "good", "--force"]),
            ],
        ),
        (
            "binary file (PNG)",
            [write("image.png", png), Cmd(["train", "--corpus", "image.png", "--out", "good", "--force"])],
        ),
        (
            "Latin-1 file",
            [
                write("latin1.txt", "déjà vu, garçon".encode("latin-1") * 50),
                Cmd(["train", "--corpus", "latin1.txt", "--out", "good", "--force"]),
            ],
        ),
        (
            "corpus shorter than one window",
            [write("short.txt", b"tiny text"), Cmd(["train", "--corpus", "short.txt", "--out", "good", "--force"])],
        ),
        ("--num-steps 0", [Cmd(["train", "--num-steps", "0", "--out", "good", "--force"])]),
        ("--batch-size -5", [Cmd(["train", "--batch-size", "-5", "--out", "good", "--force"])]),
        ("--hidden 1000000", [Cmd(["train", "--hidden", "1000000", *new])]),
        ("--out of an existing run", [Cmd(["train", *TINY, "--epochs", "1", "--out", "good"])]),
        ("prefix with unseen characters (raw model)", [Cmd(["generate", "raw", "--prefix", "abZ!"])]),
        (
            "prefix with unseen characters (d2l model, has <unk>)",
            [Cmd(["generate", "good", "--prefix", "Hi!", "-n", "10"], check="stderr")],
        ),
        ("empty prefix", [Cmd(["generate", "good", "--prefix", "", "-n", "20", "--seed", "0"])]),
        ("not a run directory", [Cmd(["generate", "."])]),
        (
            "truncated checkpoint",
            [broken_run("truncated", truncate), Cmd(["generate", "truncated", "--checkpoint", "last"])],
        ),
        (
            "config edited to another hidden size",
            [broken_run("edited", config_field("hidden", 64)), Cmd(["eval", "edited"])],
        ),
        (
            "torch.save pickle renamed to the weights file",
            [broken_run("pickle", pickled), Cmd(["generate", "pickle", "--checkpoint", "last"])],
        ),
        ("a FIFO as --corpus", [fifo, Cmd(["train", "--corpus", "fifo", *new])]),
        ("/dev/zero as --corpus", [Cmd(["train", "--corpus", "/dev/zero", *new])]),
        (
            "train --seed 20000000000000 (valid: trains)",
            [Cmd(["train", *TINY, "--epochs", "1", "--seed", "20000000000000", "--out", "seeded", "--quiet"])],
        ),
        ("train --seed 2^64", [Cmd(["train", *TINY, "--seed", str(2**64), *new])]),
        ("generate --seed 1e20", [Cmd(["generate", "good", "--seed", "1e20"])]),
        ("generate --seed 10^20", [Cmd(["generate", "good", "--seed", str(10**20)])]),
        ("--weight-decay -1", [Cmd(["train", *TINY, "--weight-decay", "-1", *new])]),
        (
            'config.json "dropout": "0.1"',
            [broken_run("wrongtype", config_field("dropout", "0.1")), Cmd(["eval", "wrongtype"])],
        ),
        ("--device mps", [Cmd(["train", *TINY, "--device", "mps", *new])]),
        ("--device meta", [Cmd(["train", *TINY, "--device", "meta", *new])]),
        ("generate --temperature 1e-310", [Cmd(["generate", "good", "--temperature", "1e-310"])]),
        (
            "model with NaN weights",
            [
                broken_run("nan", nan_weights),
                Cmd(["generate", "nan", "-n", "5", "--checkpoint", "last"], check="stderr"),
            ],
        ),
        ("--hidden 40000 (memory check)", [Cmd(["train", "--hidden", "40000", *new])]),
        (
            "9-character corpus, --split fraction --val-fraction 0",
            [
                write("nine.txt", b"abcdefghi"),
                Cmd(["train", "--corpus", "nine.txt", "--split", "fraction", "--val-fraction", "0", *new]),
            ],
        ),
        (
            "weights file is a directory",
            [broken_run("wdir", weights_dir), Cmd(["generate", "wdir", "--checkpoint", "last"])],
        ),
        ("metrics.jsonl line {}", [broken_run("m1", metrics_line("{}")), Cmd(["plot", "m1", "--out", "p.png"])]),
        ("metrics.jsonl line 5", [broken_run("m2", metrics_line("5")), Cmd(["plot", "m2", "--out", "p.png"])]),
        (
            "UTF-16 file with --encoding utf-16 (valid: trains)",
            [
                write("wide.txt", ("the time machine by h g wells " * 40).encode("utf-16")),
                Cmd(
                    [
                        "train",
                        *TINY,
                        "--epochs",
                        "1",
                        "--corpus",
                        "wide.txt",
                        "--encoding",
                        "utf-16",
                        "--out",
                        "wide",
                        "--quiet",
                    ]
                ),
            ],
        ),
        ("--model lstm --dropout 0.2 (one layer)", [Cmd(["train", "--model", "lstm", "--dropout", "0.2", *new])]),
        ("--out afile/sub", [write("afile", b"x"), Cmd(["train", *TINY, "--out", "afile/sub"])]),
        (
            "--lr 1e6 --clip 0 (diverges)",
            [Cmd(["train", *TINY, "--lr", "1e6", "--clip", "0", "--epochs", "5", "--out", "diverged", "--quiet"])],
        ),
        (
            "generate 'Time Traveller' (d2l model: lower-cased)",
            [Cmd(["generate", "good", "--prefix", "Time Traveller", "-n", "10", "--greedy"])],
        ),
        (
            "--resume --epochs 100 (the default value) after 2 epochs",
            [broken_run("more", lambda run: None), Cmd(["train", "--resume", "more", "--epochs", "100", "--quiet"])],
        ),
        ("--save-steps -1", [Cmd(["train", *TINY, "--save-steps", "-1", *new])]),
        ("--dist-timeout 0", [Cmd(["train", *TINY, "--dist-timeout", "0", *new])]),
        ("--dist-timeout nan", [Cmd(["train", *TINY, "--dist-timeout", "nan", *new])]),
        ("--time-budget soon", [Cmd(["train", "--time-budget", "soon", *new])]),
        ("--time-budget=-3m", [Cmd(["train", "--time-budget=-3m", *new])]),
        ("--time-budget 0", [Cmd(["train", "--time-budget", "0", *new])]),
        ("--time-budget 3m3m", [Cmd(["train", "--time-budget", "3m3m", *new])]),
        (
            "--time-budget 1s (shorter than ten validations)",
            [Cmd(["train", *TINY, "--time-budget", "1s", *new], check="head")],
        ),
        (
            "--time-budget 1m, a 300-character corpus, no sizes",
            [
                write("small.txt", b"a few words " * 25),
                Cmd(["train", "--corpus", "small.txt", "--time-budget", "1m", *new]),
            ],
        ),
        (
            "--time-budget 4s, a 20,000-character corpus, no sizes (sizing's seconds count)",
            [
                write("own.txt", b"the time traveller smiled round at us. " * 500),
                Cmd(["train", "--corpus", "own.txt", "--time-budget", "4s", *new], check="head"),
            ],
        ),
        ("--ema 1", [Cmd(["train", *TINY, "--ema", "1", *new])]),
        ("--preprocess foo (argparse)", [Cmd(["train", "--preprocess", "foo", *new])]),
        ("--hidden x (argparse)", [Cmd(["train", "--hidden", "x", *new])]),
        ("--bogus (argparse)", [Cmd(["train", "--bogus", *new])]),
        ("--weight-drop 1", [Cmd(["train", *TINY, "--weight-drop", "1", *new])]),
        (
            "--weight-drop with --model scratch",
            [Cmd(["train", *TINY, "--model", "scratch", "--weight-drop", "0.3", *new])],
        ),
    ]
    rows += [  # two bad settings at once (which one is reported), and RunOptions' other checks
        ("--time-budget 0 --save-minutes -1", [Cmd(["train", "--time-budget", "0", "--save-minutes", "-1", *new])]),
        ("--time-budget 0 --dist-timeout 0", [Cmd(["train", "--time-budget", "0", "--dist-timeout", "0", *new])]),
        ("--tie-weights --lr 0", [Cmd(["train", *TINY, "--tie-weights", "--lr", "0", *new])]),
        (
            "--min-freq 2 --preprocess raw --clip -1",
            [Cmd(["train", *TINY, "--min-freq", "2", "--preprocess", "raw", "--clip", "-1", *new])],
        ),
        (
            "--model scratch --weight-drop 0.3 --ema 1",
            [Cmd(["train", *TINY, "--model", "scratch", "--weight-drop", "0.3", "--ema", "1", *new])],
        ),
        ("--dropout 0.2 (one layer) --warmup 1", [Cmd(["train", *TINY, "--dropout", "0.2", "--warmup", "1", *new])]),
        ("--sample-every -1", [Cmd(["train", *TINY, "--sample-every", "-1", *new])]),
        ("--sample-chars -1", [Cmd(["train", *TINY, "--sample-chars", "-1", *new])]),
        ("--save-every -1", [Cmd(["train", *TINY, "--save-every", "-1", *new])]),
        ("--save-minutes nan", [Cmd(["train", *TINY, "--save-minutes", "nan", *new])]),
        ("--resume with a model option", [Cmd(["train", "--resume", "good", "--hidden", "32"])]),
        ("--resume of no run", [Cmd(["train", "--resume", "nothing", "--epochs", "3"])]),
        ("--resume of a finished run (same epochs)", [Cmd(["train", "--resume", "good", "--epochs", "2"])]),
        ("--data with --time-budget, no sizes", [Cmd(["train", "--data", "good", "--time-budget", "1m", *new])]),
        ("--data of no prepared directory", [Cmd(["train", "--data", "nothing", *TINY, *new])]),
        (
            "--tokens word --preprocess raw --min-freq 2 (valid)",
            [
                write("w.txt", b"a b c a b d a b e " * 200),
                Cmd(
                    [
                        "train",
                        "--corpus",
                        "w.txt",
                        "--tokens",
                        "word",
                        "--preprocess",
                        "raw",
                        "--min-freq",
                        "2",
                        *TINY,
                        "--epochs",
                        "1",
                        "--out",
                        "wr",
                    ]
                ),
            ],
        ),
    ]
    port = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    for name, env in (
        ("RANK=0 alone (torchrun's variables half set)", {"RANK": "0"}),
        ("rank 1 of that (says nothing: rank 0 does)", {"RANK": "1"}),
        ("WORLD_SIZE=2 and --batch-size 63", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", **port}),
        ("WORLD_SIZE=two", {"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0", **port}),
    ):
        rows.append((name, [Cmd(["train", *TINY, "--batch-size", "63", *new], env=env)]))
    rows.append(("--out held by another process", [Cmd(["train", *TINY, "--out", "busy"], locked="busy")]))
    rows.append(
        (
            "--resume after the corpus changed",
            [
                write("book.txt", b"the quick brown fox jumps over the lazy dog " * 40),
                Cmd(["train", *TINY, "--corpus", "book.txt", "--epochs", "1", "--out", "bk"]),
                write("book.txt", b"the quick brown fox jumps over the lazy cat " * 40),
                Cmd(["train", "--resume", "bk", "--epochs", "2"]),
            ],
        )
    )
    for signum in (signal.SIGTERM, signal.SIGHUP):
        rows.append(
            (
                f"{signum.name} mid-training",
                [Cmd(["train", *TINY, "--epochs", "2000", "--out", "sig"], check="loose", interrupt=signum)],
            )
        )
    rows.append(
        (
            "SIGINT mid-training, then --resume",
            [
                Cmd(
                    ["train", *TINY, "--epochs", "200", "--out", "interrupted"], check="loose", interrupt=signal.SIGINT
                ),
                Cmd(["train", "--resume", "interrupted", "--quiet"], check="loose"),
            ],
        )
    )
    return rows


def cases() -> list[Case]:
    def train(out: str, *extra: str) -> Cmd:
        return Cmd(["train", *BOOK, "--epochs", "2", *extra, "--out", out])

    sized = ["--hidden", "16", "--batch-size", "8", "--val-fraction", "0.02"]
    found = [
        Case(
            "book",
            [
                Cmd(["train", *BOOK, "--epochs", "3", "--out", "runs/a"]),
                Cmd(["generate", "runs/a", "--prefix", "time", "-n", "30", "--seed", "1"]),
                Cmd(["eval", "runs/a"]),
                Cmd(["eval", "runs/a", "--json"]),
            ],
        ),
        Case(
            "gru with dropout",
            [
                train("runs/g", "--model", "gru", "--layers", "2", "--dropout", "0.2"),
                Cmd(["generate", "runs/g", "-n", "30", "--seed", "1", "--temperature", "0.8"]),
            ],
        ),
        Case(
            "sequential lstm raw eval-every",
            [
                Cmd(
                    [
                        "train",
                        *BOOK,
                        "--split",
                        "sequential",
                        "--model",
                        "lstm",
                        "--preprocess",
                        "raw",
                        "--eval-every",
                        "5",
                        "--epochs",
                        "1",
                        "--out",
                        "runs/s",
                    ]
                ),
                Cmd(["generate", "runs/s", "--prefix", "The Time", "-n", "30", "--seed", "1"]),
            ],
        ),
        Case(
            "resume to more epochs",
            [
                train("runs/r"),
                Cmd(["train", "--resume", "runs/r", "--epochs", "4"]),
                Cmd(["train", "--resume", "runs/r", "--epochs", "4"]),
                Cmd(["eval", "runs/r", "--checkpoint", "last"]),
            ],
        ),
        Case(
            "max-steps, then resume with more",
            [
                Cmd(["train", *BOOK, "--epochs", "5", "--max-steps", "12", "--out", "runs/m"]),
                Cmd(["train", "--resume", "runs/m", "--max-steps", "20"]),
            ],
        ),
        Case(
            "word model",
            [
                Cmd(
                    [
                        "train",
                        "--tokens",
                        "word",
                        "--hidden",
                        "16",
                        "--batch-size",
                        "16",
                        "--num-steps",
                        "8",
                        "--num-train",
                        "256",
                        "--num-val",
                        "64",
                        "--epochs",
                        "2",
                        "--out",
                        "runs/w",
                    ]
                ),
                Cmd(["generate", "runs/w", "--prefix", "the time", "-n", "10", "--seed", "1"]),
                Cmd(["eval", "runs/w", "--json"]),
            ],
        ),
        Case(
            "prepare, train --data, eval",
            [
                book_excerpt,
                Cmd(["prepare", "tm.txt", "--out", "prep"]),
                Cmd(["train", "--data", "prep", *BOOK, "--epochs", "2", "--out", "runs/p"]),
                Cmd(["eval", "runs/p"]),
                Cmd(["generate", "runs/p", "--prefix", "The ", "-n", "20", "--seed", "1"]),
            ],
        ),
        Case(
            "prepare --tokens bytes",
            [
                book_excerpt,
                Cmd(["prepare", "tm.txt", "--tokens", "bytes", "--out", "prepb"]),
                Cmd(["train", "--data", "prepb", *BOOK, "--epochs", "2", "--out", "runs/b"]),
                Cmd(["eval", "runs/b"]),
                Cmd(["generate", "runs/b", "--prefix", "The ", "-n", "20", "--seed", "1"]),
            ],
        ),
        Case(
            "patience",
            [
                Cmd(
                    [
                        "train",
                        *BOOK,
                        "--epochs",
                        "30",
                        "--lr",
                        "8",
                        "--eval-every",
                        "2",
                        "--patience",
                        "2",
                        "--out",
                        "runs/pa",
                    ]
                )
            ],
        ),
        Case(
            "ema",
            [train("runs/e", "--ema", "0.9"), Cmd(["eval", "runs/e"]), Cmd(["eval", "runs/e", "--checkpoint", "last"])],
        ),
        Case("weight-drop", [train("runs/wd", "--model", "lstm", "--weight-drop", "0.3"), Cmd(["eval", "runs/wd"])]),
        Case(
            "sample prefix",
            [
                train(
                    "runs/sp",
                    "--sample-every",
                    "1",
                    "--sample-prefix",
                    "the",
                    "--sample-prefix",
                    "time m",
                    "--sample-chars",
                    "20",
                    "--epochs",
                    "3",
                )
            ],
        ),
        Case("quiet", [train("runs/q", "--quiet")]),
        Case("force", [train("runs/f"), train("runs/f"), train("runs/f", "--force", "--seed", "3")]),
        Case(
            "time budget (first lines only)",
            [Cmd(["train", "--time-budget", "6s", *sized, "--out", "runs/t"], check="head")],
            files=False,
        ),
        Case(
            "plot",
            [
                train("runs/a", "--quiet"),
                train("runs/b", "--quiet", "--seed", "1"),
                Cmd(["plot", "runs/a", "runs/b", "--out", "both.png"]),
            ],
        ),
        Case(
            "timeseries",
            [
                Cmd(["timeseries", "--hidden", "8", "--epochs", "2", "--out", "runs/ts"]),
                Cmd(["timeseries", "--resume", "runs/ts", "--epochs", "3", "--json"]),
            ],
        ),
        Case(
            "python -m rnnkit (new) against -m rnnkit.cli (old)",
            [
                Cmd(["--version"], module="rnnkit"),
                Cmd(["train", *BOOK, "--epochs", "2", "--out", "runs/a"], module="rnnkit"),
                Cmd(["generate", "runs/a", "-n", "20", "--seed", "1"], module="rnnkit"),
                Cmd(["eval", "runs/a", "--json"], module="rnnkit"),
                Cmd(["train", "--num-steps", "0"], module="rnnkit"),
            ],
        ),
        Case(
            "python -m rnnkit: SIGINT mid-training (exit status, stderr)",
            [
                Cmd(
                    ["train", *TINY, "--epochs", "200", "--out", "runs/i"],
                    check="loose",
                    interrupt=signal.SIGINT,
                    module="rnnkit",
                )
            ],
            files=False,
        ),
        Case("--version", [Cmd(["--version"])]),
        Case("corpora", [Cmd(["corpora"])]),
        Case("--help", [Cmd(["--help"])]),
        Case("train --help", [Cmd(["train", "--help"])], expected="options are now grouped"),
        *(
            Case(f"{command} --help", [Cmd([command, "--help"])])
            for command in ("generate", "eval", "plot", "corpora", "prepare", "timeseries", "serve")
        ),
        Case(
            "more settings: scratch relu, fraction split",
            [
                train(
                    "runs/x",
                    "--model",
                    "scratch",
                    "--activation",
                    "relu",
                    "--split",
                    "fraction",
                    "--val-fraction",
                    "0.01",
                    "--epochs",
                    "1",
                ),
                Cmd(["generate", "runs/x", "-n", "20", "--top-k", "3", "--seed", "1"]),
            ],
        ),
        Case(
            "more settings: adamw cosine warmup, tied embedding, random split, val-tokens",
            [
                train(
                    "runs/y",
                    "--optimizer",
                    "adamw",
                    "--lr",
                    "0.01",
                    "--weight-decay",
                    "0.1",
                    "--schedule",
                    "cosine",
                    "--warmup",
                    "0.1",
                    "--embedding",
                    "16",
                    "--tie-weights",
                    "--io-dropout",
                    "0.1",
                    "--split",
                    "random",
                    "--val-tokens",
                    "2000",
                    "--epochs",
                    "1",
                ),
                Cmd(["generate", "runs/y", "-n", "20", "--top-p", "0.9", "--alpha", "2", "--seed", "1"]),
            ],
        ),
        Case(
            "save-steps mid-epoch, then resume",
            [
                train("runs/ss", "--save-steps", "3", "--save-every", "0", "--max-steps", "5"),
                Cmd(["train", "--resume", "runs/ss", "--max-steps", "11"]),
            ],
        ),
        Case(
            "own text with a byte-order mark (default sample prefix)",
            [
                write(
                    "bom.txt", "\ufeffThe Time Traveller (for so it will be convenient to speak of him) ".encode() * 60
                ),
                Cmd(
                    [
                        "train",
                        "--corpus",
                        "bom.txt",
                        "--preprocess",
                        "raw",
                        *BOOK,
                        "--epochs",
                        "2",
                        "--sample-every",
                        "1",
                        "--out",
                        "runs/bom",
                    ]
                ),
            ],
        ),
        Case(
            "eval on other texts",
            [
                write("other.txt", b"Zebras quietly jumped over 7 lazy foxes! " * 40),
                Cmd(
                    [
                        "train",
                        "--corpus",
                        "other.txt",
                        "--preprocess",
                        "raw",
                        *BOOK,
                        "--epochs",
                        "1",
                        "--out",
                        "runs/raw",
                        "--quiet",
                    ]
                ),
                Cmd(["eval", "runs/raw", "--corpus", "timemachine"]),
                Cmd(["eval", "runs/raw", "--corpus", "timemachine", "--json"]),
                train("runs/a", "--quiet"),
                Cmd(["eval", "runs/a", "--corpus", "other.txt"]),
                Cmd(["eval", "runs/a", "--corpus", "other.txt", "--json"]),
            ],
        ),
        Case(
            "word model eval",
            [
                Cmd(
                    [
                        "train",
                        "--tokens",
                        "word",
                        "--min-freq",
                        "2",
                        "--hidden",
                        "16",
                        "--batch-size",
                        "16",
                        "--num-steps",
                        "8",
                        "--num-train",
                        "256",
                        "--num-val",
                        "64",
                        "--epochs",
                        "1",
                        "--out",
                        "runs/w",
                        "--quiet",
                    ]
                ),
                Cmd(["eval", "runs/w"]),
                Cmd(["generate", "runs/w", "--prefix", "", "-n", "10", "--seed", "2"]),
            ],
        ),
        Case(
            "serve: bad input",
            [Cmd(["serve", "nowhere"], check="error"), Cmd(["serve", "nowhere", "--port", "70000"], check="error")],
        ),
    ]
    for name, steps in bad_input_rows():
        for step in steps:
            if isinstance(step, Cmd) and step.check == "lines":
                step.check = "error"
        found.append(Case(f"bad input: {name}", steps, files=False, fixture=True))
    found.append(
        Case(
            "bad input: --tensorboard into a file",
            [
                write("events.txt", b"not a directory"),
                Cmd(["train", *TINY, "--tensorboard", "events.txt", "--out", "new"], check="error"),
            ],
            files=False,
            fixture=True,
            expected="--tensorboard is a new option",
        )
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the old tree's src directory")
    parser.add_argument("--after", type=Path, required=True, help="the new tree's src directory")
    parser.add_argument("--only", nargs="+", default=[], help="cases whose name contains one of these")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    before, after = args.before.resolve(), args.after.resolve()
    chosen = [c for c in cases() if not args.only or any(s in c.name for s in args.only)]
    with tempfile.TemporaryDirectory(prefix="before_after-fixtures-") as tmp:
        # the fixture's runs also build each tree's CPU kernel (its lines would land in a case otherwise)
        fixtures = {
            src: build_fixture(src, Path(tmp).resolve() / name) for name, src in (("before", before), ("after", after))
        }
        report = []
        for case in chosen:
            entry = compare(case, before, after, fixtures)
            print(json.dumps(entry, ensure_ascii=False), file=sys.stderr, flush=True)
            report.append(entry)
            write_report(args, report, complete=False)  # as it goes: a long run stopped halfway leaves its cases
    print(write_report(args, report, complete=True))


def write_report(args: argparse.Namespace, report: list[dict], complete: bool) -> str:
    summary = {
        "before": str(args.before),
        "after": str(args.after),
        "complete": complete,
        "same": sum(e["result"].startswith("same") for e in report),
        "different": sum(e["result"].startswith("different") for e in report),
        "cases": report,
    }
    text = json.dumps(summary, indent=1, ensure_ascii=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
