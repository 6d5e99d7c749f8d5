"""Every refused request is a 4xx with ``{"error": "one line"}`` (:class:`~rnnkit.serve.schemas.ErrorBody`).

The handlers below turn each way a request can fail into that shape: a :class:`Failure` raised by
a route (unknown run, over a limit), an :class:`~rnnkit.errors.RnnkitError` from the library (bad
sampling settings, a text the run cannot read: 422), FastAPI's validation errors (422, naming each
field) and Starlette's HTTP errors (404 for an unknown path, 405 for a wrong method).
"""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rnnkit.errors import RnnkitError


class Failure(Exception):
    """A request refused with ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def on_failure(request: Request, exc: Failure) -> JSONResponse:
    return error(exc.status, exc.message)


async def on_rnnkit_error(request: Request, exc: RnnkitError) -> JSONResponse:
    return error(422, str(exc))


async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
    return error(422, problems or "invalid request")


async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Failure, on_failure)
    app.add_exception_handler(RnnkitError, on_rnnkit_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)
