"""Operators' view of tasks: `litestar tasks list|retry|purge|watch` and the task series at /metrics."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from queue import Queue
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
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
from app.web.cli import tasks
from app.web.http.metrics import queue_depth
from tests.accounts import LITESTAR, ROOT, operator_cli, signed_in_headers
from tests.servers import LiveServer
from tests.test_accounts_cli import undocumented
from tests.test_tasks import start, wait

#: A task that runs until it is cancelled (as far as a test is concerned).
ENDLESS = {"steps": 10_000, "step_ms": 500}  # long steps: few progress writes while it holds a thread


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def username(api: httpx.Client) -> str:
    return str(api.get("/api/v1/users/me").json()["username"])


def listed_ids(output: str) -> list[str]:
    return re.findall(r"^([0-9a-f-]{36})\s", output, flags=re.MULTILINE)


def test_every_tasks_command_option_and_argument_is_described() -> None:
    assert set(tasks.commands) == {"list", "stats", "retry", "purge", "watch", "logs"}
    assert undocumented(tasks) == []
    shown = CliRunner().invoke(tasks, ["watch", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "Exit code 0 when it succeeded, 1 when it failed or was cancelled, 2 when there is no such task." in (
        " ".join(shown.output.split())
    )
    purge_help = " ".join(CliRunner().invoke(tasks, ["purge", "--help"]).output.split())
    assert "--batch-size INTEGER RANGE Tasks deleted per transaction" in purge_help


def test_list_shows_every_users_tasks_newest_first_and_filters(api: httpx.Client, live_server: LiveServer) -> None:
    first = wait(api, start(api, steps=2, step_ms=0)["id"])
    second = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        other.headers.update(signed_in_headers(other))
        third = wait(other, start(other, steps=3, step_ms=0)["id"])

    everything = operator_cli("tasks", "list")
    assert everything.returncode == 0, everything.stderr
    # Without a terminal, the table is plain columns: the header, then one task a line.
    assert len(everything.stdout.splitlines()) == 4, everything.stdout
    header = everything.stdout.splitlines()[0].split()
    assert header == ["ID", "USER", "KIND", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED", "(UTC)"]
    assert listed_ids(everything.stdout) == [third["id"], second["id"], first["id"]]
    row = next(line for line in everything.stdout.splitlines() if line.startswith(first["id"]))
    assert row.split()[1:6] == [username(api), "demo", "succeeded", "1", "2/2"]
    failed_row = next(line for line in everything.stdout.splitlines() if line.startswith(second["id"]))
    assert failed_row.split()[3:5] == ["failed", "3"]

    mine = operator_cli("tasks", "list", "--user", username(api))
    assert listed_ids(mine.stdout) == [second["id"], first["id"]]
    failed = operator_cli("tasks", "list", "--status", "failed")
    assert listed_ids(failed.stdout) == [second["id"]]
    newest = operator_cli("tasks", "list", "--limit", "1")
    assert listed_ids(newest.stdout) == [third["id"]]

    nobody = operator_cli("tasks", "list", "--user", "nobody-at-all")
    assert nobody.returncode != 0
    assert "No user" in nobody.stderr


def test_retry_queues_a_failed_task_again_and_refuses_others(api: httpx.Client, mode: str) -> None:
    failed = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)

    retried = operator_cli("tasks", "retry", failed["id"])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"Task {failed['id']} queued again (attempt 4)" in retried.stdout
    if mode == "services":
        # Sent to the workers: it runs again (and, failing at step 1 every time, fails again).
        again = wait(api, failed["id"], timeout=60)
        assert again["status"] == "failed"
        assert again["attempts"] > 3
        assert again["started_at"] > failed["started_at"]
    else:
        # Embedded, the broker lives in the web process: its sweeper sends the task later. A worker thread
        # woken by any other message claims the fairest task that may start, not its message's, so the
        # retried task may already have started again (seen in a full run: "running").
        task = api.get(f"/api/v1/tasks/{failed['id']}").json()
        assert task["attempts"] >= 4
        assert (task["status"], task["error"]) == ("queued", None) or task["started_at"] > failed["started_at"]

    succeeded = wait(api, start(api, steps=1, step_ms=0)["id"])
    refused = operator_cli("tasks", "retry", succeeded["id"])
    assert refused.returncode != 0
    assert "Only a failed or cancelled task can be retried; this one is succeeded." in refused.stderr
    assert api.get(f"/api/v1/tasks/{succeeded['id']}").json()["status"] == "succeeded"

    missing = operator_cli("tasks", "retry", str(uuid.uuid4()))
    assert missing.returncode != 0
    assert "No task with id" in missing.stderr


def test_retry_all_queues_every_failed_task_and_skips_those_over_a_cap(
    api: httpx.Client, live_server: LiveServer
) -> None:
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        other.headers.update(signed_in_headers(other))
        failing = [start(api, steps=1, step_ms=0, fail_at_step=1)["id"]]
        failing += [start(other, steps=1, step_ms=0, fail_at_step=1)["id"] for _ in range(2)]
        mine, others = failing[0], failing[1:]
        assert [wait(api, mine, timeout=60)["status"]] + [wait(other, t, timeout=60)["status"] for t in others] == [
            "failed"
        ] * 3
        # Two unfinished tasks: at a cap of 2 active tasks, this user may not retry one more.
        endless = [start(api, **ENDLESS)["id"] for _ in range(2)]
        try:
            capped = {"MAX_ACTIVE_TASKS": "2"}
            retried = operator_cli("tasks", "retry", "--all", env=capped)
            assert retried.returncode == 0, retried.stdout + retried.stderr
            lines = retried.stdout.splitlines()
            assert f"Task {mine} skipped, over its owner's cap: You have 2 unfinished tasks; the limit is 2." in lines
            assert sorted(re.findall(r"^Task (\S+) queued again \(attempt 4\)\.$", retried.stdout, re.M)) == sorted(
                others
            )
            assert lines[-1].startswith("Queued 2 failed tasks again; skipped 1."), lines
            assert api.get(f"/api/v1/tasks/{mine}").json()["attempts"] == 3
            for task_id in others:
                assert other.get(f"/api/v1/tasks/{task_id}").json()["attempts"] >= 4

            only_mine = operator_cli("tasks", "retry", "--all", "--user", username(api), env=capped)
            assert only_mine.returncode == 0, only_mine.stdout + only_mine.stderr
            assert only_mine.stdout.splitlines()[-1].startswith("Queued 0 failed tasks again; skipped 1.")
        finally:
            for task_id in endless:
                api.post(f"/api/v1/tasks/{task_id}/cancel")
        for task_id in endless:
            wait(api, task_id)

    freed = operator_cli("tasks", "retry", "--all", "--user", username(api))
    assert freed.returncode == 0, freed.stdout + freed.stderr
    assert re.findall(r"^Task (\S+) queued again", freed.stdout, re.M) == [mine]
    assert freed.stdout.splitlines()[-1].startswith("Queued 1 failed task again; skipped 0.")
    assert api.get(f"/api/v1/tasks/{mine}").json()["attempts"] >= 4

    for wrong in (["retry"], ["retry", mine, "--all"], ["retry", mine, "--user", username(api)]):
        refused = operator_cli("tasks", *wrong)
        assert refused.returncode == 2, refused.stdout + refused.stderr


class Watch:
    """`litestar tasks watch TASK_ID` running, its output read line by line as it comes."""

    def __init__(self, task_id: str) -> None:
        self.process = subprocess.Popen(
            [str(LITESTAR), "tasks", "watch", task_id],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._fresh: Queue[str | None] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._fresh.put(line.rstrip("\n"))
        self._fresh.put(None)

    def wait_for(self, prefix: str, timeout: float = 120) -> str:
        """The first line (from now) that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._fresh.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"ended without a line starting with {prefix!r}: {self.lines}"
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def end(self, timeout: float = 120) -> int:
        """Its exit code, once every line is read."""
        code = self.process.wait(timeout=timeout)
        while (line := self._fresh.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def test_watch_follows_a_task_live_to_its_end(api: httpx.Client) -> None:
    # The user's running share taken by endless tasks: the watched task stays queued until one is cancelled.
    share = get_settings().max_running_per_user
    blockers = [start(api, **ENDLESS)["id"] for _ in range(share)]
    watches: list[Watch] = []
    try:
        for task_id in blockers:
            wait(api, task_id, until={"running"}, timeout=60)
        watched = start(api, steps=4, step_ms=300)["id"]
        watch = Watch(watched)
        watches.append(watch)
        assert watch.wait_for("queued").split()[:3] == ["queued", "attempt", "1"]
        assert api.post(f"/api/v1/tasks/{blockers[0]}/cancel").status_code == 202

        assert watch.end() == 0, watch.process.stderr.read() if watch.process.stderr else ""
        progress = [re.search(r" (\d+/4) ", line) for line in watch.lines if line.startswith("running")]
        assert [found.group(1) for found in progress if found] == ["1/4", "2/4", "3/4", "4/4"], watch.lines
        assert watch.lines[-2].split()[:4] == ["succeeded", "attempt", "1", "4/4"], watch.lines
        assert watch.lines[-1] == f"Task {watched} succeeded."

        cancelled = Watch(blockers[1])
        watches.append(cancelled)
        cancelled.wait_for("running")
        assert api.post(f"/api/v1/tasks/{blockers[1]}/cancel").status_code == 202
        assert cancelled.end() == 1
        assert cancelled.lines[-1] == f"Task {blockers[1]} was cancelled."
    finally:
        for watch in watches:
            watch.stop()
        for task_id in blockers:
            api.post(f"/api/v1/tasks/{task_id}/cancel")
        for task_id in blockers:
            wait(api, task_id)


def test_watch_ends_with_exit_code_1_for_a_failed_task_and_2_for_an_unknown_one(api: httpx.Client) -> None:
    failing = start(api, steps=1, step_ms=0, fail_at_step=1)["id"]
    watched = operator_cli("tasks", "watch", failing)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert watched.stdout.splitlines()[-1] == f"Task {failing} failed: StepFailed: Step 1 failed (fail_at_step=1)."
    assert api.get(f"/api/v1/tasks/{failing}").json()["status"] == "failed"
    # Watched after its end, a task shows its final state at once.
    again = operator_cli("tasks", "watch", failing)
    assert again.returncode == 1
    assert again.stdout.splitlines()[0].split()[:3] == ["failed", "attempt", "3"]

    unknown = str(uuid.uuid4())
    missing = operator_cli("tasks", "watch", unknown)
    assert missing.returncode == 2
    assert f"No task with id {unknown}." in missing.stderr


async def test_purge_deletes_old_finished_tasks_and_their_artifacts_in_batches(
    api: httpx.Client, db_session: AsyncSession
) -> None:
    export = wait(api, start(api, "export", dataset="tasks", format="csv")["id"])
    assert export["status"] == "succeeded", export
    older = [wait(api, start(api, steps=1, step_ms=0)["id"])["id"] for _ in range(3)]
    recent = wait(api, start(api, steps=1, step_ms=0)["id"])
    files = [p for p in get_settings().artifact_path.rglob("*") if p.is_file() and export["id"] in str(p)]
    assert len(files) == 1
    old_ids = [uuid.UUID(task_id) for task_id in [export["id"], *older]]
    await db_session.execute(update(Task).where(Task.id.in_(old_ids)).values(finished_at=utcnow() - timedelta(days=40)))
    await db_session.commit()

    purged = operator_cli("tasks", "purge", "--batch-size", "3")
    assert purged.returncode == 0, purged.stderr
    # Without a terminal, a line per batch instead of the progress bar, then the count.
    assert purged.stdout.splitlines() == [
        "Deleted 3 (3 of 4).",
        "Deleted 1 (4 of 4).",
        "Deleted 4 finished tasks older than 30 days.",
    ]
    for task_id in [export["id"], *older]:
        assert api.get(f"/api/v1/tasks/{task_id}").status_code == 404
    assert not files[0].exists()
    assert api.get(f"/api/v1/tasks/{recent['id']}").status_code == 200

    nothing = operator_cli("tasks", "purge", "--older-than-days", "2")
    assert nothing.stdout.splitlines() == ["Deleted 0 finished tasks older than 2 days."]
    everything = operator_cli("tasks", "purge", "--older-than-days", "0")
    assert everything.stdout.splitlines()[-1] == "Deleted 1 finished task older than 0 days."
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
