"""Telling users things: notifications, written with their `notification.created` event."""

from __future__ import annotations

from uuid import UUID

import msgspec
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.notifications.events import EventLog
from app.domain.notifications.models import Notification
from app.domain.notifications.schemas import notification_out

NOTIFICATION_CREATED = "notification.created"


async def notify_once(
    session: AsyncSession,
    events: EventLog,
    *,
    user_id: UUID,
    category: str,
    title: str,
    message: str,
    dedupe_key: str,
    task_id: UUID | None = None,
) -> Notification | None:
    """Create the notification named by `dedupe_key` unless it exists: None when it already did.

    The unique key, not a check-then-insert, makes "once" hold when the same job is
    delivered twice at the same moment.
    """
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(Notification)
        .values(
            user_id=user_id, category=category, title=title, message=message, task_id=task_id, dedupe_key=dedupe_key
        )
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(Notification.id)
    )
    created_id = await session.scalar(statement)
    if created_id is None:
        return None
    notification = await session.scalar(select(Notification).where(Notification.id == created_id))
    assert notification is not None
    await events.record(NOTIFICATION_CREATED, msgspec.to_builtins(notification_out(notification)), user_id=user_id)
    return notification
