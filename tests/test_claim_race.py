"""Two workers claim one user's last free place at once: the second gives its pick back (Postgres).

Two claimers can both see a user below MAX_RUNNING_PER_USER, since neither sees the other's
uncommitted claim. The claim's RETURNING takes the owner's locks, so the second waits there
for the first to commit; the insert of its `running` event then counts the owner's running
tasks again (`over_cap`, in `EventLog.record_unless`) and writes nothing, and the runner rolls
the pick back. Here the two claims are interleaved by hand on two connections.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.database import create_engine
from app.domain.notifications.events import EventLog, EventRecord
from app.domain.tasks.fairness import claim_statement, over_cap
from app.domain.tasks.reads import COLUMNS, row_out
from app.domain.tasks.services import TASK_UPDATED

PER_USER = 2

_SEED = """
INSERT INTO user_account (id, email, username, is_active, is_verified, is_superuser, email_notifications,
                          credentials_version, created_at, updated_at)
VALUES (:user_id, :email, :username, true, true, false, false, 1, now(), now());
INSERT INTO task (id, user_id, kind, title, status, params, attempts, progress_current, progress_total,
                  cancel_requested, created_at, enqueued_at, first_attempt, started_at, heartbeat_at)
SELECT gen_random_uuid(), :user_id, 'demo', 'race ' || g, CASE WHEN g = 0 THEN 'running' ELSE 'queued' END,
       '{}', 0, 0, 0, false, now() + g * interval '1 ms', :enqueued_at, 1,
       CASE WHEN g = 0 THEN now() END, CASE WHEN g = 0 THEN now() END
FROM generate_series(0, 2) AS g
"""


@pytest.mark.services
async def test_the_second_of_two_racing_claims_gives_its_pick_back(migrated: None) -> None:
    """One running and two queued, a cap of two: both claims pick a task, only the first records it."""
    engine = create_engine(get_settings())
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    user_id = uuid.uuid4()
    # Due tomorrow: no worker of the run takes them (their claims look one second ahead, these a day).
    due = {"enqueued_at": utcnow() + timedelta(hours=1)}
    seed = {"user_id": user_id, "email": f"r{user_id.hex[:8]}@example.com", "username": f"r{user_id.hex[:8]}", **due}
    claim = claim_statement(PER_USER, (), postgres=True)

    async def claimed(session: AsyncSession) -> tuple[Any, ...]:
        now = utcnow()
        parameters = {"now": now, "due_by": now + timedelta(days=1), "worker_id": "race", "passed_over": []}
        row = (await session.execute(claim, parameters)).first()
        assert row is not None
        return tuple(row)

    async def record(session: AsyncSession, row: tuple[Any, ...]) -> EventRecord | None:
        task = row_out(row[: len(COLUMNS)])
        return await EventLog(session).record_unless(
            TASK_UPDATED,
            msgspec.to_builtins(task),
            user_id=row[len(COLUMNS)],
            refused=over_cap(PER_USER, ()),
            parameters={"kind": task.kind},
        )

    try:
        async with engine.begin() as connection:
            for statement in _SEED.strip().split(";\n"):
                await connection.execute(text(statement), seed)
        async with sessions() as first, sessions() as second:
            await first.begin()
            await second.begin()
            first_row = await claimed(first)  # holds the user's locks until it commits
            racing = asyncio.ensure_future(claimed(second))  # picks the other queued task, waits for the locks
            await asyncio.sleep(0.5)
            assert not racing.done()
            assert await record(first, first_row) is not None  # two running: at the cap, not over it
            await first.commit()
            second_row = await asyncio.wait_for(racing, 30)
            assert second_row[0] != first_row[0]
            assert await record(second, second_row) is None  # three running with its own: over the cap
            await second.rollback()
        async with engine.connect() as connection:
            counts = dict(
                (
                    await connection.execute(
                        text("SELECT status, count(*) FROM task WHERE user_id = :user_id GROUP BY status"),
                        {"user_id": user_id},
                    )
                ).all()
            )
            events = await connection.scalar(
                text("SELECT count(*) FROM event WHERE user_id = :user_id"), {"user_id": user_id}
            )
        assert counts == {"running": 2, "queued": 1}
        assert events == 1
    finally:
        await engine.dispose()
