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
from functools import lru_cache
from typing import Any, Protocol, cast, runtime_checkable
from uuid import UUID

import msgspec
from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    Integer,
    Table,
    Text,
    TextClause,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.sql.dml import ReturningInsert

from app.domain.clock import utcnow
from app.domain.driver import Executor, Transaction, is_postgres, orm_session
from app.domain.notifications.models import Event

#: Arbitrary constant naming the advisory lock that orders events for everyone against all others.
EVENT_ORDER_LOCK = 7_406_281_113
#: First key of the two-key advisory locks that order one user's events (the second is from the user id).
USER_EVENT_LOCKS = 740_628


def _user_lock_key(user_id: UUID) -> int:
    """A 32-bit key from the user id's random tail; two users sharing one only queue behind each other."""
    return int.from_bytes(user_id.bytes[-4:], "big", signed=True)


def _lock_keys(user_id: UUID | None) -> dict[str, int]:
    if user_id is None:
        return {"everyone": EVENT_ORDER_LOCK}
    return {"everyone": EVENT_ORDER_LOCK, "space": USER_EVENT_LOCKS, "key": _user_lock_key(user_id)}


def _locks_sql(user_id: UUID | None) -> str:
    """`_USER_LOCKS` (or `_EVERYONE_LOCK`) with its keys written in: integers of this module, no outside value."""
    keys = {name: int(value) for name, value in _lock_keys(user_id).items()}
    return (_EVERYONE_LOCK_SQL if user_id is None else _USER_LOCKS_SQL).format(**keys)


def user_lock_expressions(user_id: Any) -> tuple[Any, Any]:
    """SQL expressions that take, in this order, the locks an event of user `user_id` (a uuid column) takes.

    For a statement that learns its user as it runs (the task claim's RETURNING, which
    evaluates them left to right), so that it holds them before its next statement, as
    `lock` does. Postgres only: the key is `_user_lock_key`'s, the id's last 32 bits, signed.
    """
    tail = func.right(func.replace(sql_cast(user_id, Text), "-", ""), 8)
    key = sql_cast(sql_cast(literal("x") + tail, BIT(32)), Integer)
    return (
        func.pg_advisory_xact_lock_shared(literal(EVENT_ORDER_LOCK, BigInteger)),
        func.pg_advisory_xact_lock(literal(USER_EVENT_LOCKS, Integer), key),
    )


#: The locks an event takes (see above). A select list is evaluated in order, so the
#: "everyone" lock always comes before the user's.
#: (As format strings, for `_locks_sql`; with bound parameters below.)
_USER_LOCKS_SQL = (
    "SELECT pg_advisory_xact_lock_shared(CAST({everyone} AS bigint)) AS everyone, "
    "pg_advisory_xact_lock({space}, {key}) AS mine"
)
_EVERYONE_LOCK_SQL = "SELECT pg_advisory_xact_lock(CAST({everyone} AS bigint)) AS everyone"
_USER_LOCKS = _USER_LOCKS_SQL.format(everyone=":everyone", space=":space", key=":key")
_EVERYONE_LOCK = _EVERYONE_LOCK_SQL.format(everyone=":everyone")
#: An event insert fed by the one row of a CTE that takes those locks: the id is drawn once they are held.
_USER_INSERT = (
    "WITH locks AS (SELECT pg_advisory_xact_lock_shared(CAST(:everyone AS bigint)) AS everyone, "
    "pg_advisory_xact_lock(:space, :key) AS mine) "
    "INSERT INTO event (user_id, type, payload, created_at) "
    "SELECT CAST(:user_id AS uuid), :type, CAST(:payload AS jsonb), CAST(:created_at AS timestamptz) FROM locks "
    "RETURNING id"
)
_EVERYONE_INSERT = (
    "WITH locks AS (SELECT pg_advisory_xact_lock(CAST(:everyone AS bigint)) AS everyone) "
    "INSERT INTO event (user_id, type, payload, created_at) "
    "SELECT CAST(:user_id AS uuid), :type, CAST(:payload AS jsonb), CAST(:created_at AS timestamptz) FROM locks "
    "RETURNING id"
)


_USER_LOCKS_CTE = (
    "locks AS (SELECT pg_advisory_xact_lock_shared(CAST(:everyone AS bigint)) AS everyone, "
    "pg_advisory_xact_lock(:space, :key) AS mine) "
)
_INSERT_FROM_ARRAYS = (
    "INSERT INTO event (user_id, type, payload, created_at) "
    "SELECT CAST(:user_id AS uuid), e.type, CAST(e.payload AS jsonb), CAST(:created_at AS timestamptz) "
    "FROM locks, unnest(CAST(:types AS text[]), CAST(:payloads AS text[])) WITH ORDINALITY AS e(type, payload, n) "
)
#: Several events of one user in one statement, in the order given: the rows come out of `unnest ... WITH
#: ORDINALITY` sorted, and each draws its id as it reaches the insert, after the locks are held.
_USER_INSERT_SEVERAL = f"WITH {_USER_LOCKS_CTE}{_INSERT_FROM_ARRAYS}ORDER BY e.n RETURNING id"


