"""Jobs on RabbitMQ (BROKER_URL=amqp://...): the same service with Dramatiq's RabbitMQ broker.

The happy path on the machine's RabbitMQ; queue depth and a broker restart on the module's private node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pika.exceptions  # type: ignore[import-untyped]
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from app.web.http.metrics import rabbitmq_counts
from app.workers.queues import TASKS
from tests.accounts import PASSWORD, new_identity, operator_cli, signed_in_headers
from tests.chaos import query, read_facts
from tests.processes import (
    FINISHED,
    RABBITMQ_SERVER,
    RabbitmqServer,
    eventually,
    rabbitmq_server,
    stack,
    user_client,
    wait_task,
)
from tests.servers import BIN, LiveServer, free_port, spawn, spawn_web, stop_all, unavailable, wait_ready

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.services
def test_a_task_runs_through_rabbitmq(migrated: None) -> None:
    if not _rabbitmq_answers():
        unavailable("RabbitMQ does not answer on 127.0.0.1:5672; start it to run this test (CI must have it)")
    env = {"BROKER_URL": AMQP, "REDIS_NAMESPACE": f"rabbit{uuid.uuid4().hex[:8]}"}
    port = free_port()
    web = spawn_web("web-amqp", port, ROOT, env)
    worker = spawn(
        "worker-amqp", [str(BIN / "dramatiq"), "app.workers", "--processes", "1", "--threads", "2"], ROOT, env
    )
    server = LiveServer(url=f"http://127.0.0.1:{port}", processes=[web, worker])
    try:
        wait_ready(server)
        with httpx.Client(base_url=server.url, timeout=20) as client:
            client.headers.update(signed_in_headers(client))
            task = client.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 3, "step_ms": 10}}).json()
            deadline = time.monotonic() + 30
            while (current := client.get(f"/api/v1/tasks/{task['id']}").json())["status"] != "succeeded":
                assert current["status"] in ("queued", "running"), current
                assert time.monotonic() < deadline, (current, server.logs())
                time.sleep(0.1)
        # The web process sent the message to RabbitMQ and the worker took it from there: no Redis queue
        # of this namespace was involved (the web app would not have sent it anywhere else).
        assert current["result"] == {"steps": 3}
    finally:
        stop_all([worker, web])


# --- RabbitMQ like Redis: queue depth, a broker restart and the recovery ------------------------------------------
# The module's tests share a private RabbitMQ node (tests/processes.py, the `rabbit` fixture), so no other
# xdist worker takes their messages and the queue depths are theirs; each leaves its queues empty. The web
# process and workers use the run's Postgres and Redis.

RESTART_SETTINGS = {
    "TASK_STALE_SECONDS": "3",
    "TASK_RESEND_SECONDS": "2",
    "MAX_ACTIVE_TASKS": "100000",
}


def require_rabbitmq_server() -> None:
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        unavailable(
            f"a private RabbitMQ node needs {RABBITMQ_SERVER}: apt-get install rabbitmq-server (CI must have it)"
        )


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitmqServer]:
    """One private node for the module's tests (a node takes seconds to boot). Each test leaves its
    queues empty and the node running: a test that restarts it starts it again."""
    require_rabbitmq_server()
    with rabbitmq_server() as node:
        yield node


def superuser_headers(api: httpx.Client) -> dict[str, str]:
    """A superuser made with `litestar users create --superuser`, signed in through the API."""
    identity = new_identity()
    made = operator_cli(
        "users", "create", "--email", identity["email"], "--username", identity["username"],
        "--password", PASSWORD, "--superuser",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    tokens = api.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def admin_depth(api: httpx.Client, admin: dict[str, str]) -> dict[str, int] | None:
    load = api.get("/api/v1/admin/tasks/load", headers=admin)
    assert load.status_code == 200, load.text
    queues: dict[str, int] | None = load.json()["queues"]
    return queues


def metrics_depth(api: httpx.Client) -> dict[str, float]:
    text = api.get("/metrics").text
    found = re.findall(r'^app_queue_depth\{queue="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {queue: float(value) for queue, value in found}


def submit(api: httpx.Client, steps: int = 3, step_ms: int = 10) -> httpx.Response:
    return api.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": steps, "step_ms": step_ms}})


def tasks_by_id(ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = query(
        os.environ["DATABASE_URL"],
        "SELECT id::text AS id, status, attempts FROM task WHERE id = ANY($1::uuid[])",
        ids,
    )
    return {row["id"]: row for row in rows}


@pytest.mark.services
def test_rabbitmq_queue_depth_grows_without_a_worker_and_drains_with_one(
    migrated: None, rabbit: RabbitmqServer
) -> None:
    """Queue depth on RabbitMQ, in the admin task-load API and in /metrics (`app_queue_depth`).

    With no worker, each submission leaves one turn on the `tasks` queue; a worker started
    afterwards takes them all, every task succeeds and the depth is 0 again (as the module's next
    test expects of the node).
    """
    submitted = 5
    settings = {
        "BROKER_URL": rabbit.url,
        "REDIS_NAMESPACE": f"rabbit{uuid.uuid4().hex[:8]}",
        "METRICS_REFRESH_SECONDS": "1",
    }
    with stack(os.environ["REDIS_URL"], worker=False, settings=settings) as services:
        try:
            with user_client(services.url) as api:
                admin = superuser_headers(api)
                ids = []
                for _ in range(submitted):
                    answer = submit(api)
                    assert answer.status_code == 202, answer.text
                    ids.append(answer.json()["id"])
                depth = eventually(
                    lambda: (d := admin_depth(api, admin)) and d.get(TASKS) == submitted and d,
                    timeout=30,
                    what=f"{submitted} messages on the tasks queue in the admin task load",
                )
                assert set(depth) >= {TASKS}, depth
                # The refresher reads the depth every METRICS_REFRESH_SECONDS: /metrics shows it within two.
                eventually(
                    lambda: metrics_depth(api).get(TASKS) == submitted,
                    timeout=60,
                    what=f"app_queue_depth{{queue={TASKS!r}}} {submitted} in /metrics",
                    interval=0.5,
                )
                assert {task["status"] for task in tasks_by_id(ids).values()} == {"queued"}

                services.start_worker()
                for task_id in ids:
                    done = wait_task(api, task_id, lambda t: t["status"] in FINISHED, timeout=90, what="to end")
                    assert (done["status"], done["result"]) == ("succeeded", {"steps": 3}), done
                eventually(
                    lambda: (admin_depth(api, admin) or {}).get(TASKS) == 0,
                    timeout=30,
                    what="the tasks queue drained in the admin task load",
                )
                eventually(
                    lambda: metrics_depth(api).get(TASKS) == 0,
                    timeout=60,
                    what="app_queue_depth 0 in /metrics",
                    interval=0.5,
                )
        except BaseException:
            print(services.logs(tail=20000))
            raise


@pytest.mark.services
def test_a_queue_count_after_a_rabbitmq_restart_uses_a_new_connection(rabbit: RabbitmqServer) -> None:
    """Dramatiq keeps a connection per thread and only its `enqueue` replaces a broken one: counted with
    Dramatiq alone, a thread that counted before a restart fails for good afterwards (the health check
    said the broker was down, the task load had no depths). `rabbitmq_counts` connects again.

    Counted on a queue of its own: the module's other tests share the node and may leave messages in
    `tasks` (counting declares the queue, so a new name starts empty)."""
    broker = RabbitmqBroker(url=rabbit.url)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        assert rabbitmq_counts(broker, queue) == (0, 0, 0)
        rabbit.stop()
        with pytest.raises(pika.exceptions.AMQPError):
            rabbitmq_counts(broker, queue)
        rabbit.start()
        assert rabbitmq_counts(broker, queue) == (0, 0, 0)
        assert rabbitmq_counts(broker, queue) == (0, 0, 0)
    finally:
        broker.close()


class Submitter(threading.Thread):
    """Submits a demo task every `every` seconds until stopped, keeping every answer."""

    def __init__(self, url: str, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.halt = threading.Event()
        self.accepted: list[str] = []
        self.answers: list[tuple[int, str, str]] = []  # (status, content type, body) of every other answer
        self.broken: list[str] = []

    def run(self) -> None:
        with user_client(self.url) as api:
            while not self.halt.is_set():
                try:
                    answer = submit(api, steps=10, step_ms=50)
                except httpx.HTTPError as exc:
                    self.broken.append(repr(exc))
                else:
                    if answer.status_code == 202:
                        self.accepted.append(answer.json()["id"])
                    else:
                        self.answers.append(
                            (answer.status_code, answer.headers.get("content-type", ""), answer.text[:300])
                        )
                self.halt.wait(self.every)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


class Sweeper(threading.Thread):
    """Plays the scheduler: sends `tasks.sweep` to RabbitMQ every second (the send fails while it is down)."""

    def __init__(self, amqp_url: str) -> None:
        super().__init__(daemon=True)
        self.amqp_url = amqp_url
        self.halt = threading.Event()

    def run(self) -> None:
        from app.workers import broker as declared

        queue = declared.get_actor("tasks.sweep").queue_name
        broker = RabbitmqBroker(url=self.amqp_url)
        try:
            while not self.halt.is_set():
                message: dramatiq.Message[Any] = dramatiq.Message(
                    queue_name=queue, actor_name="tasks.sweep", args=(), kwargs={}, options={}
                )
                with contextlib.suppress(Exception):
                    broker.enqueue(message)
                self.halt.wait(1.0)
        finally:
            broker.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


@pytest.mark.services
def test_tasks_survive_a_rabbitmq_restart(migrated: None, rabbit: RabbitmqServer) -> None:
    """RabbitMQ stops (cleanly) while tasks are submitted and running, and starts again 3 s later.

    Every task accepted (202), before, during or after the outage, ends succeeded exactly once
    (one end, one notification); a submission the service could not take gets a 503 problem,
    never a 500; the worker takes messages again and /health/ready answers 200.
    """
    settings = {**RESTART_SETTINGS, "BROKER_URL": rabbit.url, "REDIS_NAMESPACE": f"rabbit{uuid.uuid4().hex[:8]}"}
    with stack(os.environ["REDIS_URL"], settings=settings) as services:
        submitter = Submitter(services.url)
        sweeper = Sweeper(rabbit.url)
        try:
            wait_ready(LiveServer(url=services.url, processes=[services.web]))
            submitter.start()
            sweeper.start()

            def running() -> bool:
                tasks = tasks_by_id(list(submitter.accepted))
                return any(task["status"] == "running" for task in tasks.values())

            eventually(running, timeout=60, what="a running task")
            before = len(submitter.accepted)
            rabbit.stop()
            time.sleep(3)
            rabbit.start()
            during = submitter.accepted[before:]
            # Until a task accepted after the restart has run, the load goes on.
            eventually(lambda: len(submitter.accepted) > len(during) + before, timeout=60, what="a submission")
            after = submitter.accepted[-1]
            eventually(
                lambda: tasks_by_id([after]).get(after, {}).get("status") == "succeeded",
                timeout=90,
                what="a task accepted after the restart to succeed",
            )
            submitter.stop()
            accepted = list(submitter.accepted)

            def all_ended() -> bool:
                tasks = tasks_by_id(accepted)
                return len(tasks) == len(accepted) and all(t["status"] in FINISHED for t in tasks.values())

            eventually(all_ended, timeout=120, what="every accepted task to end", interval=0.5)
            wait_ready(LiveServer(url=services.url, processes=[services.web]), timeout=60)
            with user_client(services.url) as api:
                admin = superuser_headers(api)
                eventually(
                    lambda: (admin_depth(api, admin) or {}).get(TASKS) == 0,
                    timeout=30,
                    what="the tasks queue's depth, 0, in the admin task load",
                )
        except BaseException:
            print(f"accepted: {submitter.accepted}; other answers: {submitter.answers}")
            print(services.logs(tail=30000))
            raise
        finally:
            submitter.stop()
            sweeper.stop()
    facts = asyncio.run(read_facts(os.environ["DATABASE_URL"]))
    tasks = {task_id: facts.tasks[task_id] for task_id in accepted}
    assert Counter(task["status"] for task in tasks.values()) == {"succeeded": len(accepted)}, tasks
    problems = []
    for task_id, task in tasks.items():
        events = facts.events[str(task["user_id"])]
        ends = [
            payload["status"]
            for _, kind, payload in events
            if kind == "task.updated" and payload["id"] == task_id and payload["status"] in FINISHED
        ]
        notes = facts.notifications.get(task_id, [])
        if ends != ["succeeded"] or len(notes) != 1 or task["attempts"] != 1:
            problems.append(f"task {task_id}: ends {ends}, {len(notes)} notifications, attempts {task['attempts']}")
    assert not problems, "\n".join(problems)
    assert not submitter.broken, submitter.broken
    for status, content_type, body in submitter.answers:
        assert (status, content_type.split(";")[0]) == (503, "application/problem+json"), body
    refused = len(submitter.answers)
    print(f"\naccepted {len(accepted)} ({len(during)} while RabbitMQ was down), refused with 503: {refused}")
