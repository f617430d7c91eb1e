"""A round trip through every moving part: request -> broker -> worker -> database -> live stream."""

from __future__ import annotations

import structlog

from app.domain.notifications.events import EventLog
from app.workers.context import async_actor
from app.workers.queues import MAINTENANCE
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)


@async_actor(actor_name="diagnostics.round_trip", queue_name=MAINTENANCE, max_retries=0)
async def round_trip(token: str) -> None:
    """Record a broadcast `diagnostic.round_trip` event carrying `token` and the request id."""
    context = structlog.contextvars.get_contextvars()
    rt = runtime()
    async with rt.session() as session:
        events = EventLog(session)
        async with session.begin():
            record = await events.record(
                "diagnostic.round_trip", {"token": token, "request_id": context.get("request_id")}
            )
        await events.publish(rt.publisher)
    log.info("diagnostics.round_trip", token=token, event_id=record.id)
