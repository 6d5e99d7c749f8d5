"""``rnnkit serve``: an HTTP API and a playground page for trained runs.

The API (FastAPI, served by uvicorn; the ``serve`` extra) answers JSON, streams generation as
server-sent events, and serves the page in ``rnnkit/static/`` under a ``default-src 'self'``
content security policy. Each run is loaded once, at start-up, from a consistent checkpoint
(a save that lands meanwhile is retried); restart the server to serve newer weights.

Model calls run in worker threads, never on the event loop. Limits (prompt and text length,
characters per stream, concurrent streams, body size) keep one client from taking the machine;
every bad request is a 4xx with ``{"error": ...}``.

The package, from the model outwards:

- :mod:`~rnnkit.serve.limits`: :class:`Limits`, what one request may ask for;
- :mod:`~rnnkit.serve.runs`: :class:`ServedRun`, :func:`load_served_run`, :func:`load_runs`;
- :mod:`~rnnkit.serve.analysis`: :func:`score` and :func:`activations`, the JSON of their routes;
- :mod:`~rnnkit.serve.streams`: generation streams (:class:`StreamBatcher`, :class:`GenerationJob`,
  the stream slots and the event-stream response);
- :mod:`~rnnkit.serve.schemas`: the request and response bodies, for ``/openapi.json``;
- :mod:`~rnnkit.serve.routes`, :mod:`~rnnkit.serve.errors`, :mod:`~rnnkit.serve.guard`,
  :mod:`~rnnkit.serve.app`: the routes, the error handlers, the middleware and :func:`create_app`;
- :mod:`~rnnkit.serve.server`: :func:`serve`, what ``rnnkit serve`` runs.

Only the first three (and :func:`serve`) are imported with the package: the CLI reads
:class:`Limits` at every start, and FastAPI, an optional extra, loads with the pieces that need
it (``create_app``, ``StreamBatcher``, ``GenerationJob``), on first use.
"""

from rnnkit.serve.analysis import activations, alternatives, score
from rnnkit.serve.limits import Limits
from rnnkit.serve.runs import ServedRun, load_runs, load_served_run
from rnnkit.serve.server import serve

LAZY = {
    "create_app": "rnnkit.serve.app",
    "StreamBatcher": "rnnkit.serve.streams",
    "GenerationJob": "rnnkit.serve.streams",
}  # name -> module; these need FastAPI

__all__ = [
    "Limits",
    "ServedRun",
    "load_served_run",
    "load_runs",
    "score",
    "activations",
    "alternatives",
    "serve",
    *LAZY,
]


def __getattr__(name: str) -> object:
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
