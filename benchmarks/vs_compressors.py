#!/usr/bin/env python3
"""rnnkit compress against the usual compressors, side by side on this machine.

    .venv/bin/python benchmarks/vs_compressors.py                     # The Time Machine, Tiny Shakespeare
    .venv/bin/python benchmarks/vs_compressors.py --other-texts /tmp/texts --out benchmarks/results/x.json
    .venv/bin/python benchmarks/vs_compressors.py /tmp/ts10.txt --model-run /tmp/ts90run --out ...  # a trained run

Each compressor runs at its strongest setting in a fresh process of its own (which reports its
peak memory, Linux's VmHWM): gzip -9, bzip2 -9, xz -9e (Python's zlib, bz2, lzma),
zstd -19 (``zstandard``), brotli -11 (``brotli``), PPMd (``pyppmd``, variant H, 256 MiB, its best
order among 4-16) and ``rnnkit compress`` (adaptive), and with ``--model-run RUN_DIR`` also
``rnnkit compress --model RUN_DIR`` (a run trained on other text of the same kind: the first 90%
of a file, when the texts are its last 10%); the run's own ``rnnkit eval`` bits per character on
each text are recorded beside it. Every result is decompressed and compared with the original.
Reported: bits per byte of the original, compress and decompress KB/s (median of ``--repeats``;
1 KB = 1000 bytes; rnnkit's start — importing, loading its compiled model — is timed apart, as
``startup_s``), the worker's peak resident memory (the Python interpreter, the input, the
output and the compressor's own). Needs the ``bench`` and ``compress`` extras.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COMPRESSORS = ["gzip -9", "bzip2 -9", "xz -9e", "zstd -19", "brotli -11", "PPMd", "rnnkit", "rnnkit --model"]
PPMD_ORDERS = range(4, 17)


def codec(name: str, order: int = 6, length: int = 0, run: str | None = None):
    """(compress, decompress) functions of bytes for a compressor of :data:`COMPRESSORS` (``length``:
    the original's, which PPMd's decoder needs; ``run``: the run directory of ``rnnkit --model``)."""
    if name == "gzip -9":
        import gzip

        return lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress
    if name == "bzip2 -9":
        import bz2

        return lambda d: bz2.compress(d, 9), bz2.decompress
    if name == "xz -9e":
        import lzma

        return lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress
    if name == "zstd -19":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress
    if name == "brotli -11":
        import brotli

        return lambda d: brotli.compress(d, quality=11), brotli.decompress
    if name == "PPMd":
        import pyppmd

        def compress(data: bytes) -> bytes:
            encoder = pyppmd.Ppmd7Encoder(order, 256 << 20)
            return encoder.encode(data) + encoder.flush()

        def decompress(packed: bytes) -> bytes:  # PPMd H has no end mark: the length is known here
            return pyppmd.Ppmd7Decoder(order, 256 << 20).decode(packed, length)

        return compress, decompress
    if name == "rnnkit":
        from rnnkit.compress import compress_bytes, decompress_bytes

        return compress_bytes, decompress_bytes
    if name == "rnnkit --model":
        from rnnkit.compress import compress_bytes, decompress_bytes

        return lambda d: compress_bytes(d, model=run), lambda d: decompress_bytes(d, model=run)
    raise ValueError(name)


def worker(name: str, path: Path, order: int, run: str | None) -> None:
    """In the child: compress, decompress, check; print one JSON line."""
    data = path.read_bytes()
    started = time.perf_counter()
    compress, decompress = codec(name, order, len(data), run)
    if name.startswith("rnnkit"):  # its start (imports, the compiled model's loading) is reported on its own
        decompress(compress(b""))
    startup_s = time.perf_counter() - started
    started = time.perf_counter()
    packed = compress(data)
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    back = decompress(packed)
    decompress_s = time.perf_counter() - started
    if back != data:
        raise SystemExit(f"{name}: the round trip changed {path}")
    result = {"bytes": len(packed), "compress_s": compress_s, "decompress_s": decompress_s, "peak_mib": peak_mib()}
    result["startup_s"] = startup_s
    print(json.dumps(result))


def peak_mib() -> float:
    """This program's peak resident memory: VmHWM belongs to the memory map that ``exec`` made (the
    children's ``ru_maxrss`` would count the parent's pages, copied by ``fork``, as well)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def run_worker(name: str, path: Path, order: int = 6, run: Path | None = None, required: bool = True) -> dict | None:
    """One fresh process's result (with its peak resident memory in MiB); None for a worker that
    failed where not ``required`` (pyppmd 1.3 crashes at some orders on some texts: order 7 on
    python-stdlib.txt)."""
    command = [sys.executable, __file__, "--worker", name, str(path), "--order", str(order)]
    command += ["--model-run", str(run)] if run else []
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        if not required:
            print(f"{name} (order {order}) on {path}: the worker failed ({done.returncode}); skipped", file=sys.stderr)
            return None
        raise SystemExit(f"{name} on {path}: the worker failed")
    return json.loads(done.stdout)