def _typed(sql: str) -> TextClause:
    columns = Event.__table__.c
    return text(sql).bindparams(
        bindparam("user_id", type_=columns.user_id.type),
        bindparam("type", type_=columns.type.type),
        bindparam("payload", type_=columns.payload.type),
        bindparam("created_at", type_=columns.created_at.type),
    )


_INSERT_FOR_USER = _typed(_USER_INSERT)
_INSERT_FOR_EVERYONE = _typed(_EVERYONE_INSERT)
_EVENTS = cast(Table, Event.__table__)
#: The types of the parameters of an insert of several events that SQL does not cast itself.
_SEVERAL_TYPES = (
    bindparam("user_id", type_=_EVENTS.c.user_id.type),
    bindparam("created_at", type_=_EVENTS.c.created_at.type),
)
_INSERT_SEVERAL_FOR_USER = text(_USER_INSERT_SEVERAL).bindparams(*_SEVERAL_TYPES)


def several_after(insert_sql: str, parameters: Sequence[BindParameter[Any]]) -> TextClause:
    """Postgres: `insert_sql` (an INSERT that returns one column of the row it writes, or no row) and a
    user's events in one statement, the last event only when the insert wrote its row; each row it returns
    is an event's id and the insert's value. For `EventLog.record_several_after`; `parameters` are the
    insert's, typed."""
    # SQL text of this module and of the caller's, put together once at import; every value is bound.
    sql = (
        f"WITH written AS ({insert_sql}), {_USER_LOCKS_CTE}{_INSERT_FROM_ARRAYS}"  # noqa: S608
        "WHERE e.n < cardinality(CAST(:types AS text[])) OR EXISTS (SELECT FROM written) "
        "ORDER BY e.n RETURNING id, (SELECT * FROM written)"
    )
    return text(sql).bindparams(*parameters, *_SEVERAL_TYPES)


#: SQLite: several rows, their ids returned in the order of the rows given.
_INSERT_SEVERAL = insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
_TAKE_USER_LOCKS = text(_USER_LOCKS)
#: SQLite: a write that changes nothing, which takes the database's write lock until commit.
_TAKE_SQLITE_WRITE_LOCK = text("UPDATE event SET id = id WHERE 0")
_TAKE_EVERYONE_LOCK = text(_EVERYONE_LOCK)


@lru_cache(maxsize=8)
def _insert_unless(refused: ColumnElement[bool]) -> ReturningInsert[tuple[int]]:
    """Postgres: `_USER_INSERT`, writing nothing when `refused` holds (see `EventLog.record_unless`)."""
    columns = _EVENTS.c
    user = bindparam("user_id", type_=columns.user_id.type)
    locks = select(*user_lock_expressions(user)).cte("locks")
    row = (
        select(
            user,
            bindparam("type", type_=columns.type.type),
            bindparam("payload", type_=columns.payload.type),
            bindparam("created_at", type_=columns.created_at.type),
        )
        .select_from(locks)
        .where(~refused)
    )
    return insert(_EVENTS).from_select(["user_id", "type", "payload", "created_at"], row).returning(columns.id)


