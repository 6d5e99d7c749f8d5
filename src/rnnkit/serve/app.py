"""The FastAPI application: the API's routes, the error handlers, the guard middleware, and the
playground's files.

The page and its assets are served from ``rnnkit/static/`` by name (no directory listing, no path
taken from the request), each with ``Cache-Control: no-cache``; the API page's Swagger UI comes
from the fastapi-offline package, mounted at ``/docs-assets``: nothing is loaded from a CDN.
"""

import importlib.resources
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from rnnkit.serve.errors import add_exception_handlers
from rnnkit.serve.guard import Guard
from rnnkit.serve.limits import Limits
from rnnkit.serve.routes import Served, router
from rnnkit.serve.runs import ServedRun

STATIC = Path(__file__).parent.parent / "static"  # rnnkit/static: package data
PAGES = (  # URL path, file in STATIC, media type
    ("/", "index.html", "text/html"),
    ("/app.js", "app.js", "text/javascript"),
    ("/style.css", "style.css", "text/css"),
    ("/docs", "docs.html", "text/html"),
    ("/docs.js", "docs.js", "text/javascript"),
    ("/favicon.svg", "favicon.svg", "image/svg+xml"),
)


def create_app(runs: dict[str, ServedRun], limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``runs``."""
    limits = limits or Limits()
    app = FastAPI(
        title="rnnkit",
        description="Character-level RNN language models: generate, score, look inside.",
        docs_url=None,
        redoc_url=None,
    )  # /docs: served below, no CDN
    app.state.served = Served.of(runs, limits)
    add_exception_handlers(app)
    app.add_middleware(Guard, max_body=limits.max_body)
    app.include_router(router)
    for path, name, media_type in PAGES:
        app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)(static_file(name, media_type))
    mount_docs_assets(app)
    return app


def static_file(name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    """A route answering the file ``name`` of the static directory."""
    path = STATIC / name

    async def serve_file() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return serve_file


def mount_docs_assets(app: FastAPI) -> None:
    """The API page's assets (Swagger UI), from the fastapi-offline package, at ``/docs-assets``."""
    try:
        from fastapi.staticfiles import StaticFiles

        assets = importlib.resources.files("fastapi_offline") / "static"
        app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")
    except (ImportError, RuntimeError):
        pass  # /docs then shows nothing; /openapi.json still describes the API
