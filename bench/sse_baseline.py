"""The baseline of bench.sse_capacity: the least an SSE server on granian can do, as a raw ASGI callable.

`granian --interface asgi bench.sse_baseline:app`. GET /events is a text/event-stream that
sends a `: connected` comment, then a keep-alive comment every HEARTBEAT_S seconds, and
each message published on the Redis channel CHANNEL (at SSE_BASELINE_REDIS_URL) as an
`event: bench` message. One Redis pub/sub connection per process fans out to one
asyncio.Queue per stream. No framework, no authentication, no database.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import redis.asyncio

CHANNEL = "bench.sse"
HEARTBEAT_S = 15.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_queues: set[asyncio.Queue[bytes]] = set()
_listener: asyncio.Task[None] | None = None
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


async def _listen() -> None:
    client = redis.asyncio.Redis.from_url(os.environ["SSE_BASELINE_REDIS_URL"])
    pubsub = client.pubsub()
    await pubsub.subscribe(CHANNEL)
    async for message in pubsub.listen():
        if message["type"] == "message":
            for queue in _queues:
                queue.put_nowait(message["data"])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _listener
    if scope["type"] != "http":
        return
    if _listener is None:
        _listener = asyncio.ensure_future(_listen())
    if scope["path"] != "/events":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    _queues.add(queue)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                body = b": keep-alive\n\n"
            else:
                body = b"event: bench\ndata: " + data + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
    finally:
        _queues.discard(queue)
