"""Deployments sharing one Redis do not hear each other's live events and revocations (REDIS_NAMESPACE).

Litestar's Redis pub/sub backend names Redis channels as the app names them, so a second
deployment (or another test process of the same run) on the same Redis received this one's
`auth.revoked` announcements: each cleared this process's credential cache (seen as a flaky
test). The channels are now named after the deployment's prefix (`pubsub_name`), by the web's
backend and by the workers' and CLI's publisher alike.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio

from app.config import get_settings
from app.domain.accounts.revocation import REVOCATION_CHANNEL
from app.web.http.channels import ResilientRedisChannelsBackend
from app.workers.runtime import RedisPublisher, channels_key_prefix


async def _received(backend: ResilientRedisChannelsBackend, seconds: float) -> list[tuple[str, bytes]]:
    """What `backend` hears within `seconds`."""
    heard: list[tuple[str, bytes]] = []

    async def listen() -> None:
        async for channel, data in backend.stream_events():
            heard.append((channel, data))

    listener = asyncio.ensure_future(listen())
    await asyncio.sleep(seconds)
    listener.cancel()
    return heard


@pytest.mark.services
async def test_a_deployment_hears_its_own_channels_only() -> None:
    url = get_settings().redis_url
    ours, theirs = f"ours{uuid.uuid4().hex[:8]}", f"theirs{uuid.uuid4().hex[:8]}"
    clients = [redis.asyncio.Redis.from_url(url) for _ in range(2)]
    mine = ResilientRedisChannelsBackend(redis=clients[0], key_prefix=channels_key_prefix(ours))
    other = ResilientRedisChannelsBackend(redis=clients[1], key_prefix=channels_key_prefix(theirs))
    publisher = RedisPublisher(url, ours)
    try:
        for backend in (mine, other):
            await backend.subscribe([REVOCATION_CHANNEL])
        await publisher.publish(REVOCATION_CHANNEL, b"[]")  # the CLI's and workers' way
        await mine.publish(b"{}", [REVOCATION_CHANNEL])  # a web process's way
        heard_here, heard_there = await asyncio.gather(_received(mine, 1.0), _received(other, 1.0))
        assert heard_here == [(REVOCATION_CHANNEL, b"[]"), (REVOCATION_CHANNEL, b"{}")]
        assert heard_there == []
    finally:
        await publisher.close()
        for backend in (mine, other):
            await backend.on_shutdown()
        for client in clients:
            await client.aclose()
