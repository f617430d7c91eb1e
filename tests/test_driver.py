"""The hot paths' transactions straight through asyncpg (app.domain.driver), against a session's (Postgres).

What a session would give: the same values back (uuid, aware datetimes, JSON, NULL), SQLAlchemy's
errors, nothing written by a transaction that fails or is rolled back; and what a session's pool
guarantees: a connection cut off mid-statement never goes back to the pool inside a transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.config import get_settings
from app.domain.accounts.models import User
from app.domain.database import create_engine, create_read_engine, read
from app.domain.driver import Transaction, transaction, writing
from app.domain.notifications import events as events_module
from app.domain.notifications.events import EventLog

pytestmark = pytest.mark.services

_USER = """
INSERT INTO user_account (id, email, username, is_active, is_verified, is_superuser, email_notifications,
                          credentials_version, created_at, updated_at)
VALUES (:user_id, :email, :username, true, true, false, false, 1, now(), now())
"""


@pytest.fixture
async def engine(migrated: None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(get_settings())
    yield engine
    await engine.dispose()


async def _new_user(engine: AsyncEngine) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with engine.begin() as connection:
        name = f"d{user_id.hex[:10]}"
        await connection.execute(text(_USER), {"user_id": user_id, "email": f"{name}@example.com", "username": name})
    return user_id


async def test_events_written_through_the_driver_read_back_as_a_sessions(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)
    data = {"text": "naïve \u2603", "nested": {"list": [1, 2.5, None, True]}, "none": None}
    async with transaction(engine) as tx:
        assert isinstance(tx, Transaction)
        events = EventLog(tx)
        first = await events.record("probe.one", data, user_id=user_id)
        second, third = await events.record_several(user_id, [("probe.two", {"n": 2}), ("probe.three", {})])
    assert first.id < second.id < third.id
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        read = await EventLog(session).after(first.id - 1, user_id=user_id)
    assert [(event.id, event.type, event.data, event.user_id) for event in read] == [
        (first.id, "probe.one", data, user_id),
        (second.id, "probe.two", {"n": 2}, user_id),
        (third.id, "probe.three", {}, user_id),
    ]
    assert read[0].created_at == first.created_at  # aware, to the microsecond
    assert read[0].created_at.tzinfo is not None


async def test_a_failed_statement_raises_sqlalchemys_error_and_writes_nothing(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)
    insert = text(
        "INSERT INTO user_account (id, email, username, is_active, is_verified, is_superuser, "
        "email_notifications, credentials_version, created_at, updated_at) "
        "VALUES (:id, :email, :username, true, true, false, false, 1, now(), now())"
    )

    async def duplicate() -> None:
        async with transaction(engine) as tx:
            await EventLog(tx).record("probe.lost", {}, user_id=user_id)
            await tx.execute(insert, {"id": user_id, "email": "x@example.com", "username": "x"})  # a duplicate id

    with pytest.raises(IntegrityError):
        await duplicate()
    assert await _count_events(engine, user_id) == 0
    # The connection went back to the pool clean: the next transaction on it works.
    async with transaction(engine) as tx:
        await EventLog(tx).record("probe.kept", {}, user_id=user_id)
    assert await _count_events(engine, user_id) == 1


async def test_rollback_writes_nothing(engine: AsyncEngine) -> None:
    user_id = await _new_user(engine)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with writing(sessions) as tx:
        await EventLog(tx).record("probe.undone", {}, user_id=user_id)
        await tx.rollback()
    assert await _count_events(engine, user_id) == 0


async def test_a_transaction_cut_off_mid_statement_leaves_no_connection_in_a_transaction(migrated: None) -> None:
    """A cancel (a worker stopping, a timeout) in the middle of a statement: the connection is not given back
    to the pool inside the transaction SQLAlchemy does not know of (the next checkout would run in it)."""
    settings = msgspec.structs.replace(get_settings(), database_pool_size=1, database_max_overflow=0)
    engine = create_engine(settings)
    try:
        user_id = await _new_user(engine)

        async def slow() -> None:
            async with transaction(engine) as tx:
                await EventLog(tx).record("probe.cut", {}, user_id=user_id)
                await tx.execute(text("SELECT pg_sleep(30)"))

        running = asyncio.create_task(slow())
        await asyncio.sleep(1.0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        async with engine.connect() as connection:  # the pool's one connection, or a new one
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            assert not driver.is_in_transaction()
        assert await _count_events(engine, user_id) == 0
    finally:
        await engine.dispose()


async def test_a_connection_that_broke_is_not_handed_out_again(migrated: None) -> None:
    """The server ends the connection mid-transaction: the error is SQLAlchemy's, marked as a disconnect, and the
    pool's next checkout is a working connection."""
    settings = msgspec.structs.replace(get_settings(), database_pool_size=1, database_max_overflow=0)
    engine = create_engine(settings)
    try:
        with pytest.raises(DBAPIError) as raised:
            async with transaction(engine) as tx:
                await tx.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert raised.value.connection_invalidated
        async with transaction(engine) as tx:
            assert (await tx.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def _count_events(engine: AsyncEngine, user_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM event WHERE user_id = :u"), {"u": user_id})
    return int(count or 0)


async def test_locks_taken_with_the_begin_hold_until_the_end_and_a_failure_after_them_writes_nothing(
    engine: AsyncEngine,
) -> None:
    """`EventLog.lock` on a driver transaction sends BEGIN and the user's locks in one round trip: the
    transaction is one (what follows is rolled back with it), and the locks are held until it ends."""
    user_id = await _new_user(engine)
    others = create_engine(get_settings())

    async def lock_is_free() -> bool:
        async with others.connect() as connection:
            keys = events_module._lock_keys(user_id)
            taken = await connection.scalar(
                text("SELECT pg_try_advisory_xact_lock(:space, :key)"), {"space": keys["space"], "key": keys["key"]}
            )
            await connection.rollback()
        return bool(taken)

    try:
        async with transaction(engine) as tx:
            await EventLog(tx).lock(user_id)
            assert not await lock_is_free()
            await EventLog(tx).record("probe.locked", {}, user_id=user_id)
            assert not await lock_is_free()
        assert await lock_is_free()
        assert await _count_events(engine, user_id) == 1

        async def failing() -> None:
            async with transaction(engine) as tx:
                await EventLog(tx).lock(user_id)
                await EventLog(tx).record("probe.undone", {}, user_id=user_id)
                raise RuntimeError("the block fails after the locks and an event")

        with pytest.raises(RuntimeError):
            await failing()
        assert await lock_is_free()
        assert await _count_events(engine, user_id) == 1

        async with transaction(engine):  # a block that runs nothing sends nothing, and ends cleanly
            pass
        async with transaction(engine) as tx:  # the locks after a statement: BEGIN went with the statement
            await tx.execute(text("SELECT 1"))
            await EventLog(tx).lock(user_id)
            assert not await lock_is_free()
        assert await lock_is_free()
    finally:
        await others.dispose()


async def test_a_read_after_the_servers_connections_were_cut_runs_again_on_a_new_one(migrated: None) -> None:
    """`read` goes straight through asyncpg where it can: when every pooled connection was cut (a server
    restart), the first read's failure discards them all and it runs once more on a new one; reads give the
    values a session would, and a statement whose SQL changes with its values (an expanding IN) still reads."""
    settings = msgspec.structs.replace(get_settings(), database_pool_size=3)
    reads = create_read_engine(settings)
    admin = create_engine(get_settings())
    try:
        user_id = await _new_user(admin)
        by_id = select(User.id, User.created_at).where(User.id == bindparam("user_id"))
        expanding = select(User.id).where(User.id.in_(bindparam("ids", expanding=True)))

        async def pooled_pids() -> set[int]:
            rows = await asyncio.gather(
                *(read(reads, text("SELECT pg_backend_pid(), pg_sleep(0.2)")) for _ in range(3))
            )
            return {int(row[0][0]) for row in rows}

        pids = await pooled_pids()
        assert len(pids) == 3
        async with admin.connect() as connection:
            for pid in pids:
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        ((found, created_at),) = await read(reads, by_id, {"user_id": user_id})
        assert found == user_id
        assert created_at.tzinfo is not None
        assert not (await pooled_pids()) & pids  # none of the cut connections was handed out again
        assert [row[0] for row in await read(reads, expanding, {"ids": [user_id, uuid.uuid4()]})] == [user_id]
    finally:
        await reads.dispose()
        await admin.dispose()
