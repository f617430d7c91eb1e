"""A body the app answered without reading is read to its end before the request ends (a lingering close).

An early answer (a 413 for a body over MAX_BODY_BYTES, seen from its Content-Length; a 401,
403 or 429 before the handler reads) leaves the rest of the body unread. The server then
closes the connection with that data in its receive buffer, and the kernel answers with a
reset, which can reach a client still sending its body before the answer does: the client
saw "Server disconnected without sending a response" instead of the 413 (httpx sends the
whole body before it reads). So, as nginx's lingering close does, the rest is read and
dropped once the answer is out: at most DRAIN_BYTES in DRAIN_SECONDS, and none when the
declared length is already over that (such a client is cut off as before).
"""

from __future__ import annotations

import anyio
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

#: The most of an unread body read and dropped after an early answer, and for how long at most.
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length; 0 for no body, None for a chunked one (length unknown)."""
    chunked = False
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return None if chunked else 0


class DrainUnreadBody:
    """Wraps the app's outermost ASGI handler (see `linger_after_answers`), so every early answer is
    covered: the route's own refusals and its middleware's (401, 403, 413, 429), and those answered
    before any route runs (the router's 404 and 405, CSRF, RefuseNul's 400)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        ended = False  # the body was read to its end, or the client left

        async def tracked() -> ReceiveMessage:
            nonlocal ended
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                ended = True
            return message

        await self.app(scope, tracked, send)
        if ended:
            return
        length = _declared_length(scope)
        if length == 0 or (length is not None and length > DRAIN_BYTES):
            return
        read = 0
        with anyio.move_on_after(DRAIN_SECONDS):
            while read <= DRAIN_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                body = message.get("body", b"")
                read += len(body) if isinstance(body, bytes) else 0


def linger_after_answers(app: Litestar) -> None:
    """Put the drain around `app`'s ASGI handler: the exception handler and CORS that Litestar wraps
    around its router, outside every middleware. Litestar takes no middleware at that depth."""
    app.asgi_handler = DrainUnreadBody(app.asgi_handler)
