"""Task output (issue 21.4): lines written by tasks, paged by the API, live on the stream, on the page and in the CLI.

Real HTTP against the live service (both modes); the caps are tested on the domain's log buffer
against the real database, since no kind writes 10,000 lines or NUL bytes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.clock import utcnow
from app.domain.models import TaskLog
from app.domain.tasks.logs import LINE_CUT, MAX_LINE_CHARS, MAX_LINES, TRUNCATED_LOG, LogBuffer
from app.domain.tasks.models import Task
from tests.accounts import operator_cli, signed_in_headers
from tests.servers import LiveServer
from tests.sse import Event, events
from tests.test_pages import sign_up, start_task, task_status, wait_until

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def start(api: httpx.Client, **params: Any) -> str:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": params})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait(api: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = dict(api.get(f"/api/v1/tasks/{task_id}").json())
        if task["status"] in FINISHED:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def logs(api: httpx.Client, task_id: str, **params: Any) -> dict[str, Any]:
    response = api.get(f"/api/v1/tasks/{task_id}/logs", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def count_lines(db_session: AsyncSession, task_id: str) -> int:
    query = select(func.count()).select_from(TaskLog).where(TaskLog.task_id == uuid.UUID(task_id))
    return int(await db_session.scalar(query) or 0)


def test_a_demo_task_s_lines_are_paged_in_order_by_after(api: httpx.Client) -> None:
    task_id = start(api, steps=5, step_ms=0)
    assert wait(api, task_id)["status"] == "succeeded"

    page = logs(api, task_id)
    assert [line["seq"] for line in page["items"]] == [1, 2, 3, 4, 5]
    assert [line["message"] for line in page["items"]] == [f"Step {i} of 5 done" for i in range(1, 6)]
    assert {(line["level"], line["attempt"]) for line in page["items"]} == {("info", 1)}
    assert page["items"][0].keys() == {"seq", "level", "message", "created_at", "attempt"}
    created = [line["created_at"] for line in page["items"]]
    assert created == sorted(created)
    assert page["next_after"] == 5

    first = logs(api, task_id, limit=2)
    assert ([line["seq"] for line in first["items"]], first["next_after"]) == ([1, 2], 2)
    second = logs(api, task_id, after=first["next_after"], limit=2)
    assert ([line["seq"] for line in second["items"]], second["next_after"]) == ([3, 4], 4)
    last = logs(api, task_id, after=second["next_after"], limit=2)
    assert ([line["seq"] for line in last["items"]], last["next_after"]) == ([5], 5)
    assert logs(api, task_id, after=5) == {"items": [], "next_after": 5}


def test_a_failing_step_logs_an_error_and_each_attempt_goes_on_numbering(api: httpx.Client) -> None:
    task_id = start(api, steps=2, step_ms=0, fail_at_step=2)
    task = wait(api, task_id)
    assert (task["status"], task["attempts"]) == ("failed", 3)

    lines = logs(api, task_id)["items"]
    assert [line["seq"] for line in lines] == list(range(1, 10))
    assert [line["attempt"] for line in lines] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    error = "StepFailed: Step 2 failed (fail_at_step=2)"
    for attempt in (1, 2):
        done, failed, retrying = lines[3 * attempt - 3 : 3 * attempt]
        assert (done["level"], done["message"]) == ("info", "Step 1 of 2 done")
        assert (failed["level"], failed["message"]) == ("error", "Step 2 of 2 failed (fail_at_step=2)")
        assert retrying["level"] == "warning"
        assert retrying["message"].startswith(f"Attempt {attempt} failed: {error}; trying again in about ")
    assert (lines[-2]["level"], lines[-2]["message"]) == ("error", "Step 2 of 2 failed (fail_at_step=2)")
    assert (lines[-1]["level"], lines[-1]["message"]) == ("error", f"Attempt 3 failed, the last of its round: {error}")


@pytest.mark.parametrize(
    "params",
    [{"after": -1}, {"after": 2**31}, {"after": "x"}, {"limit": 0}, {"limit": 1001}, {"limit": 2**70}],
)
def test_bad_parameters_are_a_400_problem(api: httpx.Client, params: dict[str, Any]) -> None:
    task_id = start(api, steps=1, step_ms=0)
    refused = api.get(f"/api/v1/tasks/{task_id}/logs", params=params)
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert {"type", "title", "status", "detail"} <= refused.json().keys()


def test_only_the_owner_reads_the_lines_and_a_read_token_may(api: httpx.Client, live_server: LiveServer) -> None:
    task_id = start(api, steps=2, step_ms=0)
    wait(api, task_id)
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        assert other.get(f"/api/v1/tasks/{task_id}/logs").status_code == 401
        other.headers.update(signed_in_headers(other))
        hidden = other.get(f"/api/v1/tasks/{task_id}/logs")
        assert hidden.status_code == 404, hidden.text
        assert hidden.headers["content-type"].startswith("application/problem+json")
    assert api.get(f"/api/v1/tasks/{uuid.uuid4()}/logs").status_code == 404

    made = api.post("/api/v1/users/me/tokens", json={"name": "reader", "scopes": ["read"], "expires_in_days": 1})
    assert made.status_code == 201, made.text
    token = {"Authorization": f"Bearer {made.json()['token']}"}
    with httpx.Client(base_url=live_server.url, timeout=20, headers=token) as script:
        read = script.get(f"/api/v1/tasks/{task_id}/logs")
        assert read.status_code == 200, read.text
        assert [line["seq"] for line in read.json()["items"]] == [1, 2]


async def _log_events_until_end(client: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> list[Event]:
    """The task's `task.log` events and its final `task.updated`, from the stream opened with `headers`."""
    found: list[Event] = []
    async with asyncio.timeout(30), client.stream("GET", "/api/v1/events", headers=headers) as response:
        assert response.status_code == 200
        async for event in events(response):
            if event.event == "task.log" and event.data["task_id"] == task_id:
                found.append(event)
            if event.event == "task.updated" and event.data["id"] == task_id and event.data["status"] in FINISHED:
                found.append(event)
                return found
    raise AssertionError("stream ended")


