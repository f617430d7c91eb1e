"""Queues with capacity of their own: users' tasks never hold up mail or housekeeping.

Found by issue 18: every actor shared one queue, so one user's long tasks held every
worker thread while password-reset emails and the sweeper waited behind them. Here every
task thread is busy with a long task; a password reset still reaches the SMTP server,
and a sweep still runs, while those tasks are running.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.tasks.models import RUNNING, Task
from app.workers import broker
from app.workers.queues import MAIL, MAINTENANCE, QUEUES, TASKS
from tests.accounts import PASSWORD, new_identity
from tests.in_process_workers import app_with_workers
from tests.processes import eventually, redis_server, send_message, stack
from tests.smtp import SmtpServer

LONG = {"kind": "demo", "params": {"steps": 100, "step_ms": 500}}  # 50 s, in long steps (few progress writes)


def test_every_actor_is_on_a_queue_of_its_kind() -> None:
    queues = {name: actor.queue_name for name, actor in broker.actors.items()}
    assert set(queues.values()) <= set(QUEUES), queues
    assert [name for name, queue in queues.items() if queue == TASKS] == ["tasks.run"]
    for name in ("mail.send", "mail.password_reset", "notifications.email", "notifications.broadcast"):
        assert queues[name] == MAIL, name
    for name in ("tasks.sweep", "tasks.purge", "maintenance.purge_events", "notifications.send_due_emails"):
        assert queues[name] == MAINTENANCE, name


def sign_up(client: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """(headers, user) of a new signed-in user; `client` is an httpx client or a TestClient."""
    identity = new_identity()
    user = client.post("/api/v1/auth/register", json=identity)
    assert user.status_code == 201, user.text
    tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}, user.json()


def fill_task_threads(client: Any, threads: int) -> list[tuple[dict[str, str], str]]:
    """Start long tasks until every task thread runs one: (headers, task id) of each running task."""
    per_user = min(get_settings().max_running_per_user, threads)
    started: list[tuple[dict[str, str], str]] = []
    for _ in range(math.ceil(threads / per_user)):
        headers, _user = sign_up(client)
        for _ in range(per_user):
            response = client.post("/api/v1/tasks", json=LONG, headers=headers)
            assert response.status_code == 202, response.text
            started.append((headers, response.json()["id"]))

    def running() -> list[tuple[dict[str, str], str]]:
        states = [client.get(f"/api/v1/tasks/{task}", headers=h).json() for h, task in started]
        return [(h, s["id"]) for (h, _), s in zip(started, states, strict=True) if s["status"] == RUNNING]

    def all_busy() -> list[tuple[dict[str, str], str]] | None:
        now = running()
        return now if len(now) >= threads else None

    return eventually(all_busy, timeout=60, what="every task thread busy")


def still_running(client: Any, tasks: list[tuple[dict[str, str], str]]) -> None:
    for headers, task_id in tasks:
        task = client.get(f"/api/v1/tasks/{task_id}", headers=headers).json()
        assert (task["status"], task["progress"]["current"] < 100) == (RUNNING, True), task


async def plant_dead_task(db_session: AsyncSession, user_id: str) -> uuid.UUID:
    """A task left running by a worker that died long ago: only a sweep hands it back."""
    long_ago = utcnow() - timedelta(hours=1)
    task = Task(
        user_id=uuid.UUID(user_id),
        kind="demo",
        title="Left behind",
        params={"steps": 1, "step_ms": 0},
        status=RUNNING,
        started_at=long_ago,
        heartbeat_at=long_ago,
        enqueued_at=long_ago,
    )
    async with db_session.begin():
        db_session.add(task)
    return task.id


async def run_checks(
    client: Any, smtp: SmtpServer, db_session: AsyncSession, sweep: Callable[[], None], threads: int
) -> None:
    busy = fill_task_threads(client, threads)
    headers, user = sign_up(client)
    dead = await plant_dead_task(db_session, user["id"])
    try:
        asked = client.post("/api/v1/auth/forgot-password", json={"email": user["email"]})
        assert asked.status_code == 202, asked.text
        smtp.wait_for(lambda m: user["email"] in m.message["To"] and "/reset-password" in m.text, timeout=10)
        still_running(client, busy)  # the email did not wait for a task thread

        sweep()
        handed_back = eventually(
            lambda: (t := client.get(f"/api/v1/tasks/{dead}", headers=headers).json())["attempts"] == 2 and t,
            timeout=10,
            what="the sweep to hand the dead task back",
        )
        # Only a hand-back makes a second attempt (it may even have run since, on a worker of another process
        # that shares this database, such as the live server's).
        assert handed_back["status"] in ("queued", "running", "succeeded"), handed_back
        still_running(client, busy)  # nor did the sweep
    finally:
        for task_headers, task_id in busy:
            client.post(f"/api/v1/tasks/{task_id}/cancel", headers=task_headers)


@pytest.mark.embedded
async def test_embedded_mail_and_sweeps_do_not_wait_behind_tasks(
    migrated: None, smtp: SmtpServer, db_session: AsyncSession
) -> None:
    from app.workers.actors.tasks import sweep_tasks

    with app_with_workers("embedded") as client:
        await run_checks(client, smtp, db_session, sweep_tasks.send, get_settings().worker_threads)


@pytest.mark.services
async def test_services_mail_and_sweeps_do_not_wait_behind_tasks(
    migrated: None, smtp: SmtpServer, db_session: AsyncSession
) -> None:
    threads = 4  # tests/servers.py starts workers with 4 threads
    with (
        redis_server() as redis,
        stack(redis.url, split=True) as services,
        httpx.Client(base_url=services.url, timeout=20) as client,
    ):
        await run_checks(client, smtp, db_session, lambda: send_message(redis.url, "tasks.sweep"), threads)
