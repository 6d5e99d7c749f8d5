#!/usr/bin/env python3
"""Load on ``rnnkit serve``: time to first character, characters/s per client and errors at 1, 4, 16
and 64 concurrent generation streams, for the book's model and a 2x256 LSTM; then server memory
over 1,000 requests. Loopback only, every stream bounded in length and time. Prints JSON.

Streams carry no seed (the server then steps them together, as one batch), except for one row per
model of 16 seeded streams, which the server computes one by one so that each is reproducible.
The server is a real ``rnnkit serve`` subprocess; the clients are one asyncio process with a
minimal HTTP reader (it only counts events, so that the load generator takes little of the CPU
the server needs). Both share this machine's cores: the numbers include that.

    .venv/bin/python benchmarks/serve_load.py [--chars 1000] > benchmarks/results/serve_load.json
"""

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_model

TRAIN = [
    "--epochs",
    "1",
    "--num-train",
    "256",
    "--num-val",
    "64",
    "--batch-size",
    "64",
    "--quiet",
    "--sample-every",
    "0",
]
MODELS = {"book": [], "lstm-2x256": ["--model", "lstm", "--layers", "2", "--hidden", "256"]}
EVENT = b'data: {"char"'


async def one_stream(host: str, port: int, run: str, chars: int, timeout: float, seed: int | None = None) -> dict:
    """One generation stream: seconds to the first character, characters per second after the
    request was sent, and whether it ended with ``done``."""
    started = time.perf_counter()
    seeded = "" if seed is None else f"&seed={seed}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(
            f"GET /api/generate?run={run}&prefix=the%20time&n={chars}{seeded} HTTP/1.1\r\n"
            f"Host: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        if b" 200 " not in status_line:
            writer.close()
            return {"error": status_line.decode(errors="replace").strip()}
        count, first, tail, done = 0, None, b"", False
        deadline = started + timeout
        while not done:
            block = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.perf_counter()))
            if not block:
                break
            data = tail + block
            count += data.count(EVENT)
            if first is None and count:
                first = time.perf_counter() - started
            done = b"event: done" in data
            tail = data[-(len(EVENT) - 1) :]
        writer.close()
        elapsed = time.perf_counter() - started
        if count != chars or not done:
            return {"error": f"stream ended after {count} of {chars} characters"}
        return {"first_s": first, "chars_per_s": count / elapsed, "seconds": elapsed}
    except (TimeoutError, asyncio.TimeoutError):
        return {"error": "timeout"}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def load(host: str, port: int, run: str, clients: int, chars: int, timeout: float, seeded: bool = False) -> dict:
    results = await asyncio.gather(
        *(one_stream(host, port, run, chars, timeout, i if seeded else None) for i in range(clients))
    )
    good = [r for r in results if "error" not in r]
    firsts = sorted(r["first_s"] for r in good)
    rates = sorted(r["chars_per_s"] for r in good)

    def p99(values):
        return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))] if values else None

    return {
        "clients": clients,
        "seeded": seeded,
        "chars_per_stream": chars,
        "errors": len(results) - len(good),
        "error_kinds": sorted({r["error"] for r in results if "error" in r}),
        "first_char_ms": {
            "median": round(1000 * statistics.median(firsts), 1) if firsts else None,
            "p99": round(1000 * p99(firsts), 1) if firsts else None,
        },
        "chars_per_s_per_client": {
            "median": round(statistics.median(rates)) if rates else None,
            "min": round(rates[0]) if rates else None,
        },
        "aggregate_chars_per_s": round(sum(r["chars_per_s"] for r in good)),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


async def memory_over_requests(host: str, port: int, run: str, requests: int, pid: int) -> list[int]:
    """Server RSS (KiB) every 250 requests of a mix: short streams, scores, activations."""
    import httpx

    samples = [rss_kib(pid)]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
        for i in range(requests):
            kind = i % 3
            if kind == 0:
                await one_stream(host, port, run, 50, 30)
            elif kind == 1:
                response = await client.post("/api/score", json={"run": run, "text": "the time machine " * 20})
                response.raise_for_status()
            else:
                (
                    await client.post("/api/activations", json={"run": run, "text": "the time machine " * 10})
                ).raise_for_status()
            if (i + 1) % 250 == 0:
                samples.append(rss_kib(pid))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1000, help="characters per stream")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a stream may take")
    parser.add_argument("--memory-requests", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    for name, options in MODELS.items():
        subprocess.run(
            [sys.executable, "-m", "rnnkit.cli", "train", *TRAIN, *options, "--out", str(work / name)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnkit.cli",
            "serve",
            *(str(work / m) for m in MODELS),
            "--port",
            "0",
            "--max-streams",
            str(max(args.clients)),
            "--max-chars",
            str(args.chars),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    address = server.stdout.readline().split("http://", 1)[1].split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    results: dict = {"cpu": cpu_model(), "python": platform.python_version(), "runs": {}}
    try:
        import torch

        results["torch"], results["threads"] = torch.__version__, torch.get_num_threads()
        for name in MODELS:
            asyncio.run(load(host, int(port), name, 2, 50, args.timeout))  # warm-up, not reported
            rows = []
            for clients in args.clients:
                row = asyncio.run(load(host, int(port), name, clients, args.chars, args.timeout))
                print(json.dumps({name: row}), file=sys.stderr, flush=True)
                rows.append(row)
            # streams with a seed are computed one by one (reproducible), not batched
            row = asyncio.run(load(host, int(port), name, 16, args.chars, args.timeout, seeded=True))
            print(json.dumps({name: row}), file=sys.stderr, flush=True)
            results["runs"][name] = rows + [row]
        samples = asyncio.run(memory_over_requests(host, int(port), "book", args.memory_requests, server.pid))
        results["memory"] = {
            "requests": args.memory_requests,
            "rss_kib_every_250": samples,
            "growth_kib_after_first_250": samples[-1] - samples[1] if len(samples) > 2 else None,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    book16 = next((r for r in results["runs"]["book"] if r["clients"] == 16 and not r["seeded"]), None)
    if book16:
        results["target_book_16_streams"] = {
            "each_at_least_1000_chars_per_s": book16["chars_per_s_per_client"]["min"] >= 1000,
            "p99_first_char_under_100_ms": book16["first_char_ms"]["p99"] < 100,
            "zero_errors": book16["errors"] == 0,
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
