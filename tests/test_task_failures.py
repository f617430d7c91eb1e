"""No job is lost: a worker killed mid-task, a broker outage at submission, a message delivered twice.

Each test runs its own redis-server, web process and worker (real, separate processes)
with short TASK_STALE_SECONDS / TASK_RESEND_SECONDS, and plays the scheduler itself by
sending the `tasks.sweep` message, as periodiq does every minute.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any
from uuid import UUID

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.notifications.models import Event, Notification
from tests.processes import (
    FINISHED,
    ROOT,
    RedisServer,
    redis_server,
    send_message,
    stack,
    task_of,
    user_client,
    wait_task,
)

pytestmark = pytest.mark.services

STALE_SECONDS = 3
RESEND_SECONDS = 2
FAST = {"TASK_STALE_SECONDS": str(STALE_SECONDS), "TASK_RESEND_SECONDS": str(RESEND_SECONDS)}


def submit(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": params})
    assert response.status_code == 202, response.text
    return dict(response.json())


async def notifications_for(db_session: AsyncSession, task_id: str) -> list[Notification]:
    db_session.expire_all()
    rows = await db_session.scalars(select(Notification).where(Notification.task_id == UUID(task_id)))
    return list(rows)


async def task_events(db_session: AsyncSession, task_id: str) -> list[dict[str, Any]]:
    """The `task.updated` payloads of one task, oldest first."""
    db_session.expire_all()
    rows = await db_session.scalars(select(Event).where(Event.type == "task.updated").order_by(Event.id))
    return [row.payload for row in rows if row.payload.get("id") == task_id]


async def test_a_task_whose_worker_is_killed_is_handed_back_and_succeeds_once(
    migrated: None, db_session: AsyncSession
) -> None:
    with redis_server() as broker, stack(broker.url, settings=FAST) as services, user_client(services.url) as api:
        task = submit(api, steps=100, step_ms=50)
        running = wait_task(
            api,
            task["id"],
            lambda t: t["status"] == "running" and t["progress"]["current"] > 0,
            timeout=30,
            what="running with progress",
        )
        assert running["attempts"] == 1
        services.kill_worker()
        killed_at = time.monotonic()
        time.sleep(0.5)  # a write the worker had already sent lands before the snapshot
        frozen = task_of(api, task["id"])
        assert (frozen["status"], frozen["attempts"]) == ("running", 1), frozen
        assert frozen["progress"]["current"] < 100, "the task finished before its worker was killed"
        services.start_worker()
        time.sleep(max(0.0, STALE_SECONDS + 1.5 - (time.monotonic() - killed_at)))
        later = task_of(api, task["id"])
        # Only a new attempt may move it: on a loaded machine the new worker's recovery may have handed it back
        # already (the sleep above ends later than STALE_SECONDS after the kill).
        assert later["progress"] == frozen["progress"] or later["attempts"] >= 2, f"a dead worker moved it: {later}"
        send_message(broker.url, "tasks.sweep")
        handed_back = wait_task(api, task["id"], lambda t: t["attempts"] == 2, timeout=20, what="handed back")
        assert handed_back["status"] in ("queued", "running"), handed_back
        done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=60, what="finished")
        assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 2, {"steps": 100}), done
        assert done["progress"]["current"] == 100
        time.sleep(0.5)  # anything still to come from the first attempt would have come by now
        assert task_of(api, task["id"]) == done
    notifications = await notifications_for(db_session, task["id"])
    assert [(n.title, n.category) for n in notifications] == [("Task completed", "task")]


async def test_tasks_submitted_while_the_broker_is_down_run_after_it_returns(
    migrated: None, db_session: AsyncSession
) -> None:
    with redis_server() as broker, stack(broker.url, settings=FAST) as services, user_client(services.url) as api:
        broker.stop()
        codes = []
        for _ in range(3):
            response = api.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 3, "step_ms": 10}})
            codes.append(response.status_code)
        # The rows are committed before the send is tried, whatever the answer was.
        tasks = api.get("/api/v1/tasks").json()["items"]
        assert len(tasks) == 3, tasks
        assert {t["status"] for t in tasks} == {"queued"}
        broker.start()
        time.sleep(RESEND_SECONDS + 0.5)
        send_message(broker.url, "tasks.sweep")
        for task in tasks:
            done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=60, what="finished")
            assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"steps": 3}), done
        web_log = services.web.output()
    for task in tasks:
        assert len(await notifications_for(db_session, task["id"])) == 1
    assert codes == [202] * 3, f"{codes}\n{web_log[-6000:]}"


async def test_a_message_delivered_twice_runs_the_task_once(migrated: None, db_session: AsyncSession) -> None:
    with redis_server() as broker, stack(broker.url, worker=False) as services, user_client(services.url) as api:
        task = submit(api, steps=20, step_ms=50)  # the web process sends (task, 1) once
        send_message(broker.url, "tasks.run", task["id"], 1)  # and the broker delivers it again
        assert task_of(api, task["id"])["status"] == "queued"
        services.start_worker()  # both copies wait in the queue: the worker's threads take them at once
        done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=60, what="finished")
        assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"steps": 20}), done
        send_message(broker.url, "tasks.run", task["id"], 1)  # a late copy, after the end
        time.sleep(2)
        assert task_of(api, task["id"]) == done
    assert len(await notifications_for(db_session, task["id"])) == 1
    events = await task_events(db_session, task["id"])
    states = [(e["status"], e["progress"]["current"]) for e in events]
    assert [s for s in states if s[0] == "queued"] == [("queued", 0)], states
    assert [s for s in states if s[0] == "succeeded"] == [("succeeded", 20)], states
    running = [current for status, current in states if status == "running"]
    assert running[0] == 0, states  # one claim ...
    assert running == sorted(set(running)), states  # ... then progress that only moves forward, never twice
    assert states == [("queued", 0), *(("running", c) for c in running), ("succeeded", 20)], states


async def hold_task_row(task_id: str, after_waiter: float) -> int:
    """Lock the task's row until a write of it waits behind the lock, then `after_waiter` seconds more.

    Returns the most writes of the row seen waiting at once (0: none came within 30 s).
    """
    import asyncpg

    connection = await asyncpg.connect(os.environ["DATABASE_URL"])
    most = 0
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1 FROM task WHERE id = $1 FOR UPDATE", UUID(task_id))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                await connection.execute("SELECT pg_stat_clear_snapshot()")  # else one snapshot per transaction
                waiting = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE task %'"
                )
                if waiting and not most:
                    deadline = time.monotonic() + after_waiter
                most = max(most, waiting)
                await asyncio.sleep(0.02)
    finally:
        await connection.close()
    return int(most)


async def test_an_attempt_that_ends_during_a_held_up_progress_write_writes_its_lines_once(
    migrated: None, db_session: AsyncSession
) -> None:
    """Found in a worker's log under load: a task stayed `running` for a minute after its attempt failed.

    The attempt ended (failed, cancelled or to be retried) while a progress write of its
    keeper, with the waiting log lines, was still going: the end went to the database beside
    it, wrote the same lines again, failed on their duplicate keys, and left the task running
    until it was handed back as stale. Here the task's row is held from before that write
    until after the failing step: the end must wait for the write instead of racing it.
    """
    # Reports come faster than every 2 s: the first write after the claim is the keeper's, at 2 s.
    settings = {"TASK_PROGRESS_INTERVAL_MS": "2000", "TASK_MAX_ATTEMPTS": "1"}
    with redis_server() as broker, stack(broker.url, settings=settings) as services, user_client(services.url) as api:
        task = submit(api, steps=10, step_ms=300, fail_at_step=10)  # its last step fails about 3 s after the claim
        wait_task(api, task["id"], lambda t: t["status"] == "running", timeout=60, what="running")
        waited = await hold_task_row(task["id"], after_waiter=4)
        assert waited == 1, f"{waited} writes of the task waited behind the lock at once: the end raced the keeper"
        done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=30, what="finished")
        assert (done["status"], done["progress"]["current"], done["attempts"]) == ("failed", 9, 1), (
            done,
            services.logs(),
        )
        lines = api.get(f"/api/v1/tasks/{task['id']}/logs").json()["items"]
        error = "StepFailed: Step 10 failed (fail_at_step=10)"
        assert [(line["seq"], line["message"]) for line in lines] == [
            *((step, f"Step {step} of 10 done") for step in range(1, 10)),
            (10, "Step 10 of 10 failed (fail_at_step=10)"),
            (11, f"Attempt 1 failed, the last of its round: {error}"),
        ], lines
    assert len(await notifications_for(db_session, task["id"])) == 1


async def test_a_redis_restart_mid_task_costs_the_task_nothing(migrated: None, db_session: AsyncSession) -> None:
    """Found by tests/test_chaos.py: a live-event publish that failed while Redis was away failed the attempt.

    The event is in the table (a lost publish is only late), so the task runs on in its
    first attempt and ends once, with its one notification.
    """
    with redis_server() as broker, stack(broker.url, settings=FAST) as services, user_client(services.url) as api:
        task = submit(api, steps=60, step_ms=50)
        wait_task(api, task["id"], lambda t: t["progress"]["current"] > 0, timeout=30, what="running with progress")
        broker.stop()
        time.sleep(1)  # progress writes go on; their publishes fail
        assert task_of(api, task["id"])["status"] == "running"
        broker.start()
        done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=60, what="finished")
        assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None), (done, services.logs())
    assert len(await notifications_for(db_session, task["id"])) == 1


SCHEDULE_ONCE = """
import pendulum, periodiq
from app.workers import broker
from app.workers.schedules import periodic_actors
actors = periodic_actors(broker)
periodiq.Scheduler(actors=actors).send_actors(actors, now=pendulum.now())
print("the scheduler lives on")
"""


def test_the_scheduler_outlives_a_broker_outage() -> None:
    """Found while restarting Redis: periodiq's scheduler process died at the first tick that found Redis away.

    With it went every later sweep (lost tasks stayed queued for good), and under
    `make run` honcho stops every process when one exits. This runs periodiq's own
    Scheduler against a Redis that is not there.
    """
    dead = RedisServer()  # a free port nobody listens on
    result = subprocess.run(
        [sys.executable, "-c", SCHEDULE_ONCE],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": dead.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the scheduler lives on" in result.stdout
    assert "schedule.send_failed" in result.stdout + result.stderr
