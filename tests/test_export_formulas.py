"""CSV exports never hand a spreadsheet a formula: cells that would start one are prefixed with `'` (OWASP)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from app.domain.tasks.kinds.export import csv_safe
from tests.accounts import signed_in_headers
from tests.servers import LiveServer

TITLES = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1:A2)", "plain", "a=b"]


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@x", "'@x"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("x=1", "x=1"),
        ("", ""),
        (-1, -1),
        (None, None),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ],
)
def test_csv_safe(value: Any, safe: Any) -> None:
    assert csv_safe(value) == safe


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def finished(api: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (task := api.get(f"/api/v1/tasks/{task_id}").json())["status"] not in {"succeeded", "failed", "cancelled"}:
        assert time.monotonic() < deadline, task
        time.sleep(0.05)
    return dict(task)


def export(api: httpx.Client, fmt: str) -> bytes:
    started = api.post("/api/v1/tasks", json={"kind": "export", "params": {"dataset": "tasks", "format": fmt}})
    assert started.status_code == 202, started.text
    task = finished(api, started.json()["id"])
    assert task["status"] == "succeeded", task
    return api.get(f"/api/v1/tasks/{task['id']}/result").content


def test_an_exported_title_that_looks_like_a_formula_is_text(api: httpx.Client) -> None:
    for title in TITLES:
        created = api.post("/api/v1/tasks", json={"kind": "demo", "title": title, "params": {"steps": 1, "step_ms": 0}})
        assert created.status_code == 202, created.text
        finished(api, created.json()["id"])
    rows = list(csv.DictReader(io.StringIO(export(api, "csv").decode())))
    titles = {row["title"] for row in rows if row["kind"] == "demo"}
    assert titles == {f"'{t}" if t[0] in "=+-@" else t for t in TITLES}
    assert all(not row[column].startswith(("=", "+", "-", "@")) for row in rows for column in row)
    as_json = {row["title"] for row in msgspec.json.decode(export(api, "json")) if row["kind"] == "demo"}
    assert as_json == set(TITLES)  # JSON keeps what was stored
