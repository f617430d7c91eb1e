"""Telling users things: notifications, written with their `notification.created` event.

Also what a user does with them (list, count, read, delete: each change records a
`notification.updated` event) and administrators' broadcasts, written in batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID, uuid4

import msgspec
from advanced_alchemy.mixins.uuid import uuid7  # type: ignore[attr-defined]  # the models' own id default
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.errors import InvalidInput, NotFound
from app.domain.notifications.emails import PENDING
from app.domain.notifications.events import EventLog, EventPublisher, several_after, wake_everyone
from app.domain.notifications.models import Notification
from app.domain.notifications.schemas import NotificationOut, notification_out
from app.domain.text import control_problem

if TYPE_CHECKING:
    from sqlalchemy import Table

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
        .returning(Notification)
    )
    notification = await session.scalar(statement)
    if notification is None:
        return None
    await events.record(NOTIFICATION_CREATED, msgspec.to_builtins(notification_out(notification)), user_id=user_id)
    return notification


_NOTIFICATIONS = cast("Table", Notification.__table__)


#: A notification unless its dedupe key exists, its email `pending` when the owner wants email: one statement,
#: the same SQL on Postgres and SQLite. Text, not the dialects' `insert(...).on_conflict_do_nothing()`: those
#: constructs are not cacheable (`inherit_cache = False`), so SQLAlchemy compiled one for every task's end.
#: Returns the new row's email_status (no row when the key existed).
_INSERT_ONCE_SQL = (
    "INSERT INTO notification (id, user_id, category, title, message, is_read, task_id, dedupe_key, created_at, "
    "email_status, email_due_at, email_attempts) "
    "VALUES (:id, :owner, :category, :title, :message, :is_read, :task_id, :dedupe_key, :now, "
    "CASE WHEN (SELECT email_notifications FROM user_account WHERE id = :owner) THEN :pending END, "
    "CASE WHEN (SELECT email_notifications FROM user_account WHERE id = :owner) THEN :now END, 0) "
    "ON CONFLICT (dedupe_key) DO NOTHING "
    "RETURNING email_status"
)
_INSERT_ONCE_PARAMETERS = (
    bindparam("id", type_=_NOTIFICATIONS.c.id.type),
    bindparam("owner", type_=_NOTIFICATIONS.c.user_id.type),
    bindparam("category", type_=_NOTIFICATIONS.c.category.type),
    bindparam("title", type_=_NOTIFICATIONS.c.title.type),
    bindparam("message", type_=_NOTIFICATIONS.c.message.type),
    bindparam("is_read", type_=_NOTIFICATIONS.c.is_read.type),
    bindparam("task_id", type_=_NOTIFICATIONS.c.task_id.type),
    bindparam("dedupe_key", type_=_NOTIFICATIONS.c.dedupe_key.type),
    bindparam("now", type_=_NOTIFICATIONS.c.created_at.type),
    bindparam("pending", type_=_NOTIFICATIONS.c.email_status.type),
)
_INSERT_ONCE = text(_INSERT_ONCE_SQL).bindparams(*_INSERT_ONCE_PARAMETERS)
#: Postgres: the same insert and the user's events in one statement, `notification.created` (the last event)
#: only when the notification is new (`EventLog.record_several_after`).
_INSERT_ONCE_WITH_EVENTS = several_after(_INSERT_ONCE_SQL, _INSERT_ONCE_PARAMETERS)


class NewNotification(msgspec.Struct, frozen=True, kw_only=True):
    """A notification just written: what its `notification.created` event shows, and whether an email waits."""

    out: NotificationOut
    email_pending: bool


async def add_notification_once(
    events: EventLog,
    before: Sequence[tuple[str, dict[str, Any]]],
    *,
    user_id: UUID,
    category: str,
    title: str,
    message: str,
    dedupe_key: str,
    task_id: UUID | None = None,
) -> NewNotification | None:
    """`notify_once` without an ORM object, recorded after the user's events `before`: None when `dedupe_key`
    already existed (then only `before` is recorded).

    The email is marked pending in the same statement when the owner wants email, so no second read of
    the user and no second write of the row. On Postgres the notification, `before` and its
    `notification.created` are one statement (`EventLog.record_several_after`); on SQLite, two. The hot
    path of every task's end (app.domain.tasks.runner).
    """
    now = utcnow()
    out = NotificationOut(
        id=uuid7(),
        category=category,
        title=title,
        message=message,
        is_read=False,
        task_id=task_id,
        created_at=now,
        read_at=None,
    )
    parameters = {
        "id": out.id,
        "is_read": False,
        "pending": PENDING,
        "owner": user_id,
        "category": category,
        "title": title,
        "message": message,
        "task_id": task_id,
        "dedupe_key": dedupe_key,
        "now": now,
    }
    created = (NOTIFICATION_CREATED, msgspec.to_builtins(out))
    if events.postgres:
        statement, every = _INSERT_ONCE_WITH_EVENTS, [*before, created]
        _, wrote, email_status = await events.record_several_after(user_id, every, statement, parameters)
    else:
        row = (await events.session.execute(_INSERT_ONCE, parameters)).first()
        wrote, email_status = row is not None, row[0] if row is not None else None
        await events.record_several(user_id, [*before, created] if wrote else before)
    return NewNotification(out=out, email_pending=email_status == PENDING) if wrote else None


NOTIFICATION_UPDATED = "notification.updated"
SYSTEM = "system"
BROADCAST_BATCH = 1000
TITLE_MAX = 200
MESSAGE_MAX = 2000


class BroadcastRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What an administrator sends: no `user_id` means every active user."""

    title: str
    message: str
    user_id: UUID | None = None


