"""What a task's life writes to its owner's event log, now that submission and end are single statements.

The submission writes its task and `task.updated` in one statement (Postgres), the end writes
the task, the notification and both events (`task.updated`, then `notification.created`) in
one transaction; a reader must see them all, in that order, with the state the API shows.
"""

from __future__ import annotations

import asyncio

import httpx

from tests.accounts import signed_in_headers
from tests.servers import LiveServer
from tests.sse import Event, events

TIMEOUT = httpx.Timeout(20.0)


async def _events_until_notified(client: httpx.AsyncClient, task_id: str) -> list[Event]:
    """The user's events from the start until the task's notification (20 s at most)."""
    found: list[Event] = []
    async with asyncio.timeout(20), client.stream("GET", "/api/v1/events?last_event_id=0") as response:
        assert response.status_code == 200
        async for item in events(response):
            found.append(item)
            if item.event == "notification.created" and item.data["task_id"] == task_id:
                return found
    raise AssertionError("stream ended")


async def test_a_task_s_events_arrive_in_order_ending_with_its_notification(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as sync_client:
        headers = signed_in_headers(sync_client)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=headers) as client:
        body = {"kind": "demo", "title": "Three steps", "params": {"steps": 3, "step_ms": 0}}
        started = await client.post("/api/v1/tasks", json=body)
        assert started.status_code == 202, started.text
        task_id = started.json()["id"]
        found = await _events_until_notified(client, task_id)
        shown = (await client.get(f"/api/v1/tasks/{task_id}")).json()
        notifications = (await client.get("/api/v1/notifications")).json()["items"]

    ids = [item.id for item in found]
    assert ids == sorted(set(ids))
    mine = [item for item in found if item.data.get("id") == task_id or item.data.get("task_id") == task_id]
    updates = [item for item in mine if item.event == "task.updated"]
    statuses = [item.data["status"] for item in updates]  # progress writes, if any, are "running" too
    assert (statuses[0], statuses[-1], set(statuses[1:-1])) == ("queued", "succeeded", {"running"})
    assert updates[0].data == started.json()  # the submission's event is the task the API answered
    assert updates[-1].data == shown  # the end's event is the task as it is now
    assert shown["status"] == "succeeded"
    assert shown["progress"] == {"current": 3, "total": 3, "percent": 100.0, "message": "Processing step 3 of 3"}
    # The end's two events: the task first, then the notification, nothing of this user's between them.
    assert found[-2] is updates[-1]
    assert found[-1].data == notifications[0]
    assert notifications[0]["title"] == "Task completed"
    assert notifications[0]["message"] == "“Three steps” completed."
