"""Fair shares of the task threads between users (issue 18), in real processes, in both run modes.

Each test runs its own web process (embedded: with its worker threads; services: with a
worker process and a redis-server of its own) on a database of its own (a copy of one
migrated for the module), so no other worker of the run can take its tasks.

Before: one user's 100 queued tasks ran first-come first-served, so another user's task
waited for all of them; and one user could hold every thread.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.chaos import migrate
from tests.conftest import copy_database, create_database, drop_database
from tests.processes import FINISHED, eventually, redis_server, stack, task_of, user_client

THREADS = 4  # WORKER_THREADS of the test run (tests/conftest.py), and of tests/servers.py's workers
LONG = {"steps": 100, "step_ms": 500}  # 50 s; long steps: a held thread writes 2 progress reports a second, not 10
#: A database URL means services mode to the settings, which then want a secret of their own.
SECRET = {"SECRET_KEY": os.environ.get("SECRET_KEY") or uuid.uuid4().hex * 2}


@pytest.fixture(scope="module")
def template(migrated: None) -> Iterator[str]:
    """A migrated database that each test copies: one migration for the module instead of one per test."""
    database = create_database("fair_template")
    try:
        with patched_environment(SECRET):
            migrate(database)
        yield database
    finally:
        drop_database(database)


@contextlib.contextmanager
def service(template: str, mode: str, settings: dict[str, str]) -> Iterator[str]:
    """The URL of a web process (and, in services mode, a worker) on a new database, with `settings`."""
    database = copy_database(template, "fair")
    try:
        env = {**settings, **SECRET, "DATABASE_URL": database, "WORKER_THREADS": str(THREADS)}
        if mode == "embedded":
            with stack("", worker=False, settings=env) as services:  # no REDIS_URL: workers in the web process
                yield services.url
        else:
            with redis_server() as broker, stack(broker.url, settings=env) as services:
                yield services.url
    finally:
        drop_database(database)


@contextlib.contextmanager
def patched_environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def submit(api: httpx.Client, count: int = 1, **params: Any) -> list[str]:
    ids = []
    for _ in range(count):
        response = api.post("/api/v1/tasks", json={"kind": "demo", "params": params})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def statuses(api: httpx.Client, task_ids: list[str]) -> list[dict[str, Any]]:
    return [task_of(api, task_id) for task_id in task_ids]


def running(api: httpx.Client, task_ids: list[str]) -> list[dict[str, Any]]:
    return [task for task in statuses(api, task_ids) if task["status"] == "running"]


def cancel_all(api: httpx.Client, task_ids: list[str]) -> None:
    for task_id in task_ids:
        api.post(f"/api/v1/tasks/{task_id}/cancel")


def test_the_next_thread_goes_to_the_user_with_the_fewest_running_tasks(template: str, mode: str) -> None:
    """A floods five times the threads with long tasks and holds every thread; B's task takes the first thread
    that frees, not A's next (100 tasks here cost the run 200 requests more and found nothing more)."""
    settings = {"MAX_ACTIVE_TASKS": "200", "MAX_RUNNING_PER_USER": str(THREADS)}
    with service(template, mode, settings) as url, user_client(url) as a, user_client(url) as b:
        flood = submit(a, 5 * THREADS, **LONG)
        try:
            eventually(lambda: len(running(a, flood[: THREADS + 2])) == THREADS, timeout=60, what="A on every thread")
            (mine,) = submit(b, steps=1, step_ms=0)
            assert task_of(b, mine)["status"] == "queued"  # every thread is A's
            first = running(a, flood[:THREADS])[0]
            assert a.post(f"/api/v1/tasks/{first['id']}/cancel").status_code == 202  # a thread frees at A's next step
            done = eventually(
                lambda: (t := task_of(b, mine))["status"] in FINISHED and t, timeout=30, what="B's task to run"
            )
            assert done["status"] == "succeeded", done
            later = [task for task in statuses(a, flood[THREADS:]) if task["started_at"]]
            # A's next task started only after B's: on the thread B's task left, or not yet at all.
            assert all(task["started_at"] >= done["started_at"] for task in later), (done, later)
            assert len(later) <= 1, later
        finally:
            cancel_all(a, flood)


def test_a_user_runs_at_most_their_share_and_others_start_at_once(template: str, mode: str) -> None:
    """MAX_RUNNING_PER_USER=2 of 4 threads, and MAX_RUNNING_PER_KIND demo=1 for a second check."""
    settings = {"MAX_ACTIVE_TASKS": "200", "MAX_RUNNING_PER_USER": "2"}
    with service(template, mode, settings) as url, user_client(url) as a, user_client(url) as b:
        flood = submit(a, 10, **LONG)
        mine: list[str] = []
        try:
            eventually(lambda: len(running(a, flood)) == 2, timeout=60, what="two of A's tasks running")
            for _ in range(5):  # threads stay free, and A's queued tasks stay queued
                assert len(running(a, flood)) == 2
                time.sleep(0.2)
            mine = submit(b, 2, **LONG)
            eventually(lambda: len(running(b, mine)) == 2, timeout=30, what="B's tasks on the free threads")
            assert len(running(a, flood)) == 2
        finally:
            cancel_all(a, flood)
            cancel_all(b, mine)


def test_a_kind_can_have_a_smaller_share(template: str, mode: str) -> None:
    settings = {"MAX_ACTIVE_TASKS": "200", "MAX_RUNNING_PER_USER": "2", "MAX_RUNNING_PER_KIND": "demo=1"}
    with service(template, mode, settings) as url, user_client(url) as a:
        demos = submit(a, 3, **LONG)
        try:
            eventually(lambda: len(running(a, demos)) == 1, timeout=60, what="one demo task running")
            export = a.post("/api/v1/tasks", json={"kind": "export", "params": {"dataset": "tasks", "format": "csv"}})
            assert export.status_code == 202, export.text
            exported = eventually(
                lambda: (t := task_of(a, export.json()["id"]))["status"] in FINISHED and t,
                timeout=30,
                what="the export (another kind) to run beside it",
            )
            assert exported["status"] == "succeeded", exported
            assert len(running(a, demos)) == 1
        finally:
            cancel_all(a, demos)