class Broadcast(msgspec.Struct, frozen=True, kw_only=True):
    """A checked broadcast; `id` names it in every dedupe key, so a redelivery creates nothing twice.

    `sent_at`: a broadcast to everyone reaches the users who had signed up by then (the ones its
    answer counted), not those who sign up while it waits for a worker. None in a message queued
    before the field existed: everyone active at delivery.
    """

    id: UUID
    title: str
    message: str
    user_id: UUID | None = None
    sent_at: datetime | None = None


def new_broadcast(request: BroadcastRequest) -> Broadcast:
    """Check a broadcast request and give it its id; InvalidInput names each bad field."""
    title, message = request.title.strip(), request.message.strip()
    problems = {}
    if not 1 <= len(title) <= TITLE_MAX:
        problems["title"] = f"must be 1-{TITLE_MAX} characters"
    elif problem := control_problem(title):
        problems["title"] = problem
    if not 1 <= len(message) <= MESSAGE_MAX:
        problems["message"] = f"must be 1-{MESSAGE_MAX} characters"
    elif problem := control_problem(message, multiline=True):
        problems["message"] = problem
    if problems:
        raise InvalidInput(problems)
    return Broadcast(id=uuid4(), title=title, message=message, user_id=request.user_id, sent_at=utcnow())


def broadcast_dedupe_key(broadcast_id: UUID, user_id: UUID) -> str:
    return f"broadcast:{broadcast_id}:{user_id}"