async def test_lines_arrive_live_as_task_log_events_and_replay_after_a_reconnect(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=20) as sync_client:
        headers = signed_in_headers(sync_client)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20, headers=headers) as client:
        started = await client.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 4, "step_ms": 50}})
        assert started.status_code == 202, started.text
        task_id = started.json()["id"]
        live = await _log_events_until_end(client, task_id, {"Last-Event-ID": "0"})
        *log_events, end = live
        assert end.data["status"] == "succeeded"
        lines = [line for event in log_events for line in event.data["lines"]]
        assert [line["seq"] for line in lines] == [1, 2, 3, 4]
        assert [line["message"] for line in lines] == [f"Step {i} of 4 done" for i in range(1, 5)]
        assert all(event.id < end.id for event in log_events)  # the lines come before the end
        stored = (await client.get(f"/api/v1/tasks/{task_id}/logs")).json()["items"]
        assert lines == stored  # what the stream said is what the API keeps

        # Reconnected after the first batch, the stream replays every later one, and nothing else of the task's.
        replayed = await _log_events_until_end(client, task_id, {"Last-Event-ID": str(log_events[0].id)})
        assert [(event.id, event.event, event.data) for event in replayed] == [
            (event.id, event.event, event.data) for event in live[1:]
        ]


async def test_the_buffer_caps_lines_strips_controls_and_keeps_numbering(
    api: httpx.Client, db_session: AsyncSession
) -> None:
    """The log buffer on the real database: what no kind here writes (NUL, huge lines, 10,000 lines)."""
    task_id = start(api, steps=1, step_ms=0)
    wait(api, task_id)  # line 1 is the demo's; a later attempt's buffer reads that and goes on at 2
    buffer = LogBuffer(uuid.UUID(task_id), attempt=2)
    with pytest.raises(ValueError, match="Unknown log level"):
        buffer.add("nope", "fatal")  # type: ignore[arg-type]
    buffer.add("NUL\x00 and\tcontrol\x1b[31m\r\nchars\x7f gone \ud800")
    buffer.add("x" * (MAX_LINE_CHARS * 3))
    assert buffer.waiting
    assert not buffer.full
    async with db_session.begin():
        staged = await buffer.stage(db_session)
    buffer.written(staged)
    assert not buffer.waiting

    lines = logs(api, task_id)["items"]
    assert [(line["seq"], line["attempt"]) for line in lines] == [(1, 1), (2, 2), (3, 2)]
    assert lines[1]["message"] == "NUL and control[31m chars gone ?"
    assert len(lines[2]["message"]) == MAX_LINE_CHARS
    assert lines[2]["message"].endswith(LINE_CUT)

    for n in range(MAX_LINES + 50):
        buffer.add(f"line {n}", "debug")
    assert buffer.full
    async with db_session.begin():
        staged = await buffer.stage(db_session)
    buffer.written(staged)
    buffer.add("after the cap: dropped")
    assert not buffer.waiting
    assert await count_lines(db_session, task_id) == MAX_LINES + 1
    tail = logs(api, task_id, after=MAX_LINES - 2)
    assert [(line["seq"], line["level"]) for line in tail["items"]] == [
        (MAX_LINES - 1, "debug"),
        (MAX_LINES, "debug"),
        (MAX_LINES + 1, "warning"),
    ]
    assert tail["items"][-1]["message"] == TRUNCATED_LOG


