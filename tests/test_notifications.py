"""The Notifications rows of the API contract and their live events, over real HTTP, with real workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.database import create_engine, session_factory
from app.domain.notifications.events import EventLog
from app.domain.notifications.models import Event
from app.domain.notifications.services import Broadcast, add_notification_once, deliver_broadcast, notify_once
from tests.accounts import PASSWORD, new_identity, operator_cli, signed_in_headers
from tests.servers import LiveServer
from tests.sse import collect

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


@pytest.fixture
def other(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


@pytest.fixture
def admin(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A superuser, promoted with the operators' CLI."""
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        identity = new_identity()
        assert client.post("/api/v1/auth/register", json=identity).status_code == 201
        result = operator_cli("users", "promote", identity["username"])
        assert result.returncode == 0, result.stdout + result.stderr
        tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
        client.headers["Authorization"] = f"Bearer {tokens.json()['access_token']}"
        yield client


class Collected:
    """An EventPublisher that keeps what it was given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, channel: str, data: bytes) -> None:
        self.published.append((channel, data))


@pytest.fixture
async def sessions() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(get_settings())
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def user_id(client: httpx.Client) -> uuid.UUID:
    return uuid.UUID(client.get("/api/v1/users/me").json()["id"])


async def notify(sessions: async_sessionmaker[AsyncSession], owner: uuid.UUID, count: int) -> None:
    """`count` account notifications for `owner`, one transaction each, oldest first."""
    for i in range(count):
        async with sessions() as session, session.begin():
            await notify_once(
                session,
                EventLog(session),
                user_id=owner,
                category="account",
                title=f"Note {i}",
                message=f"Message {i}",
                dedupe_key=f"test:{owner}:{i}",
            )


async def test_a_task_end_notification_is_written_once_after_its_events(
    api: httpx.Client, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """What every task's end does (app.domain.tasks.runner): the notification with the end's events, its
    `notification.created` last (one statement on Postgres). Again with the same key: the events only."""
    owner = user_id(api)
    before = [("task.updated", {"step": 1}), ("task.updated", {"step": 2})]
    logs = []
    for _ in range(2):
        async with sessions() as session, session.begin():
            events = EventLog(session)
            created = await add_notification_once(
                events, before, user_id=owner, category="task", title="Once", message="m", dedupe_key=f"t:{owner}"
            )
            logs.append((created, events.pending))
    (first, first_events), (again, again_events) = logs
    assert first is not None
    assert again is None
    assert first.email_pending  # the user wants email (the default): the same statement marked it pending
    assert [e.type for e in first_events] == ["task.updated", "task.updated", "notification.created"]
    assert first_events[-1].data["id"] == str(first.out.id)
    assert [e.type for e in again_events] == ["task.updated", "task.updated"]
    ids = [e.id for e in first_events + again_events]
    assert ids == sorted(ids)
    async with sessions() as session:
        query = select(Event.id, Event.type).where(Event.user_id == owner).order_by(Event.id)
        stored = (await session.execute(query)).all()
    assert [(row[0], row[1]) for row in stored] == [(e.id, e.type) for e in first_events + again_events]
    assert [n["title"] for n in api.get("/api/v1/notifications").json()["items"]] == ["Once"]


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


def wait_total(client: httpx.Client, total: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        page = dict(client.get("/api/v1/notifications").json())
        if page["total"] >= total:
            return page
        assert time.monotonic() < deadline, page
        time.sleep(0.05)


def test_a_task_that_ends_notifies_its_owner_once(api: httpx.Client) -> None:
    succeeded = wait(api, start(api, steps=1, step_ms=0))
    failed = wait(api, start(api, steps=1, step_ms=0, fail_at_step=1))
    assert (succeeded["status"], failed["status"]) == ("succeeded", "failed")
    cancelled = start(api, steps=1000, step_ms=50)
    assert api.post(f"/api/v1/tasks/{cancelled}/cancel").status_code == 202
    assert wait(api, cancelled)["status"] == "cancelled"

    page = api.get("/api/v1/notifications").json()
    assert page["total"] == 2
    by_task = {n["task_id"]: n for n in page["items"]}
    assert set(by_task) == {succeeded["id"], failed["id"]}
    done, broken = by_task[succeeded["id"]], by_task[failed["id"]]
    assert (done["title"], done["category"], done["is_read"], done["read_at"]) == (
        "Task completed",
        "task",
        False,
        None,
    )
    assert (broken["title"], broken["category"]) == ("Task failed", "task")
    assert "Step 1 failed" in broken["message"]
    assert set(done) == {"id", "category", "title", "message", "is_read", "task_id", "created_at", "read_at"}


async def test_list_is_newest_first_filtered_and_paginated(
    api: httpx.Client, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await notify(sessions, user_id(api), 5)
    page = api.get("/api/v1/notifications", params={"limit": 2}).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    assert [n["title"] for n in page["items"]] == ["Note 4", "Note 3"]
    rest = api.get("/api/v1/notifications", params={"limit": 2, "offset": 4}).json()
    assert [n["title"] for n in rest["items"]] == ["Note 0"]
    assert api.get("/api/v1/notifications").json()["limit"] == 20

    newest = page["items"][0]["id"]
    assert api.post(f"/api/v1/notifications/{newest}/read").status_code == 200
    unread = api.get("/api/v1/notifications", params={"unread": "true"}).json()
    assert unread["total"] == 4
    assert newest not in {n["id"] for n in unread["items"]}
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 4}
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}):
        assert api.get("/api/v1/notifications", params=bad).status_code == 400


async def test_read_read_all_and_delete(api: httpx.Client, sessions: async_sessionmaker[AsyncSession]) -> None:
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 0}
    await notify(sessions, user_id(api), 3)
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 3}
    first, second, _ = api.get("/api/v1/notifications").json()["items"]

    read = api.post(f"/api/v1/notifications/{first['id']}/read")
    assert read.status_code == 200
    assert read.json()["is_read"] is True
    assert read.json()["read_at"]
    again = api.post(f"/api/v1/notifications/{first['id']}/read")
    assert again.status_code == 200
    assert again.json()["read_at"] == read.json()["read_at"]
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 2}

    response = api.post("/api/v1/notifications/read-all")
    assert (response.status_code, response.json()) == (200, {"updated": 2})
    assert api.post("/api/v1/notifications/read-all").json() == {"updated": 0}
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 0}

    assert api.delete(f"/api/v1/notifications/{second['id']}").status_code == 204
    assert api.delete(f"/api/v1/notifications/{second['id']}").status_code == 404
    assert api.post(f"/api/v1/notifications/{second['id']}/read").status_code == 404
    assert api.get("/api/v1/notifications").json()["total"] == 2
    missing = api.post(f"/api/v1/notifications/{uuid.uuid4()}/read")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_another_users_notification_is_not_found(
    api: httpx.Client, other: httpx.Client, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await notify(sessions, user_id(api), 1)
    mine = api.get("/api/v1/notifications").json()["items"][0]["id"]
    assert other.post(f"/api/v1/notifications/{mine}/read").status_code == 404
    assert other.delete(f"/api/v1/notifications/{mine}").status_code == 404
    assert other.get("/api/v1/notifications").json()["total"] == 0
    assert other.post("/api/v1/notifications/read-all").json() == {"updated": 0}
    assert api.get("/api/v1/notifications/unread-count").json() == {"unread": 1}


def test_notifications_need_a_signed_in_user(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=20) as anonymous:
        assert anonymous.get("/api/v1/notifications").status_code == 401
        assert anonymous.get("/api/v1/notifications/unread-count").status_code == 401
        assert anonymous.post("/api/v1/admin/notifications", json={"title": "t", "message": "m"}).status_code == 401


def test_admin_broadcast_to_one_user(admin: httpx.Client, api: httpx.Client, other: httpx.Client) -> None:
    target = str(user_id(api))
    response = admin.post(
        "/api/v1/admin/notifications", json={"title": " Maintenance ", "message": "Tonight at 22:00", "user_id": target}
    )
    assert (response.status_code, response.json()) == (202, {"recipients": 1})
    item = wait_total(api, 1)["items"][0]
    assert (item["category"], item["title"], item["message"], item["task_id"]) == (
        "system",
        "Maintenance",
        "Tonight at 22:00",
        None,
    )
    time.sleep(0.3)
    assert other.get("/api/v1/notifications").json()["total"] == 0
    assert admin.get("/api/v1/notifications").json()["total"] == 0
    unknown = admin.post(
        "/api/v1/admin/notifications", json={"title": "t", "message": "m", "user_id": str(uuid.uuid4())}
    )
    assert unknown.status_code == 404


def test_admin_broadcast_to_every_active_user(admin: httpx.Client, api: httpx.Client, other: httpx.Client) -> None:
    inactive = user_id(other)
    deactivated = admin.patch(f"/api/v1/admin/users/{inactive}", json={"is_active": False})
    assert deactivated.status_code == 200, deactivated.text
    response = admin.post("/api/v1/admin/notifications", json={"title": "Hello", "message": "Everyone"})
    assert (response.status_code, response.json()) == (202, {"recipients": 2})
    assert wait_total(api, 1)["items"][0]["title"] == "Hello"
    assert wait_total(admin, 1)["items"][0]["category"] == "system"
    time.sleep(0.3)
    assert api.get("/api/v1/notifications").json()["total"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "   ", "message": "m"}, "title"),
        ({"title": "x" * 201, "message": "m"}, "title"),
        ({"title": "t", "message": ""}, "message"),
        ({"title": "t", "message": "x" * 2001}, "message"),
    ],
)
def test_admin_broadcast_refuses_bad_input(admin: httpx.Client, body: dict[str, str], field: str) -> None:
    response = admin.post("/api/v1/admin/notifications", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert field in {error["field"] for error in problem["errors"]}
    time.sleep(0.2)
    assert admin.get("/api/v1/notifications").json()["total"] == 0


def test_only_superusers_broadcast(api: httpx.Client) -> None:
    response = api.post("/api/v1/admin/notifications", json={"title": "t", "message": "m"})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_duplicate_broadcast_delivery_creates_nothing_twice(
    api: httpx.Client, other: httpx.Client, sessions: async_sessionmaker[AsyncSession]
) -> None:
    item = Broadcast(id=uuid.uuid4(), title="Once", message="Only once")
    publisher = Collected()
    assert await deliver_broadcast(sessions, publisher, item, batch_size=1) == 2
    assert len(publisher.published) == 2
    assert await deliver_broadcast(sessions, publisher, item, batch_size=1) == 0
    assert await deliver_broadcast(sessions, publisher, item) == 0
    assert len(publisher.published) == 2
    for client in (api, other):
        page = client.get("/api/v1/notifications").json()
        assert [n["title"] for n in page["items"]] == ["Once"]


async def test_a_broadcast_skips_users_who_signed_up_after_it_was_sent(
    api: httpx.Client, live_server: LiveServer, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Its answer counted the users of that moment; one who signs up while it waits for a worker is not one."""
    item = Broadcast(id=uuid.uuid4(), title="Before you", message="Sent already", sent_at=utcnow())
    with httpx.Client(base_url=live_server.url, timeout=30) as newcomer:
        newcomer.headers.update(signed_in_headers(newcomer))
        assert await deliver_broadcast(sessions, Collected(), item) == 1
        assert newcomer.get("/api/v1/notifications").json()["total"] == 0
    assert [n["title"] for n in api.get("/api/v1/notifications").json()["items"]] == ["Before you"]


