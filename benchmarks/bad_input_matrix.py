#!/usr/bin/env python3
"""Run the ``rnnkit`` command on each bad input of the robustness matrix and print a Markdown
table: input -> the message it prints -> exit status (and whether an earlier good run survived).

Everything happens in a temporary directory; The Time Machine comes from ``$RNNKIT_DATA_DIR``.

    RNNKIT_DATA_DIR=../shared/data .venv/bin/python benchmarks/bad_input_matrix.py
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["--hidden", "16", "--batch-size", "64", "--num-steps", "8", "--num-train", "512", "--num-val", "128",
        "--sample-every", "0"]


def rnnkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkit.cli", *args], cwd=cwd, capture_output=True, text=True)


def digest(run: Path) -> str:
    return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(run.iterdir()) if p.is_file())).hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        good = d / "good"
        assert rnnkit("train", *TINY, "--epochs", "2", "--out", str(good), "--quiet", cwd=d).returncode == 0
        raw_corpus = d / "abc.txt"
        raw_corpus.write_text("abc abd abe " * 300)
        raw = d / "raw"
        assert rnnkit("train", *TINY, "--corpus", str(raw_corpus), "--preprocess", "raw", "--epochs", "1",
                      "--out", str(raw), "--quiet", cwd=d).returncode == 0
        before = digest(good)

        def file(name: str, data: bytes) -> str:
            (d / name).write_bytes(data)
            return str(d / name)

        def broken_run(name: str, edit) -> str:
            run = d / name
            run.mkdir()
            for p in good.iterdir():
                (run / p.name).write_bytes(p.read_bytes())
            edit(run)
            return str(run)

        def truncate(run: Path) -> None:
            data = (run / "model.safetensors").read_bytes()
            (run / "model.safetensors").write_bytes(data[: len(data) // 2])

        def hidden_edit(run: Path) -> None:
            meta = json.loads((run / "config.json").read_text())
            meta["config"]["hidden"] = 64
            (run / "config.json").write_text(json.dumps(meta))

        def pickled(run: Path) -> None:
            import torch

            torch.save({"w": torch.zeros(3)}, run / "model.safetensors")

        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        cases = [
            ("empty file", ["train", "--corpus", file("empty.txt", b""), "--out", str(good), "--force"]),
            ("binary file (random bytes)", ["train", "--corpus", file("noise.bin", os.urandom(4096)),
                                            "--out", str(good), "--force"]),
            ("binary file (PNG)", ["train", "--corpus", file("image.png", png), "--out", str(good), "--force"]),
            ("Latin-1 file", ["train", "--corpus", file("latin1.txt", "déjà vu, garçon".encode("latin-1") * 50),
                              "--out", str(good), "--force"]),
            ("corpus shorter than one window", ["train", "--corpus", file("short.txt", b"tiny text"),
                                                "--out", str(good), "--force"]),
            ("--num-steps 0", ["train", "--num-steps", "0", "--out", str(good), "--force"]),
            ("--batch-size -5", ["train", "--batch-size", "-5", "--out", str(good), "--force"]),
            ("--hidden 1000000", ["train", "--hidden", "1000000", "--out", str(d / "new")]),
            ("--out of an existing run", ["train", *TINY, "--epochs", "1", "--out", str(good)]),
            ("prefix with unseen characters (raw model)", ["generate", str(raw), "--prefix", "abZ!"]),
            ("prefix with unseen characters (d2l model, has <unk>)", ["generate", str(good), "--prefix", "Hi!",
                                                                      "-n", "10"]),
            ("empty prefix", ["generate", str(good), "--prefix", "", "-n", "20", "--seed", "0"]),
            ("not a run directory", ["generate", str(d)]),
            ("truncated checkpoint", ["generate", broken_run("truncated", truncate)]),
            ("config edited to another hidden size", ["eval", broken_run("edited", hidden_edit)]),
            ("torch.save pickle renamed model.safetensors", ["generate", broken_run("pickle", pickled)]),
        ]
        print("| input | what rnnkit prints | exit status |")
        print("| --- | --- | --- |")
        for name, args in cases:
            proc = rnnkit(*args, cwd=d)
            shown = (proc.stderr.strip() or proc.stdout.strip()).replace("\n", " / ").replace(str(d), "TMP")
            assert "Traceback" not in proc.stderr, proc.stderr
            print(f"| {name} | `{shown[:230]}` | {proc.returncode} |")

        # Ctrl-C mid-epoch, then --resume
        run = d / "interrupted"
        proc = subprocess.Popen([sys.executable, "-m", "rnnkit.cli", "train", *TINY, "--epochs", "200",
                                 "--out", str(run)], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            if line.startswith("epoch    5"):
                time.sleep(0.02)
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate()
        print(f"| SIGINT mid-training | `{err.strip().replace(str(d), 'TMP')}` | {proc.returncode} |")
        resumed = rnnkit("train", "--resume", str(run), "--quiet", cwd=d)
        print(f"| then `--resume` | `{resumed.stdout.strip().splitlines()[0].replace(str(d), 'TMP')}` ... "
              f"| {resumed.returncode} |")
        print(f"\nearlier good run unchanged by all of the above: {digest(good) == before}")


if __name__ == "__main__":
    main()
