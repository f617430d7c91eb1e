"""Operators' view of tasks: `litestar tasks list|retry|purge` and the task series at /metrics."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from litestar.testing import TestClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.tasks.models import Task
from app.domain.tasks.stats import quantile
from app.web.app import create_app
from app.web.metrics import queue_depth
from tests.accounts import litestar_cli, signed_in_headers
from tests.servers import LiveServer
from tests.test_tasks import start, wait


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def username(api: httpx.Client) -> str:
    return str(api.get("/api/v1/users/me").json()["username"])


def listed_ids(output: str) -> list[str]:
    return re.findall(r"^([0-9a-f-]{36})\s", output, flags=re.MULTILINE)


def test_list_shows_every_users_tasks_newest_first_and_filters(api: httpx.Client, live_server: LiveServer) -> None:
    first = wait(api, start(api, steps=2, step_ms=0)["id"])
    second = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        other.headers.update(signed_in_headers(other))
        third = wait(other, start(other, steps=3, step_ms=0)["id"])

    everything = litestar_cli("tasks", "list")
    assert everything.returncode == 0, everything.stderr
    header = everything.stdout.splitlines()[0].split()
    assert header[:6] == ["ID", "USER", "KIND", "STATUS", "ATTEMPTS", "PROGRESS"]
    assert listed_ids(everything.stdout) == [third["id"], second["id"], first["id"]]
    row = next(line for line in everything.stdout.splitlines() if line.startswith(first["id"]))
    assert row.split()[1:6] == [username(api), "demo", "succeeded", "1", "2/2"]
    failed_row = next(line for line in everything.stdout.splitlines() if line.startswith(second["id"]))
    assert failed_row.split()[3:5] == ["failed", "3"]

    mine = litestar_cli("tasks", "list", "--user", username(api))
    assert listed_ids(mine.stdout) == [second["id"], first["id"]]
    failed = litestar_cli("tasks", "list", "--status", "failed")
    assert listed_ids(failed.stdout) == [second["id"]]
    newest = litestar_cli("tasks", "list", "--limit", "1")
    assert listed_ids(newest.stdout) == [third["id"]]

    nobody = litestar_cli("tasks", "list", "--user", "nobody-at-all")
    assert nobody.returncode != 0
    assert "No user" in nobody.stderr


def test_retry_queues_a_failed_task_again_and_refuses_others(api: httpx.Client, mode: str) -> None:
    failed = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)

    retried = litestar_cli("tasks", "retry", failed["id"])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"Task {failed['id']} queued again (attempt 4)" in retried.stdout
    if mode == "services":
        # Sent to the workers: it runs again (and, failing at step 1 every time, fails again).
        again = wait(api, failed["id"], timeout=60)
        assert again["status"] == "failed"
        assert again["attempts"] > 3
        assert again["started_at"] > failed["started_at"]
    else:
        # Embedded, the broker lives in the web process: its sweeper sends the task later.
        task = api.get(f"/api/v1/tasks/{failed['id']}").json()
        assert (task["status"], task["attempts"], task["error"]) == ("queued", 4, None)

    succeeded = wait(api, start(api, steps=1, step_ms=0)["id"])
    refused = litestar_cli("tasks", "retry", succeeded["id"])
    assert refused.returncode != 0
    assert "Only a failed or cancelled task can be retried; this one is succeeded." in refused.stderr
    assert api.get(f"/api/v1/tasks/{succeeded['id']}").json()["status"] == "succeeded"

    missing = litestar_cli("tasks", "retry", str(uuid.uuid4()))
    assert missing.returncode != 0
    assert "No task with id" in missing.stderr


async def test_purge_deletes_old_finished_tasks_and_their_artifacts(
    api: httpx.Client, db_session: AsyncSession
) -> None:
    export = wait(api, start(api, "export", dataset="tasks", format="csv")["id"])
    assert export["status"] == "succeeded", export
    recent = wait(api, start(api, steps=1, step_ms=0)["id"])
    files = [p for p in get_settings().artifact_path.rglob("*") if p.is_file() and export["id"] in str(p)]
    assert len(files) == 1
    await db_session.execute(
        update(Task).where(Task.id == uuid.UUID(export["id"])).values(finished_at=utcnow() - timedelta(days=40))
    )
    await db_session.commit()

    purged = litestar_cli("tasks", "purge")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "Deleted 1 finished task older than 30 days."
    assert api.get(f"/api/v1/tasks/{export['id']}").status_code == 404
    assert not files[0].exists()
    assert api.get(f"/api/v1/tasks/{recent['id']}").status_code == 200

    assert (
        "Deleted 0 finished tasks older than 2 days." in litestar_cli("tasks", "purge", "--older-than-days", "2").stdout
    )
    everything = litestar_cli("tasks", "purge", "--older-than-days", "0")
    assert everything.stdout.strip() == "Deleted 1 finished task older than 0 days."
    assert api.get(f"/api/v1/tasks/{recent['id']}").status_code == 404


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, flags=re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


def test_metrics_report_tasks_durations_and_queue_depth(api: httpx.Client) -> None:
    for _ in range(3):
        wait(api, start(api, steps=3, step_ms=20)["id"])
    wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)

    # A new web process refreshes the readings at start-up; a scrape only reports them.
    with TestClient(create_app()) as client:
        deadline = time.monotonic() + 15
        while True:
            text = client.get("/metrics").text
            if 'app_tasks{status="succeeded"} 3.0' in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    assert metric(text, "app_tasks", '{status="failed"}') == 1
    for status in ("queued", "running", "cancelled"):
        assert metric(text, "app_tasks", f'{{status="{status}"}}') == 0
    assert metric(text, "app_task_duration_seconds_count") == 4
    p50 = metric(text, "app_task_duration_seconds", '{quantile="0.5"}')
    p95 = metric(text, "app_task_duration_seconds", '{quantile="0.95"}')
    assert 0.04 <= p50 <= p95 < 30
    assert 0 < metric(text, "app_task_duration_seconds_sum") < 120
    for queue in ("tasks", "mail", "maintenance"):  # each queue has workers of its own (app.workers.queues)
        assert metric(text, "app_queue_depth", f'{{queue="{queue}"}}') >= 0
    assert "app_sse_connections" in text


async def test_queue_depth_counts_waiting_and_delayed_messages() -> None:
    broker = StubBroker()
    broker.declare_queue("default")
    assert await queue_depth(broker) == {"default": 0}
    message: Message[Any] = Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={})
    broker.enqueue(message)
    broker.enqueue(message.copy(), delay=60_000)
    assert await queue_depth(broker) == {"default": 2}


@pytest.mark.services
async def test_queue_depth_reads_the_redis_broker_lists() -> None:
    from dramatiq.brokers.redis import RedisBroker

    settings = get_settings()
    namespace = f"{settings.redis_namespace}-depth"
    broker = RedisBroker(url=settings.redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    try:
        broker.declare_queue("default")
        message: Message[Any] = Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={})
        broker.enqueue(message)
        broker.enqueue(message.copy(), delay=60_000)
        assert await queue_depth(broker) == {"default": 2}
        broker.flush_all()
        assert await queue_depth(broker) == {"default": 0}
    finally:
        broker.close()


def test_quantile_is_the_nearest_rank() -> None:
    assert quantile([], 0.5) == 0.0
    assert quantile([1.0], 0.95) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert quantile([float(n) for n in range(1, 101)], 0.95) == 95.0