def _several_parameters(user_id: UUID, events: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> dict[str, Any]:
    """Postgres: the parameters of `_USER_INSERT_SEVERAL` (and of `several_after`'s events)."""
    return {
        "user_id": user_id,
        "created_at": now,
        "types": [event_type for event_type, _ in events],
        "payloads": [msgspec.json.encode(data).decode() for _, data in events],
        **_lock_keys(user_id),
    }


BROADCAST_CHANNEL = "events.all"
#: What a batch of events for many users publishes instead of a message per event (see `record_many`).
WAKE_UP = b"{}"


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


async def wake_everyone(publisher: EventPublisher) -> None:
    """Wake every reader (after `record_many`'s commit): one message on everyone's channel."""
    await publisher.publish(BROADCAST_CHANNEL, WAKE_UP)


def channels_for_reader(user_id: UUID | None) -> list[str]:
    """Every channel whose events a reader may see."""
    return [BROADCAST_CHANNEL] if user_id is None else [channel_for(user_id), BROADCAST_CHANNEL]


def _record(row: Event) -> EventRecord:
    return EventRecord(id=row.id, type=row.type, data=row.payload, created_at=row.created_at, user_id=row.user_id)


class EventLog:
    """Events of one transaction (a session's, or a driver's on a hot path: app.domain.driver). `record`
    joins the caller's transaction; `publish` runs after its commit."""

    def __init__(self, session: Executor) -> None:
        self.session = session
        self.pending: list[EventRecord] = []
        #: Whether this log's transaction is on Postgres (advisory locks; statements SQLite cannot run).
        self.postgres = is_postgres(session)

    async def record(self, event_type: str, data: dict[str, Any], *, user_id: UUID | None = None) -> EventRecord:
        await self.session.flush()  # the caller's pending changes go first, as with an ORM insert
        values: dict[str, Any] = {"user_id": user_id, "type": event_type, "payload": data, "created_at": utcnow()}
        if self.postgres:
            # One round trip: the locks (taken again if already held), then the insert.
            # The statement is built once: its values go as parameters, not bound into a copy of it.
            locked_insert = _INSERT_FOR_EVERYONE if user_id is None else _INSERT_FOR_USER
            result = await self.session.execute(locked_insert, {**values, **_lock_keys(user_id)})
        else:
            result = await self.session.execute(insert(Event).values(**values).returning(Event.id))
        event_id = int(result.scalar_one())
        record = EventRecord(id=event_id, type=event_type, data=data, created_at=values["created_at"], user_id=user_id)
        self.pending.append(record)
        return record

    async def record_unless(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        user_id: UUID,
        refused: ColumnElement[bool],
        parameters: dict[str, Any],
    ) -> EventRecord | None:
        """`record` on Postgres, by a statement that writes nothing when `refused` (with `parameters`) holds:
        None then, and the caller rolls back.

        A check and the event in one round trip. `refused` sees what was committed when this statement
        began, so a check that `user_id`'s locks must serialise needs them taken by an earlier statement
        of the transaction: the task claim's RETURNING takes them, and its event counts the owner's running
        tasks again this way (app.domain.tasks.runner). A parameter of `refused` named `user_id` is the
        event's user.
        """
        await self.session.flush()
        values: dict[str, Any] = {"user_id": user_id, "type": event_type, "payload": data, "created_at": utcnow()}
        result = await self.session.execute(_insert_unless(refused), {**parameters, **values})
        event_id = result.scalar_one_or_none()
        if event_id is None:
            return None
        record = EventRecord(id=event_id, type=event_type, data=data, created_at=values["created_at"], user_id=user_id)
        self.pending.append(record)
        return record

    async def record_several(self, user_id: UUID, events: Sequence[tuple[str, dict[str, Any]]]) -> list[EventRecord]:
        """Several events of one user, in the order given, in one statement (one round trip instead of one each).

        What a transaction that ends a task records: its `task.updated`, then the
        notification's `notification.created`. Locks and id order as with `record`.
        """
        if not events:
            return []
        await self.session.flush()
        now = utcnow()
        if self.postgres:
            parameters = _several_parameters(user_id, events, now)
            # Drawn in the order of the rows: ascending ids are the events in the order given.
            ids = sorted(
                int(event_id)
                for event_id in (await self.session.execute(_INSERT_SEVERAL_FOR_USER, parameters)).scalars()
            )
        else:
            rows = [
                {"user_id": user_id, "type": event_type, "payload": data, "created_at": now}
                for event_type, data in events
            ]
            ids = [int(event_id) for event_id in (await self.session.execute(_INSERT_SEVERAL, rows)).scalars()]
        return self._pending(user_id, ids, events, now)

    async def record_several_after(
        self,
        user_id: UUID,
        events: Sequence[tuple[str, dict[str, Any]]],
        statement: TextClause,
        parameters: dict[str, Any],
    ) -> tuple[list[EventRecord], bool, Any]:
        """Postgres: `record_several` in one statement with an insert of another table (`statement`, built by
        `several_after`, with `parameters` for its insert): the last of `events` is recorded only when that
        insert wrote its row, as the event of that row (a notification written once, and its
        `notification.created`). Returns the records, whether the insert wrote its row, and the value it
        returned (None when it wrote nothing).
        """
        await self.session.flush()
        now = utcnow()
        values = _several_parameters(user_id, events, now)
        rows = (await self.session.execute(statement, {**parameters, **values})).all()
        wrote = len(rows) == len(events)
        ids = sorted(int(row[0]) for row in rows)
        records = self._pending(user_id, ids, events if wrote else events[:-1], now)
        return records, wrote, rows[0][1] if wrote else None

    def _pending(
        self, user_id: UUID, ids: Sequence[int], events: Sequence[tuple[str, dict[str, Any]]], now: datetime
    ) -> list[EventRecord]:
        """The records of `events` written with `ids` (in their order), kept to publish after commit."""
        records = [
            EventRecord(id=event_id, type=event_type, data=data, created_at=now, user_id=user_id)
            for event_id, (event_type, data) in zip(ids, events, strict=True)
        ]
        self.pending.extend(records)
        return records

    def written(self, record: EventRecord) -> None:
        """An event the caller inserted itself, to publish with the others after commit.

        For a statement that writes an event along with the change it reports (the task
        submission's, app.domain.tasks.services): it must run with `lock` held for the
        event's user in this transaction, so that its id is drawn under the locks as here.
        """
        self.pending.append(record)

    async def lock(self, user_id: UUID | None) -> None:
        """Take now, until commit, the locks that an event for `user_id` takes (Postgres; see above).

        A caller takes them early to serialise a check with the writes it guards: every
        other transaction that records an event for this user waits until this one commits.
        SQLite has one writer at a time: there, this begins the transaction's write now, so
        the check and the writes go together before any other writer's.
        """
        if isinstance(self.session, Transaction):  # with the transaction's BEGIN, in one round trip
            await self.session.begin_with(_locks_sql(user_id))
        elif self.postgres:
            locks = _TAKE_EVERYONE_LOCK if user_id is None else _TAKE_USER_LOCKS
            await self.session.execute(locks, _lock_keys(user_id))
        else:
            await self.session.execute(_TAKE_SQLITE_WRITE_LOCK)

    async def record_many(self, event_type: str, items: Sequence[tuple[UUID, dict[str, Any]]]) -> list[EventRecord]:
        """One event per (user id, data), in one insert: for a batch that reaches many users (a broadcast).

        On Postgres it takes the "everyone" lock exclusively, as an event for everyone does,
        instead of each user's: ordered against every other writer, its ids are in commit
        order for every reader. The events are not published one by one: after the commit,
        `wake_everyone` sends one message, and every reader reads the table (readers treat
        any message as a wake-up). A broadcast to 1,000 users went from 1,000 inserts and
        1,000 publishes to 2 inserts and 2 publishes.
        """
        if not items:
            return []
        await self.session.flush()
        if self.postgres:
            await self.session.execute(_TAKE_EVERYONE_LOCK, _lock_keys(None))
        now = utcnow()
        rows = [{"user_id": user_id, "type": event_type, "payload": data, "created_at": now} for user_id, data in items]
        statement = insert(Event).returning(Event.id, Event.user_id, sort_by_parameter_order=True)
        result = await self.session.execute(statement, rows)
        records = []
        for (event_id, user_id), (wanted, data) in zip(result.all(), items, strict=True):
            assert user_id == wanted
            records.append(EventRecord(id=event_id, type=event_type, data=data, created_at=now, user_id=user_id))
        return records

    async def publish(self, publisher: EventPublisher) -> None:
        """Wake the readers of what this log recorded; call after the transaction committed.

        One message per channel, the newest event of that channel: a message is only a wake-up
        (readers read the table after it), so the end of a task, which records its `task.updated`
        and its `notification.created`, costs one publish, not two. A publish that fails is only
        late: readers re-check the table on every heartbeat.
        """
        pending, self.pending = self.pending, []
        newest = {channel_for(record.user_id): record for record in pending}
        for channel, record in newest.items():
            await publisher.publish(channel, msgspec.json.encode(record))

    async def after(self, after_id: int, *, user_id: UUID | None, limit: int = 500) -> Sequence[EventRecord]:
        """Events a reader may see with an id above `after_id`, oldest first."""
        audience = (
            Event.user_id.is_(None) if user_id is None else or_(Event.user_id == user_id, Event.user_id.is_(None))
        )
        rows = await orm_session(self.session).scalars(
            select(Event).where(Event.id > after_id, audience).order_by(Event.id).limit(limit)
        )
        return [_record(row) for row in rows]

    async def last_id(self, user_id: UUID) -> int:
        """The newest id among a reader's events (its user's and everyone's); 0 when there is none.

        A stream that starts after it misses none of them. The newest id of the whole table
        would not do: events of different users may commit out of id order (see above), so
        an event of this user could still commit below it.
        """
        newest = union_all(
            select(func.max(Event.id).label("id")).where(Event.user_id == user_id),
            select(func.max(Event.id).label("id")).where(Event.user_id.is_(None)),
        ).subquery()
        return int(await orm_session(self.session).scalar(select(func.coalesce(func.max(newest.c.id), 0))) or 0)

    async def purge(self, older_than: datetime) -> int:
        """Delete events created before `older_than`; returns how many."""
        result = await orm_session(self.session).execute(delete(Event).where(Event.created_at < older_than))
        return int(getattr(result, "rowcount", 0) or 0)
