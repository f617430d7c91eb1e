"""Housekeeping run on a schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.audit.retention import purge_audit
from app.domain.notifications.events import EventLog
from app.workers.context import async_actor
from app.workers.queues import MAINTENANCE
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)


@async_actor(actor_name="maintenance.purge_events", queue_name=MAINTENANCE, periodic=cron("@hourly"), max_retries=0)
async def purge_events() -> None:
    """Delete events older than EVENT_RETENTION_HOURS, and audit rows older than AUDIT_RETENTION_DAYS (in batches)."""
    settings = get_settings()
    now = datetime.now(UTC)
    cutoff = now - timedelta(hours=settings.event_retention_hours)
    async with runtime().session() as session, session.begin():
        deleted = await EventLog(session).purge(cutoff)
    log.info("maintenance.purge_events", deleted=deleted, cutoff=cutoff.isoformat())
    audit_cutoff = now - timedelta(days=settings.audit_retention_days)
    audit_deleted = await purge_audit(runtime().sessions, audit_cutoff)
    log.info("maintenance.purge_audit", deleted=audit_deleted, cutoff=audit_cutoff.isoformat())
