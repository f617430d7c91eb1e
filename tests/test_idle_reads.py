"""What idle streams cost the database: the event feed's probe, and the credential cache's renewals."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

import msgspec
import pytest
from litestar.testing import TestClient
from sqlalchemy import insert

from app.config import get_settings
from app.domain.accounts.models import User
from app.domain.accounts.revocation import Credential
from app.domain.database import create_engine, create_read_engine, session_factory
from app.domain.notifications.models import Event
from app.web.api import events
from app.web.api.events import EventFeed
from app.web.app import create_app
from app.web.http import credentials as credentials_module
from tests.accounts import PASSWORD, new_identity
from tests.processes import eventually


async def _new_user(sessions: object) -> UUID:
    user_id = uuid.uuid4()
    name = f"idle{user_id.hex[:10]}"
    async with sessions() as session:  # type: ignore[operator]
        session.add(User(id=user_id, email=f"{name}@example.com", username=name, password_hash="not a hash"))
        await session.commit()
    return user_id


async def test_idle_rechecks_probe_without_reading_and_a_silent_event_still_arrives(
    migrated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    engine, reads = create_engine(settings), create_read_engine(settings)
    try:
        sessions = session_factory(engine)
        user_id = await _new_user(sessions)
        feed = EventFeed(reads, sessions, tick=0.01)
        # The first re-check reads (nothing is known of this reader yet) and notes that it found nothing.
        first = await feed.after(user_id, 0, soon=False)
        assert first is not None
        assert not first[0]
        queries = feed.queries
        for _ in range(3):  # nothing moved: a probe each, no read
            again = await feed.after(user_id, 0, soon=False)
            assert again is not None
            assert not again[0]
        assert feed.queries == queries
        assert feed.probes >= 4

        # An event committed with no wake-up at all (its publish lost): the newest id moved, so it is read.
        async with sessions() as session:
            await session.execute(insert(Event), [{"user_id": user_id, "type": "test.silent", "payload": {}}])
            await session.commit()
        found = await feed.after(user_id, 0, soon=False)
        assert found is not None
        assert [record.type for record in found[0]] == ["test.silent"]
        assert feed.queries == queries + 1

        # A wake-up always reads, and a reader is read again once FEED_QUIET_SECONDS have passed.
        last = found[0][-1].id
        assert await feed.after(user_id, last, soon=False) == ([], False)
        queries = feed.queries
        assert await feed.after(user_id, last, soon=True) == ([], False)
        assert feed.queries == queries + 1
        monkeypatch.setattr(events, "FEED_QUIET_SECONDS", 0.0)
        assert await feed.after(user_id, last, soon=False) == ([], False)
        assert feed.queries == queries + 2
    finally:
        await engine.dispose()
        await reads.dispose()


def test_open_streams_users_are_renewed_in_one_group(migrated: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries of users with open streams are renewed together, before they run out, with one load."""
    # The app's own renewal tick stays asleep: on a loaded machine it raced the renewal this test runs.
    monkeypatch.setattr(credentials_module, "RENEW_TICK", 3600.0)
    settings = msgspec.structs.replace(get_settings(), auth_cache_seconds=600.0)
    app = create_app(settings)
    with TestClient(app) as client:
        credentials = app.state["credentials"]
        # Entries are remembered only once the process hears revocations (its subscription, made as the app
        # starts, clears what came before): in services mode the first user's entry was missing (seen in CI).
        eventually(credentials._trusted, timeout=10, what="the revocation subscription")
        watched, headers_of = [], {}
        for _ in range(3):
            identity = new_identity()
            assert client.post("/api/v1/auth/register", json=identity).status_code == 201
            login = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = client.get("/api/v1/users/me", headers=headers).json()
            headers_of[UUID(me["id"])] = headers
            ended = client.blocking_portal.call(_future)  # a stream's end, on the app's loop
            watched.append(credentials.watch(Credential(user_id=UUID(me["id"]), version=1), ended))

        # A load that overlaps any revocation is not remembered (the cache's epoch), and other tests' servers on
        # this database and namespace revoke at any time (seen in a full run): such a step is taken again.
        def all_fresh() -> bool:
            for user_id, headers in headers_of.items():
                if user_id not in credentials._entries:
                    assert client.get("/api/v1/users/me", headers=headers).status_code == 200
            return credentials._due_for_renewal() == []

        for _attempt in range(5):
            eventually(all_fresh, timeout=10, what="every watched user's entry remembered and fresh")
            # Two entries near the end of their life, one past half of it: all three go in one load.
            for watch, left in zip(watched, (10.0, 290.0, 290.0), strict=True):
                state, expires = credentials._entries[watch.credential.user_id]
                credentials._entries[watch.credential.user_id] = (state, expires - 600.0 + left)
            due = credentials._due_for_renewal()
            assert sorted(due) == sorted(watch.credential.user_id for watch in watched)
            loads, epoch = credentials.loads, credentials._epoch
            client.blocking_portal.call(credentials._renew)
            if credentials._epoch == epoch:
                break
        assert credentials.loads == loads + 1
        assert credentials._due_for_renewal() == []
        for watch in watched:
            credentials.unwatch(watch)


async def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@pytest.mark.services
async def test_a_connection_given_back_just_now_is_not_pinged_at_checkout(migrated: None) -> None:
    """The write engine checks a pooled connection with `SELECT 1` before use, unless it was given back
    within ALIVE_WITHOUT_CHECK_SECONDS: under load that check was one round trip of three per task.
    The check is recorded by asyncpg's own query logger (which records what runs outside prepared
    statements: the check, BEGIN and ROLLBACK)."""
    import asyncio

    from sqlalchemy import event, text

    from app.domain.database import ALIVE_WITHOUT_CHECK_SECONDS

    engine = create_engine(get_settings())
    seen: list[str] = []

    def log_queries(dbapi_connection: object, _record: object) -> None:
        driver = dbapi_connection.driver_connection  # type: ignore[attr-defined]
        driver.add_query_logger(lambda record: seen.append(record.query))

    event.listen(engine.sync_engine, "connect", log_queries)

    async def use() -> list[str]:
        seen.clear()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 2"))
            await connection.rollback()
        return [query for query in seen if query.strip().upper().startswith("SELECT")]  # the checks

    try:
        assert await use() == []  # a new connection: nothing to check
        assert await use() == []  # given back just now
        await asyncio.sleep(ALIVE_WITHOUT_CHECK_SECONDS + 0.2)
        assert await use() == ["SELECT 1"]  # idle for longer: checked first
    finally:
        await engine.dispose()
