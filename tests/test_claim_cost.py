"""What a claim reads when one user queued thousands of tasks: the owners, not the queue (issue 19).

The fair claim (app.domain.tasks.fairness) once read and sorted every queued task, so a greedy
user's deep queue made every claim of everyone slower. It now walks the partial index of queued
tasks one owner at a time. The planner chooses by its statistics, which lag behind a burst:
statistics taken while nothing was queued, and a cached generic plan, once made the same
statement walk every queued task for each owner (280 s for one claim with 8,000 queued). Work is
counted in rows read by the plan's scans (`EXPLAIN ANALYZE`), not in time.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import event, text

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.database import create_engine
from app.domain.tasks.fairness import claim_statement, due_by, limits

GREEDY_QUEUED = 3_000
#: Rows the claim's scans may read, here: two owners (a few index probes each), the greedy owner's first
#: MAX_RUNNING_PER_USER queued tasks, the running tasks and the pick. Reading the queue is thousands.
MOST_ROWS = 100

_SEED = """
INSERT INTO user_account (id, email, username, is_active, is_verified, is_superuser, email_notifications,
                          credentials_version, created_at, updated_at)
VALUES (:greedy, :greedy_email, :greedy_name, true, true, false, false, 1, now(), now()),
       (:other, :other_email, :other_name, true, true, false, false, 1, now(), now());
INSERT INTO task (id, user_id, kind, title, status, params, attempts, progress_current, progress_total,
                  cancel_requested, created_at, enqueued_at, first_attempt)
SELECT gen_random_uuid(), :greedy, 'demo', 'old', 'succeeded', '{}', 1, 0, 0, false,
       now() - interval '2 days', now() - interval '2 days', 1
FROM generate_series(1, 2000);
"""
_BURST = """
INSERT INTO task (id, user_id, kind, title, status, params, attempts, progress_current, progress_total,
                  cancel_requested, created_at, enqueued_at, first_attempt)
SELECT gen_random_uuid(), :greedy, 'demo', 'greedy', 'queued', '{}', 0, 0, 0, false,
       now() - interval '1 hour' + g * interval '1 ms', now() - interval '1 hour', 1
FROM generate_series(1, :count) AS g;
INSERT INTO task (id, user_id, kind, title, status, params, attempts, progress_current, progress_total,
                  cancel_requested, created_at, enqueued_at, first_attempt, started_at, heartbeat_at)
VALUES (gen_random_uuid(), :greedy, 'demo', 'greedy running', 'running', '{}', 1, 0, 0, false,
        now() - interval '2 hours', now() - interval '2 hours', 1, now(), now()),
       (gen_random_uuid(), :other, 'demo', 'mine', 'queued', '{}', 0, 0, 0, false, now(), now(), 1, NULL, NULL);
"""


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans read (returned or filtered out), over every loop, in `plan` and below it."""
    own = 0
    if "Scan" in plan["Node Type"]:
        own = (int(plan["Actual Rows"]) + int(plan.get("Rows Removed by Filter", 0))) * int(plan["Actual Loops"])
    return own + sum(_rows_read(child) for child in plan.get("Plans", []))


@pytest.mark.services
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_claim_reads_the_owners_not_a_greedy_users_queue(migrated: None, plan_cache_mode: str) -> None:
    """One user queued 3,000 tasks after the statistics were taken; another user queued one. The claim takes
    the other user's task (the greedy user runs one already) and reads at most MOST_ROWS rows."""
    engine = create_engine(get_settings())
    armed = [True]  # the next claim is explained

    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def explain(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> Any:
        if armed[0] and statement.lstrip().startswith("WITH RECURSIVE"):
            armed[0] = False
            statement = "EXPLAIN (ANALYZE, FORMAT JSON) " + statement
        return statement, parameters

    greedy, other = uuid.uuid4(), uuid.uuid4()
    names = {
        "greedy": greedy,
        "greedy_email": f"g{greedy.hex[:8]}@example.com",
        "greedy_name": f"g{greedy.hex[:8]}",
        "other": other,
        "other_email": f"o{other.hex[:8]}@example.com",
        "other_name": f"o{other.hex[:8]}",
    }
    try:
        async with engine.begin() as connection:
            for statement in _SEED.strip().split(";\n"):
                await connection.execute(text(statement), names)
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("ANALYZE task"))  # statistics of a table with nothing queued
        async with engine.begin() as connection:
            for statement in _BURST.strip().split(";\n"):
                await connection.execute(text(statement), {**names, "count": GREEDY_QUEUED})
        per_user, per_kind = limits(get_settings())
        async with engine.begin() as connection:
            await connection.execute(text(f"SET LOCAL plan_cache_mode = {plan_cache_mode}"))
            now = utcnow()
            parameters = {"now": now, "due_by": due_by(now), "worker_id": "test", "passed_over": []}
            claim = claim_statement(per_user, per_kind, postgres=True)
            (document,) = (await connection.execute(claim, parameters)).first() or ("[]",)
            await connection.rollback()
            (plan,) = msgspec.json.decode(document) if isinstance(document, str) else document
        async with engine.begin() as connection:
            row = (await connection.execute(claim, parameters)).first()
            assert row is not None
            assert row.title == "mine"  # the user with no running task goes first
            await connection.rollback()
        assert _rows_read(plan["Plan"]) <= MOST_ROWS, plan
    finally:
        await engine.dispose()


@pytest.mark.embedded
async def test_on_sqlite_the_claim_walks_the_queued_tasks_index_and_takes_its_pick_by_id(migrated: None) -> None:
    """SQLite has no statistics here (nothing runs ANALYZE): its planner, not the data, picks the indexes.
    The owners' walk and each owner's offer use the partial index of queued tasks, and the pick is read by
    its id: not the (user_id, status) index, which holds every task of every owner, nor a scan of the
    queued tasks by status (both were the plan before)."""
    from sqlalchemy.dialects import sqlite

    per_user, per_kind = limits(get_settings())
    claim = claim_statement(per_user, per_kind, postgres=False)
    sql = str(claim.compile(dialect=sqlite.dialect())).replace("__[POSTCOMPILE_passed_over]", "NULL")
    engine = create_engine(get_settings())
    try:
        async with engine.connect() as connection:
            result = await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (None,) * sql.count("?"))
            steps = [row[3] for row in result]
    finally:
        await engine.dispose()
    read = [(match[1], step) for step in steps if (match := re.match(r"(?:SCAN|SEARCH) (\w+)", step))]
    walks = [step for name, step in read if name in ("task_1", "task_2", "candidate")]
    assert len(walks) == 3, steps
    assert all("ix_task_queued_user_id_created_at_id" in step for step in walks), steps
    (pick,) = [step for name, step in read if name == "picked"]
    assert "(id=?)" in pick, steps
