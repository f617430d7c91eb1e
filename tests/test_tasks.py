"""Every row of the Tasks table of the API contract, over real HTTP, with real workers."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.config import get_settings
from app.domain.tasks.models import Task
from app.web.app import create_app
from tests.accounts import signed_in_headers
from tests.servers import LiveServer, diagnosis
from tests.smtp import SmtpServer

FINISHED = {"succeeded", "failed", "cancelled"}


#: The live server of the running test, for what `wait` shows when a task does not get there.
_server: list[LiveServer] = []


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    _server[:] = [live_server]
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def start(
    api: httpx.Client, kind: str = "demo", headers: dict[str, str] | None = None, **params: Any
) -> dict[str, Any]:
    response = api.post("/api/v1/tasks", json={"kind": kind, "params": params}, headers=headers or {})
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait(api: httpx.Client, task_id: str, until: set[str] = FINISHED, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = dict(api.get(f"/api/v1/tasks/{task_id}").json())
        if task["status"] in until:
            return task
        if time.monotonic() >= deadline:
            pytest.fail(f"still {task['status']} after {timeout} s: {task}\n{diagnosis(_server[0])}")
        time.sleep(0.05)


def test_task_kinds_describe_their_parameters(api: httpx.Client) -> None:
    kinds = {k["kind"]: k for k in api.get("/api/v1/task-kinds").json()}
    assert set(kinds) == {"demo", "export"}
    demo = kinds["demo"]["params_schema"]
    assert demo["$ref"].endswith("DemoParams")
    properties = demo["$defs"]["DemoParams"]["properties"]
    assert properties["steps"]["default"] == 100
    assert properties["steps"]["maximum"] == 10000
    export = kinds["export"]["params_schema"]["$defs"]["ExportParams"]["properties"]
    assert sorted(export["dataset"]["enum"]) == ["notifications", "tasks"]


def test_a_demo_task_runs_to_the_end(api: httpx.Client) -> None:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "title": "Count", "params": {"steps": 5, "step_ms": 10}})
    assert response.status_code == 202
    created = response.json()
    assert response.headers["location"] == f"/api/v1/tasks/{created['id']}"
    assert uuid.UUID(created["id"]).version == 7
    assert created["status"] in ("queued", "running")
    assert created["params"] == {"steps": 5, "step_ms": 10, "fail_at_step": None}
    done = wait(api, created["id"])
    assert done["status"] == "succeeded"
    assert done["progress"] == {"current": 5, "total": 5, "percent": 100.0, "message": "Processing step 5 of 5"}
    assert done["result"] == {"steps": 5}
    assert (done["attempts"], done["error"], done["title"]) == (1, None, "Count")
    assert done["started_at"]
    assert done["finished_at"]
    assert done["finished_at"] >= done["started_at"]
    assert api.get(f"/api/v1/tasks/{created['id']}/result").json() == {"steps": 5}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "nope", "params": {}}, "kind"),
        ({"kind": "demo", "params": {"steps": 0}}, "params.steps"),
        ({"kind": "demo", "params": {"steps": 10001}}, "params.steps"),
        ({"kind": "demo", "params": {"step_ms": "slow"}}, "params.step_ms"),
        ({"kind": "demo", "params": {"colour": "red"}}, "params"),
        ({"kind": "export", "params": {"dataset": "users"}}, "params.dataset"),
        ({"kind": "demo", "params": {}, "title": ""}, "title"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = api.post("/api/v1/tasks", json=body)
    assert response.status_code in (400, 422), response.text
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert any(error["field"].startswith(field) for error in problem["errors"]), problem
    assert api.get("/api/v1/tasks").json()["total"] == 0


def test_listing_is_newest_first_filtered_and_paginated(api: httpx.Client) -> None:
    ids = [start(api, steps=1, step_ms=0)["id"] for _ in range(3)]
    exported = start(api, "export", dataset="tasks", format="json")["id"]
    for task_id in [*ids, exported]:
        wait(api, task_id)
    page = api.get("/api/v1/tasks", params={"limit": 2}).json()
    assert (page["total"], page["limit"], page["offset"]) == (4, 2, 0)
    assert [t["id"] for t in page["items"]] == [exported, ids[2]]
    second = api.get("/api/v1/tasks", params={"limit": 2, "offset": 2}).json()
    assert [t["id"] for t in second["items"]] == [ids[1], ids[0]]
    assert api.get("/api/v1/tasks", params={"kind": "export"}).json()["total"] == 1
    assert api.get("/api/v1/tasks", params={"status": "succeeded"}).json()["total"] == 4
    assert api.get("/api/v1/tasks", params={"status": "running"}).json()["total"] == 0
    both = api.get("/api/v1/tasks", params={"status": "succeeded", "kind": "demo", "limit": 1, "offset": 1}).json()
    assert (both["total"], [t["id"] for t in both["items"]]) == (3, [ids[1]])
    # A page past the end is empty, and still says how many there are (the count and the page are one query).
    past = api.get("/api/v1/tasks", params={"limit": 2, "offset": 10}).json()
    assert past == {"items": [], "total": 4, "limit": 2, "offset": 10, "next_cursor": None}
    assert api.get("/api/v1/tasks", params={"limit": 0}).status_code == 400
    assert api.get("/api/v1/tasks", params={"limit": 101}).status_code == 400


def test_an_unknown_status_filter_is_a_documented_400(api: httpx.Client) -> None:
    """Found by tests/test_api_schema_fuzz.py: it was a 422 the API document did not list."""
    refused = api.get("/api/v1/tasks", params={"status": "sleeping"})
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["field"] == "status"
    operation = api.get("/schema/openapi.json").json()["paths"]["/api/v1/tasks"]["get"]
    assert "400" in operation["responses"]
    (status,) = [p for p in operation["parameters"] if p["name"] == "status"]
    (values,) = [s["items"] for s in status["schema"]["oneOf"] if s.get("type") == "array"]  # repeatable
    assert set(values["enum"]) == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_another_users_task_is_not_found(api: httpx.Client, live_server: LiveServer) -> None:
    task = wait(api, start(api, steps=1, step_ms=0)["id"])
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        other.headers.update(signed_in_headers(other))
        for method, path in [
            ("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("DELETE", ""), ("GET", "/result"),
        ]:  # fmt: skip
            response = other.request(method, f"/api/v1/tasks/{task['id']}{path}")
            assert response.status_code == 404, (method, path, response.text)
        assert other.get("/api/v1/tasks").json()["total"] == 0
    assert api.get(f"/api/v1/tasks/{uuid.uuid4()}").status_code == 404


def test_cancel_a_queued_task_at_once_and_a_running_one_at_its_next_step(api: httpx.Client) -> None:
    threads = get_settings().worker_threads
    long = [start(api, steps=100, step_ms=500)["id"] for _ in range(threads + 2)]
    # The newest are the last to be claimed: one of them is still queued.
    queued = next(t for t in reversed(long) if api.get(f"/api/v1/tasks/{t}").json()["status"] == "queued")
    response = api.post(f"/api/v1/tasks/{queued}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    running = wait(api, next(t for t in long if t != queued), {"running"})
    assert api.post(f"/api/v1/tasks/{running['id']}/cancel").status_code == 202
    stopped = wait(api, running["id"], timeout=10)
    assert stopped["status"] == "cancelled"
    assert stopped["progress"]["current"] < 100
    for task_id in long:
        api.post(f"/api/v1/tasks/{task_id}/cancel")
    for task_id in long:
        assert wait(api, task_id)["status"] == "cancelled"
    finished = api.post(f"/api/v1/tasks/{queued}/cancel")
    assert finished.status_code == 409
    assert finished.headers["content-type"].startswith("application/problem+json")


def test_a_failing_step_is_retried_then_fails_and_can_be_retried(api: httpx.Client) -> None:
    task = wait(api, start(api, steps=3, step_ms=0, fail_at_step=2)["id"], timeout=60)
    assert task["status"] == "failed"
    assert task["attempts"] == 3
    assert "Step 2 failed" in task["error"]
    again = api.post(f"/api/v1/tasks/{task['id']}/retry")
    assert again.status_code == 202
    assert (again.json()["status"], again.json()["attempts"], again.json()["error"]) == ("queued", 4, None)
    assert wait(api, task["id"], timeout=60)["status"] == "failed"
    succeeded = wait(api, start(api, steps=1, step_ms=0)["id"])
    assert api.post(f"/api/v1/tasks/{succeeded['id']}/retry").status_code == 409


def test_delete_a_finished_task_and_its_artifact(api: httpx.Client) -> None:
    running = start(api, steps=1000, step_ms=50)["id"]
    assert api.delete(f"/api/v1/tasks/{running}").status_code == 409
    api.post(f"/api/v1/tasks/{running}/cancel")
    wait(api, running)
    assert api.delete(f"/api/v1/tasks/{running}").status_code == 204
    assert api.get(f"/api/v1/tasks/{running}").status_code == 404

    export = wait(api, start(api, "export", dataset="tasks", format="csv")["id"])
    artifacts = get_settings().artifact_path
    files = [p for p in artifacts.rglob("*") if p.is_file() and export["id"] in str(p)]
    assert len(files) == 1
    assert api.delete(f"/api/v1/tasks/{export['id']}").status_code == 204
    assert not files[0].exists()
    assert api.get(f"/api/v1/tasks/{export['id']}/result").status_code == 404


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_streams_the_users_rows_into_a_download(api: httpx.Client, fmt: str) -> None:
    for _ in range(3):
        wait(api, start(api, steps=1, step_ms=0)["id"])
    task = wait(api, start(api, "export", dataset="tasks", format=fmt)["id"])
    assert task["status"] == "succeeded", task
    result = task["result"]
    download = api.get(f"/api/v1/tasks/{task['id']}/result")
    assert download.status_code == 200
    assert f'filename="{result["filename"]}"' in download.headers["content-disposition"]
    body = download.content
    assert (len(body), hashlib.sha256(body).hexdigest()) == (result["bytes"], result["sha256"])
    if fmt == "json":
        rows = msgspec.json.decode(body)
        assert len(rows) == result["rows"] == 4  # three demo tasks and the running export itself
        assert sorted(row["kind"] for row in rows) == ["demo", "demo", "demo", "export"]
    else:
        lines = body.decode().strip().splitlines()
        assert lines[0].startswith("id,kind,title,status")
        assert len(lines) - 1 == result["rows"]


def test_the_result_of_a_task_without_one_is_404(api: httpx.Client) -> None:
    task = start(api, steps=1000, step_ms=50)
    assert api.get(f"/api/v1/tasks/{task['id']}/result").status_code == 404
    api.post(f"/api/v1/tasks/{task['id']}/cancel")
    wait(api, task["id"])


def test_idempotency_key(api: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"kind": "demo", "params": {"steps": 1, "step_ms": 0}}
    first = api.post("/api/v1/tasks", json=body, headers=key)
    assert first.status_code == 202
    again = api.post("/api/v1/tasks", json={"params": {"step_ms": 0, "steps": 1}, "kind": "demo"}, headers=key)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    different = api.post("/api/v1/tasks", json={**body, "title": "other"}, headers=key)
    assert different.status_code == 409
    other_key = api.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert other_key.status_code == 202
    assert api.get("/api/v1/tasks").json()["total"] == 2


async def test_an_idempotency_key_names_a_new_task_once_its_window_has_passed(
    api: httpx.Client, db_session: Any
) -> None:
    """After IDEMPOTENCY_WINDOW (24 h) the key is free again: a request with it, even another body, starts a
    new task, and the old task no longer answers to the key."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"kind": "demo", "params": {"steps": 1, "step_ms": 0}}
    first = api.post("/api/v1/tasks", json=body, headers=key).json()
    wait(api, first["id"])
    task = await db_session.get(Task, uuid.UUID(first["id"]))
    task.created_at -= timedelta(hours=25)
    await db_session.commit()
    later = api.post("/api/v1/tasks", json={**body, "title": "later"}, headers=key)
    assert later.status_code == 202, later.text
    assert later.json()["id"] != first["id"]
    again = api.post("/api/v1/tasks", json={**body, "title": "later"}, headers=key)
    assert (again.status_code, again.json()["id"]) == (200, later.json()["id"])
    old = await db_session.scalar(
        text("SELECT count(*) FROM task WHERE idempotency_key = :key"), {"key": key["Idempotency-Key"]}
    )
    assert old == 1  # the new task's; the first one's key was forgotten


