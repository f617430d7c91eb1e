"""Broadcasts: an administrator's notification, written for many users off the request path."""

from __future__ import annotations

import msgspec
import structlog

from app.domain.notifications.services import Broadcast, deliver_broadcast
from app.workers.context import async_actor
from app.workers.queues import MAIL
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)


@async_actor(
    actor_name="notifications.broadcast", queue_name=MAIL, max_retries=5, min_backoff=1_000, max_backoff=60_000
)
async def broadcast(payload: dict[str, str | None]) -> None:
    """Write the notifications of one broadcast given as `msgspec.to_builtins(Broadcast)`.

    A redelivery (a retry after a crash halfway) only fills in the users not reached yet.
    """
    item = msgspec.convert(payload, Broadcast)
    rt = runtime()
    created = await deliver_broadcast(rt.sessions, rt.publisher, item)
    log.info("notifications.broadcast", broadcast_id=str(item.id), created=created)


def send_broadcast(item: Broadcast) -> None:
    """Queue a checked broadcast for delivery."""
    broadcast.send(msgspec.to_builtins(item))