async def test_deleting_or_purging_a_task_removes_its_lines(api: httpx.Client, db_session: AsyncSession) -> None:
    deleted, purged, kept = (start(api, steps=3, step_ms=0) for _ in range(3))
    for task_id in (deleted, purged, kept):
        wait(api, task_id)
        assert await count_lines(db_session, task_id) == 3

    assert api.delete(f"/api/v1/tasks/{deleted}").status_code == 204
    assert await count_lines(db_session, deleted) == 0

    await db_session.execute(
        update(Task).where(Task.id == uuid.UUID(purged)).values(finished_at=utcnow() - timedelta(days=40))
    )
    await db_session.commit()
    result = operator_cli("tasks", "purge")
    assert result.returncode == 0, result.stderr
    assert await count_lines(db_session, purged) == 0
    assert await count_lines(db_session, kept) == 3


def test_the_task_page_shows_the_lines_without_script(browser: httpx.Client) -> None:
    sign_up(browser)
    task_id = start_task(browser, steps="3", step_ms="0")
    wait_until(lambda: task_status(browser, task_id) == "succeeded")
    page = browser.get(f"/tasks/{task_id}")
    assert page.status_code == 200
    assert 'role="log"' in page.text
    assert f'data-log-task="{task_id}" data-last-seq="3"' in page.text
    for step in (1, 2, 3):
        assert f'<span class="log-message">Step {step} of 3 done</span>' in page.text
    assert "No output yet." in page.text  # present but hidden: a script shows it only while there are no lines
    assert '<p class="empty log-empty" hidden>' in page.text


@pytest.fixture
def browser(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as client:
        yield client


def test_the_cli_prints_a_task_s_lines_and_watch_shows_them(api: httpx.Client) -> None:
    task_id = start(api, steps=2, step_ms=0, fail_at_step=2)
    wait(api, task_id)

    shown = operator_cli("tasks", "logs", task_id)
    assert shown.returncode == 0, shown.stderr
    printed = shown.stdout.splitlines()
    assert len(printed) == 9
    assert printed[0].startswith("#1 ")
    assert printed[0].endswith(" attempt 1 INFO    Step 1 of 2 done")
    assert printed[1].endswith(" attempt 1 ERROR   Step 2 of 2 failed (fail_at_step=2)")
    later = operator_cli("tasks", "logs", task_id, "--after", "7")
    assert [line.split()[0] for line in later.stdout.splitlines()] == ["#8", "#9"]
    nothing = operator_cli("tasks", "logs", task_id, "--after", "9")
    assert (nothing.returncode, nothing.stdout, nothing.stderr.strip()) == (0, "", "No output lines after #9.")
    unknown = operator_cli("tasks", "logs", str(uuid.uuid4()))
    assert unknown.returncode == 2

    watched = operator_cli("tasks", "watch", task_id)
    assert watched.returncode == 1
    out = watched.stdout.splitlines()
    assert out[0].split()[:3] == ["failed", "attempt", "3"]
    assert out[1:-1] == printed
    assert out[-1] == f"Task {task_id} failed: StepFailed: Step 2 failed (fail_at_step=2)."