def test_too_many_active_tasks_is_a_429(migrated: None) -> None:
    settings = msgspec.structs.replace(get_settings(), max_active_tasks=2)
    with TestClient(create_app(settings)) as client:
        headers = signed_in_headers(client)
        body = {"kind": "demo", "params": {"steps": 1000, "step_ms": 50}}
        ids = [client.post("/api/v1/tasks", json=body, headers=headers).json()["id"] for _ in range(2)]
        refused = client.post("/api/v1/tasks", json=body, headers=headers)
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/problem+json")
        for task_id in ids:
            assert client.post(f"/api/v1/tasks/{task_id}/cancel", headers=headers).status_code == 202


def test_an_ended_task_notifies_its_owner_once_and_by_email(api: httpx.Client, smtp: SmtpServer) -> None:
    me = api.get("/api/v1/users/me").json()
    ok = wait(api, start(api, steps=1, step_ms=0)["id"])
    failed = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1)["id"], timeout=60)
    cancelled = start(api, steps=1000, step_ms=50)["id"]
    api.post(f"/api/v1/tasks/{cancelled}/cancel")
    wait(api, cancelled)
    completed = smtp.wait_for(lambda m: me["email"] in m.message["To"] and "Task completed" in m.message["Subject"])
    assert ok["title"] in completed.message["Subject"]
    assert f"/tasks/{ok['id']}" in completed.text
    smtp.wait_for(lambda m: me["email"] in m.message["To"] and "Task failed" in m.message["Subject"])
    time.sleep(0.5)
    mine = [m for m in smtp.messages if me["email"] in m.message["To"] and m.message["Subject"].startswith("Task")]
    assert len(mine) == 2, [m.message["Subject"] for m in mine]
    assert failed["status"] == "failed"
