"""Who holds the task threads: the admin API, the admin page and `litestar tasks stats` (issue 18)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.config import get_settings
from tests.accounts import PASSWORD, new_identity, operator_cli
from tests.processes import eventually
from tests.servers import LiveServer
from tests.test_pages import sign_up as page_sign_up

LONG = {"kind": "demo", "params": {"steps": 100, "step_ms": 500}}  # 50 s, in long steps (few progress writes)


def sign_up(client: httpx.Client, *, superuser: bool = False) -> tuple[dict[str, str], str]:
    identity = new_identity()
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
    if superuser:
        promoted = operator_cli("users", "promote", identity["username"])
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}, identity["username"]


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as http:
        yield http


def test_admins_see_running_and_queued_tasks_per_user_and_each_queue(client: httpx.Client) -> None:
    busy, busy_name = sign_up(client)
    admin, _ = sign_up(client, superuser=True)
    share = get_settings().max_running_per_user
    ids = [client.post("/api/v1/tasks", json=LONG, headers=busy).json()["id"] for _ in range(share + 2)]
    try:

        def busy_row() -> dict[str, Any] | None:
            answer = client.get("/api/v1/admin/tasks/load", headers=admin)
            assert answer.status_code == 200, answer.text
            load = answer.json()
            rows = [row for row in load["users"] if row["username"] == busy_name]
            return (load, rows[0]) if rows and rows[0]["running"] == share else None  # type: ignore[return-value]

        load, row = eventually(busy_row, timeout=60, what=f"{share} running tasks of the user")
        assert (row["running"], row["queued"]) == (share, 2), row
        assert {"tasks", "mail", "maintenance"} <= set(load["queues"]), load
        assert all(isinstance(depth, int) and depth >= 0 for depth in load["queues"].values())
        assert load["by_status"]["running"] >= share
        assert load["max_running_per_user"] == share

        assert client.get("/api/v1/admin/tasks/load", headers=busy).status_code == 403
        assert client.get("/api/v1/admin/tasks/load").status_code == 401

        stats = operator_cli("tasks", "stats")
        assert stats.returncode == 0, stats.stdout + stats.stderr
        line = next(line for line in stats.stdout.splitlines() if line.startswith(busy_name))
        assert line.split() == [busy_name, str(share), "2"], stats.stdout
        assert "QUEUE" in stats.stdout
    finally:
        for task_id in ids:
            client.post(f"/api/v1/tasks/{task_id}/cancel", headers=busy)


def test_the_admin_page_shows_the_load(live_server: LiveServer, client: httpx.Client) -> None:
    busy, busy_name = sign_up(client)
    task = client.post("/api/v1/tasks", json=LONG, headers=busy).json()["id"]
    try:
        with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as browser:
            admin = page_sign_up(browser)
            assert operator_cli("users", "promote", admin["username"]).returncode == 0

            def shown() -> str | None:
                html = browser.get("/admin/status").text
                return html if f"<td>{busy_name}</td><td>1</td><td>0</td>" in html else None

            html = eventually(shown, timeout=60, what="the user's running task on the admin page")
        for queue in ("tasks", "mail", "maintenance"):
            assert f"Queue “{queue}”" in html, html
    finally:
        client.post(f"/api/v1/tasks/{task}/cancel", headers=busy)
