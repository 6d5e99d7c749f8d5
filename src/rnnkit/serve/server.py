"""``rnnkit serve``: load the runs, bind, and serve with uvicorn until interrupted.

The socket is bound before uvicorn starts so that a busy port is a one-line error and ``--port 0``
can print the port it got. FastAPI and uvicorn are the ``serve`` extra: imported here, on use.
"""

import asyncio
import socket

import torch

from rnnkit.errors import RnnkitError
from rnnkit.serve.limits import Limits
from rnnkit.serve.runs import load_runs


def serve(
    run_dirs: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str | None = None,
    limits: Limits | None = None,
    threads: int = 1,
) -> None:
    """Load the runs, bind, say where, and serve until interrupted.

    ``threads``: PyTorch's intra-op threads for this process. One by default: a server's work is
    many small operations for requests that run side by side, and splitting each operation over
    threads costs more than it gains (measured: with two, 16 streams of the book's model got half
    the characters per second; scoring 20,000 characters with a 2x256 LSTM takes 2.1 s instead of
    1.4 s)."""
    torch.set_num_threads(threads)
    try:
        import uvicorn

        from rnnkit.serve.app import create_app
    except ImportError:
        raise RnnkitError("rnnkit serve needs FastAPI and uvicorn: pip install 'rnnkit[serve]'") from None

    runs = load_runs(run_dirs, checkpoint)
    app = create_app(runs, limits)
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise RnnkitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{r.name} ({r.checkpoint})" for r in runs.values())
    print(f"rnnkit: serving {names} at http://{shown}:{bound}/ (API docs at /docs; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