async def test_a_broadcast_reaches_each_open_stream_as_its_notification(
    admin: httpx.Client, api: httpx.Client, other: httpx.Client, live_server: LiveServer
) -> None:
    # Several users in one batch: their events go in one insert, published as one wake-up for everyone.
    readers = (api, other)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        streams = [
            asyncio.create_task(
                collect(client, "/api/v1/events", 1, headers=dict(r.headers), event="notification.created")
            )
            for r in readers
        ]
        await asyncio.sleep(1)  # both streams are open and subscribed
        response = await asyncio.to_thread(
            admin.post, "/api/v1/admin/notifications", json={"title": "To all", "message": "At once"}
        )
        assert response.status_code == 202, response.text
        received = await asyncio.wait_for(asyncio.gather(*streams), 20)
    for reader, [event] in zip(readers, received, strict=True):
        [item] = reader.get("/api/v1/notifications").json()["items"]
        assert event.data == item
        assert (item["title"], item["category"], item["is_read"]) == ("To all", "system", False)


async def test_live_stream_tells_of_new_and_updated_notifications(api: httpx.Client, live_server: LiveServer) -> None:
    headers = dict(api.headers)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
        created = asyncio.create_task(
            collect(client, "/api/v1/events", 1, headers=headers, event="notification.created")
        )
        task = await asyncio.to_thread(lambda: wait(api, start(api, steps=1, step_ms=0)))
        [event] = await asyncio.wait_for(created, 20)
        assert event.data["task_id"] == task["id"]
        assert (event.data["title"], event.data["category"]) == ("Task completed", "task")

        last_id = event.id
        updated = asyncio.create_task(
            collect(
                client,
                f"/api/v1/events?last_event_id={last_id}",
                1,
                headers=headers,
                event="notification.updated",
            )
        )
        await asyncio.sleep(0.3)
        response = await asyncio.to_thread(api.post, "/api/v1/notifications/read-all")
        assert response.json() == {"updated": 1}
        [change] = await asyncio.wait_for(updated, 20)
        assert change.id > last_id
        assert change.data == {"ids": [event.data["id"]], "unread": 0}
