"""The ASGI middleware in front of every route (:class:`Guard`).

Every response gets ``Content-Security-Policy: default-src 'self'`` (the page may load nothing
from elsewhere: a stray external request fails loudly) and ``X-Content-Type-Options: nosniff``.
A request body is refused before it is read when its declared length is over the limit (413) or
when it declares none (chunked: 411): the API's bodies are small JSON documents, and a body that
is never read cannot fill the memory.
"""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Guard:
    """ASGI middleware: security headers on every response, and the body size limit (module doc)."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'"), (b"x-content-type-options", b"nosniff")]
    DOCS_HEADERS = [
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data:"),  # Swagger UI's icons
        (b"x-content-type-options", b"nosniff"),
    ]

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(dict(scope.get("headers", [])))
        if refusal:
            body = json.dumps({"error": refusal[1]}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": refusal[0], "headers": [*headers, *self.HEADERS]})
            await send({"type": "http.response.body", "body": body})
            return

        headers = self.DOCS_HEADERS if scope["path"] == "/docs" else self.HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(status, message) for a body this server does not read, or ``None``."""
        declared = headers.get(b"content-length", b"0")
        if b"transfer-encoding" in headers:
            return 411, "a request body must declare its length (Content-Length)"
        if not declared.isdigit():
            return 400, "malformed Content-Length"
        if int(declared) > self.max_body:
            return 413, f"request body of {int(declared)} bytes; this server takes at most {self.max_body}"
        return None
