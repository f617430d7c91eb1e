"""The lingering drain's rules (app.web.http.lingering), on the ASGI wrapper itself.

The server-level behaviour (a body sent after an early answer is read and the connection
serves on) is tested over a real socket in test_hostile_input.py; these are the rules no
real client shows cheaply: what is left alone, and where the drain stops.
"""

from __future__ import annotations

import anyio
import pytest
from litestar.types import Message, Receive, ReceiveMessage, Scope, Send

from app.web.http.lingering import DRAIN_BYTES, DrainUnreadBody


def http_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": headers}  # type: ignore[return-value]


class Client:
    """The body's chunks, handed out one per receive; counts what was asked for."""

    def __init__(self, chunks: int, size: int = 65536, disconnect_after: int | None = None) -> None:
        self.left = chunks
        self.size = size
        self.received = 0
        self.disconnect_after = disconnect_after

    async def receive(self) -> ReceiveMessage:
        self.received += 1
        if self.disconnect_after is not None and self.received > self.disconnect_after:
            return {"type": "http.disconnect"}
        self.left -= 1
        return {"type": "http.request", "body": b"x" * self.size, "more_body": self.left > 0}


async def early_answer(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that answers without reading the body."""


async def reads_it_all(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass


async def ignore(message: Message) -> None:
    return None


async def test_an_unread_body_is_read_to_its_end() -> None:
    client = Client(chunks=10)
    await DrainUnreadBody(early_answer)(http_scope([(b"content-length", b"655360")]), client.receive, ignore)
    assert client.received == 10
    assert client.left == 0


async def test_a_chunked_body_is_drained_too() -> None:
    client = Client(chunks=5)
    await DrainUnreadBody(early_answer)(http_scope([(b"transfer-encoding", b"chunked")]), client.receive, ignore)
    assert client.received == 5


async def test_a_body_the_app_read_is_not_asked_for_again() -> None:
    client = Client(chunks=3)
    await DrainUnreadBody(reads_it_all)(http_scope([(b"content-length", b"196608")]), client.receive, ignore)
    assert client.received == 3


async def test_no_body_and_a_body_declared_over_the_drain_are_left_alone() -> None:
    for headers in ([], [(b"content-length", str(DRAIN_BYTES + 1).encode())]):
        client = Client(chunks=100)
        await DrainUnreadBody(early_answer)(http_scope(headers), client.receive, ignore)
        assert client.received == 0


async def test_the_drain_stops_at_a_disconnect_and_after_its_bytes() -> None:
    client = Client(chunks=100, disconnect_after=4)
    await DrainUnreadBody(early_answer)(http_scope([(b"transfer-encoding", b"chunked")]), client.receive, ignore)
    assert client.received == 5  # four chunks, then the disconnect
    endless = Client(chunks=10**6, size=1024 * 1024)
    await DrainUnreadBody(early_answer)(http_scope([(b"transfer-encoding", b"chunked")]), endless.receive, ignore)
    assert endless.received == DRAIN_BYTES // (1024 * 1024) + 1


async def test_a_body_that_stops_coming_is_given_up_after_the_drain_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.web.http.lingering.DRAIN_SECONDS", 0.05)

    async def silent() -> ReceiveMessage:
        await anyio.sleep(3600)
        raise AssertionError("never")

    with anyio.fail_after(5):
        await DrainUnreadBody(early_answer)(http_scope([(b"content-length", b"1000")]), silent, ignore)


async def test_other_scopes_pass_through() -> None:
    client = Client(chunks=3)
    scope: Scope = {"type": "websocket", "path": "/", "headers": []}  # type: ignore[assignment]
    await DrainUnreadBody(early_answer)(scope, client.receive, ignore)
    assert client.received == 0
