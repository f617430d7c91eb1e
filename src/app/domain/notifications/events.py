"""The event log service: write events inside the caller's transaction, read them back in order.

Event ids are handed out in commit order, as each reader sees them: a reader who has
seen id N never later meets a smaller id among its events (its user's and those for
everyone). On Postgres each event insert first takes transaction advisory locks, held
until commit (SQLite serialises writers anyway): an event for one user takes the
"everyone" lock shared and that user's lock exclusively; an event for everyone takes the
"everyone" lock exclusively. So writers for different users never wait for each other
(only ids that no single reader sees can commit out of order), while two writers that a
reader could both see are serialised. Locks are always taken in that order (everyone,
then user), so they cannot deadlock each other. A writer holds its locks from its event
insert to its commit, which is why the event insert should come late in a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import msgspec
from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.notifications.models import Event

#: Arbitrary constant naming the advisory lock that orders events for everyone against all others.
EVENT_ORDER_LOCK = 7_406_281_113
#: First key of the two-key advisory locks that order one user's events (the second is from the user id).
USER_EVENT_LOCKS = 740_628


def _user_lock_key(user_id: UUID) -> int:
    """A 32-bit key from the user id's random tail; two users sharing one only queue behind each other."""
    return int.from_bytes(user_id.bytes[-4:], "big", signed=True)


BROADCAST_CHANNEL = "events.all"


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An event as it is published and as the live stream sends it."""

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime
    user_id: UUID | None = None


@runtime_checkable
class EventPublisher(Protocol):
    """Fans an encoded event out to live listeners (channels in the web, Redis in services mode)."""

    async def publish(self, channel: str, data: bytes) -> None: ...


def channel_for(user_id: UUID | None) -> str:
    """The channel that carries a user's events; events without a user go to everyone."""
    return f"events.user.{user_id}" if user_id is not None else BROADCAST_CHANNEL


def channels_for_reader(user_id: UUID | None) -> list[str]:
    """Every channel whose events a reader may see."""
    return [BROADCAST_CHANNEL] if user_id is None else [channel_for(user_id), BROADCAST_CHANNEL]


def _record(row: Event) -> EventRecord:
    return EventRecord(id=row.id, type=row.type, data=row.payload, created_at=row.created_at, user_id=row.user_id)


class EventLog:
    """Events of one session. `record` joins the caller's transaction; `publish` runs after its commit."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.pending: list[EventRecord] = []

    async def record(self, event_type: str, data: dict[str, Any], *, user_id: UUID | None = None) -> EventRecord:
        if self.session.bind is not None and self.session.bind.dialect.name == "postgresql":
            await self._order(user_id)
        row = Event(user_id=user_id, type=event_type, payload=data)
        self.session.add(row)
        await self.session.flush()
        record = _record(row)
        self.pending.append(record)
        return record

    async def _order(self, user_id: UUID | None) -> None:
        """Take the advisory locks that keep this event's id in commit order for its readers (see above)."""
        if user_id is None:
            await self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_ORDER_LOCK})
            return
        await self.session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": EVENT_ORDER_LOCK})
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": USER_EVENT_LOCKS, "key": _user_lock_key(user_id)},
        )

    async def publish(self, publisher: EventPublisher) -> None:
        """Publish what this log recorded; call after the transaction committed.

        A publish that fails is only late: readers re-check the table on every heartbeat.
        """
        pending, self.pending = self.pending, []
        for record in pending:
            await publisher.publish(channel_for(record.user_id), msgspec.json.encode(record))

    async def after(self, after_id: int, *, user_id: UUID | None, limit: int = 500) -> Sequence[EventRecord]:
        """Events a reader may see with an id above `after_id`, oldest first."""
        audience = (
            Event.user_id.is_(None) if user_id is None else or_(Event.user_id == user_id, Event.user_id.is_(None))
        )
        rows = await self.session.scalars(
            select(Event).where(Event.id > after_id, audience).order_by(Event.id).limit(limit)
        )
        return [_record(row) for row in rows]

    async def last_id(self) -> int:
        return int(await self.session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)

    async def purge(self, older_than: datetime) -> int:
        """Delete events created before `older_than`; returns how many."""
        result = await self.session.execute(delete(Event).where(Event.created_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
