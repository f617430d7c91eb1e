"""A small server-sent events reader for tests, over a real HTTP connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    id: int
    event: str
    data: Any


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream response into events (comments are skipped, as browsers do)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield Event(
                    id=int(fields.get("id", "0")), event=fields.get("event", "message"), data=json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


async def collect(
    client: httpx.AsyncClient, url: str, count: int, *, headers: dict[str, str] | None = None, event: str | None = None
) -> list[Event]:
    """Open a stream and return its first `count` events (of type `event`, when given)."""
    found: list[Event] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for item in events(response):
            if event is None or item.event == event:
                found.append(item)
                if len(found) == count:
                    break
    return found