def measure(name: str, path: Path, repeats: int, run: Path | None = None) -> dict:
    size = path.stat().st_size
    setting = name if name != "rnnkit --model" else f"rnnkit --model {run}"
    order = 6
    if name == "PPMd":  # its best order first (sizes only), then the timed repeats at that order
        tried = {o: run_worker(name, path, o, required=False) for o in PPMD_ORDERS}
        sizes = {o: result["bytes"] for o, result in tried.items() if result is not None}
        order = min(sizes, key=sizes.get)
        setting = f"PPMd var. H, order {order}, 256 MiB"
    runs = [run_worker(name, path, order, run) for _ in range(repeats)]
    return {
        "setting": setting,
        "bytes": runs[0]["bytes"],
        "bits_per_byte": 8 * runs[0]["bytes"] / size,
        "compress_kb_s": [size / 1000 / r["compress_s"] for r in runs],
        "decompress_kb_s": [size / 1000 / r["decompress_s"] for r in runs],
        "compress_kb_s_median": statistics.median(size / 1000 / r["compress_s"] for r in runs),
        "decompress_kb_s_median": statistics.median(size / 1000 / r["decompress_s"] for r in runs),
        "peak_mib": max(r["peak_mib"] for r in runs),
        "startup_s_median": statistics.median(r["startup_s"] for r in runs),
    }


def eval_bpc(run: Path, path: Path) -> float:
    """The run's ``rnnkit eval`` bits per character on ``path`` (its best checkpoint where kept)."""
    from rnnkit import Run

    return Run.load(run).evaluate(str(path)).bpc


def table(results: list[dict]) -> str:
    lines = [
        "| text | bytes | " + " | ".join(COMPRESSORS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in COMPRESSORS) + " |",
    ]
    for text in results:
        cells = [f"{text['results'][c]['bits_per_byte']:.3f}" if c in text["results"] else "" for c in COMPRESSORS]
        lines.append(f"| {text['text']} | {text['bytes']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", type=Path, help="files (default: The Time Machine, Tiny Shakespeare)")
    parser.add_argument("--other-texts", type=Path, metavar="DIR", help="also benchmarks/other_texts.py's, built here")
    parser.add_argument("--compressors", nargs="+", choices=COMPRESSORS, default=COMPRESSORS)
    parser.add_argument("--model-run", type=Path, metavar="RUN_DIR", help="a trained run for rnnkit --model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each compressor (sizes do not vary)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_compressors.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--order", type=int, default=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.texts[0], args.order, args.model_run)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # not in a worker: common imports torch
    from common import cpu_model

    texts = args.texts or [DATA / "timemachine.txt", DATA / "tinyshakespeare.txt"]
    if args.other_texts:
        from other_texts import build

        texts += [p for p in build(args.other_texts) if p.name != "timemachine.txt" or p not in texts]
    results = []
    for path in texts:
        entry = {"text": path.name, "bytes": path.stat().st_size, "results": {}}
        for name in args.compressors:
            if name == "rnnkit --model" and not args.model_run:
                continue
            entry["results"][name] = measure(name, path, args.repeats, args.model_run)
            print(f"{path.name}: {name}: {json.dumps(entry['results'][name])}", file=sys.stderr, flush=True)
        if args.model_run:
            entry["model_run_eval_bpc"] = eval_bpc(args.model_run, path)
        results.append(entry)
    report = {"cpu": cpu_model(), "repeats": args.repeats, "texts": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(report, f, indent=1)
    os.replace(f.name, args.out)
    print(json.dumps(report, indent=1))
    print(table(results), file=sys.stderr)


if __name__ == "__main__":
    main()
