"""Housekeeping run on a schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.notifications.events import EventLog
from app.workers.context import async_actor
from app.workers.queues import MAINTENANCE
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)


@async_actor(actor_name="maintenance.purge_events", queue_name=MAINTENANCE, periodic=cron("@hourly"), max_retries=0)
async def purge_events() -> None:
    """Delete events older than EVENT_RETENTION_HOURS."""
    cutoff = datetime.now(UTC) - timedelta(hours=get_settings().event_retention_hours)
    async with runtime().session() as session, session.begin():
        deleted = await EventLog(session).purge(cutoff)
    log.info("maintenance.purge_events", deleted=deleted, cutoff=cutoff.isoformat())