class NotificationService:
    """A user's notifications: list, count, mark read, delete. Changes record `notification.updated`."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.events = EventLog(session)

    async def list(
        self, user_id: UUID, *, unread: bool = False, limit: int, offset: int
    ) -> tuple[Sequence[Notification], int]:
        """A page of the user's notifications, newest first, and how many there are in all."""
        where = [Notification.user_id == user_id]
        if unread:
            where.append(Notification.is_read.is_(False))
        total = await self.session.scalar(select(func.count()).select_from(Notification).where(*where))
        rows = await self.session.scalars(
            select(Notification)
            .where(*where)
            .order_by(Notification.created_at.desc(), Notification.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list(rows), int(total or 0)

    async def unread_count(self, user_id: UUID) -> int:
        count = await self.session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.user_id == user_id, Notification.is_read.is_(False))
        )
        return int(count or 0)

    async def get(self, user_id: UUID, notification_id: UUID) -> Notification:
        """The user's notification; NotFound also for another user's."""
        notification = await self.session.scalar(
            select(Notification).where(Notification.id == notification_id, Notification.user_id == user_id)
        )
        if notification is None:
            raise NotFound("No such notification.")
        return notification

    async def mark_read(self, user_id: UUID, notification_id: UUID) -> Notification:
        """Mark one notification read; reading it again changes nothing (read_at stays the first time)."""
        notification = await self.get(user_id, notification_id)
        if not notification.is_read:
            notification.is_read = True
            notification.read_at = utcnow()
            await self.session.flush()
            await self._record_updated(user_id, [notification.id])
        return notification

    async def mark_all_read(self, user_id: UUID) -> int:
        """Mark every unread notification of the user read; returns how many changed."""
        result = await self.session.execute(
            update(Notification)
            .where(Notification.user_id == user_id, Notification.is_read.is_(False))
            .values(is_read=True, read_at=utcnow())
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
        ids = list(result.scalars())
        if ids:
            await self._record_updated(user_id, ids)
        return len(ids)

    async def delete(self, user_id: UUID, notification_id: UUID) -> None:
        notification = await self.get(user_id, notification_id)
        await self.session.delete(notification)
        await self.session.flush()
        await self._record_updated(user_id, [notification_id])

    async def _record_updated(self, user_id: UUID, ids: Sequence[UUID]) -> None:
        """The `notification.updated` event: last in the transaction, after the unread count it carries."""
        unread = await self.unread_count(user_id)
        await self.events.record(
            NOTIFICATION_UPDATED, {"ids": [str(i) for i in ids], "unread": unread}, user_id=user_id
        )


async def count_recipients(session: AsyncSession, user_id: UUID | None) -> int:
    """How many users a broadcast reaches: the named user (NotFound when unknown), else every active user."""
    if user_id is not None:
        if await session.get(User, user_id) is None:
            raise NotFound("No such user.")
        return 1
    return int(await session.scalar(select(func.count()).select_from(User).where(User.is_active.is_(True))) or 0)


def _broadcast_out(notification_id: UUID, broadcast: Broadcast, created_at: datetime) -> NotificationOut:
    """A broadcast's new notification as `notification_out` shows it (it was inserted with these values)."""
    return NotificationOut(
        id=notification_id,
        category=SYSTEM,
        title=broadcast.title,
        message=broadcast.message,
        is_read=False,
        task_id=None,
        created_at=created_at,
        read_at=None,
    )


async def _notify_batch(session: AsyncSession, events: EventLog, broadcast: Broadcast, user_ids: Sequence[UUID]) -> int:
    """One notification per user unless its dedupe key exists, in one insert; an event for each one created.

    The events of a batch go in one insert too (`EventLog.record_many`), unless there is only one.
    """
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    ids = [uuid4() for _ in user_ids]
    rows = [
        {
            "id": notification_id,
            "user_id": user_id,
            "category": SYSTEM,
            "title": broadcast.title,
            "message": broadcast.message,
            "is_read": False,
            "dedupe_key": broadcast_dedupe_key(broadcast.id, user_id),
            "created_at": now,
        }
        for notification_id, user_id in zip(ids, user_ids, strict=True)
    ]
    # Core rather than ORM: building an ORM multi-row insert took most of a batch's time.
    table = cast("Table", Notification.__table__)
    statement = insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(table.c.id)
    created_ids = set((await session.execute(statement, rows)).scalars())
    if not created_ids:
        return 0
    items = [
        (user_id, msgspec.to_builtins(_broadcast_out(notification_id, broadcast, now)))
        for notification_id, user_id in zip(ids, user_ids, strict=True)
        if notification_id in created_ids
    ]
    if len(items) == 1:
        await events.record(NOTIFICATION_CREATED, items[0][1], user_id=items[0][0])
    else:
        await events.record_many(NOTIFICATION_CREATED, items)
    return len(items)


async def deliver_broadcast(
    sessions: async_sessionmaker[AsyncSession],
    publisher: EventPublisher,
    broadcast: Broadcast,
    *,
    batch_size: int = BROADCAST_BATCH,
) -> int:
    """Write a broadcast's notifications, `batch_size` users per transaction; returns how many were new.

    Safe to run again with the same broadcast (a redelivered message): the dedupe keys make
    the users it already reached get nothing twice. After each batch's commit its event is
    published, or, for a batch of several, one wake-up for every reader (`wake_everyone`).
    """
    after: UUID | None = None
    created = 0
    while True:
        query = select(User.id).order_by(User.id).limit(batch_size)
        if broadcast.user_id is not None:
            query = query.where(User.id == broadcast.user_id)
        else:
            query = query.where(User.is_active.is_(True))
            if broadcast.sent_at is not None:
                query = query.where(User.created_at <= broadcast.sent_at)
        if after is not None:
            query = query.where(User.id > after)
        async with sessions() as session:
            async with session.begin():
                user_ids = list(await session.scalars(query))
                if not user_ids:
                    return created
                events = EventLog(session)
                batch = await _notify_batch(session, events, broadcast, user_ids)
            await events.publish(publisher)
            if batch > 1:
                await wake_everyone(publisher)
            created += batch
        after = user_ids[-1]
