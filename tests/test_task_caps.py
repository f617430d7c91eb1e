"""MAX_ACTIVE_TASKS holds at every door, also under concurrency (issue 18).

Before: a retry queued a task again whatever the user had running (40 active against a
cap of 20). Submissions, retries and idempotent replays now check the cap under the
user's lock (Postgres) or the database's write lock (SQLite).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx

from app.config import get_settings
from tests.accounts import signed_in_headers
from tests.servers import LiveServer

LONG = {"kind": "demo", "params": {"steps": 100, "step_ms": 500}}  # 50 s, in long steps (few progress writes)


async def cancel_all(client: httpx.AsyncClient) -> None:
    page = (await client.get("/api/v1/tasks", params={"limit": 100})).json()
    for task in page["items"]:
        if task["status"] in ("queued", "running"):
            await client.post(f"/api/v1/tasks/{task['id']}/cancel")


async def active(client: httpx.AsyncClient) -> int:
    """The user's queued and running tasks, from one read: counted in two (queued, then running), a task
    claimed in between was counted twice (seen in a full run: 21 active against a cap of 20)."""
    page = (await client.get("/api/v1/tasks", params={"limit": 100})).json()
    assert page["total"] <= 100, page["total"]
    return sum(task["status"] in ("queued", "running") for task in page["items"])


async def test_fifty_concurrent_submissions_never_overshoot_the_cap(live_server: LiveServer) -> None:
    cap = get_settings().max_active_tasks
    with httpx.Client(base_url=live_server.url, timeout=20) as sync:
        headers = signed_in_headers(sync)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60, headers=headers) as client:
        try:
            answers = await asyncio.gather(*(client.post("/api/v1/tasks", json=LONG) for _ in range(50)))
            codes = Counter(answer.status_code for answer in answers)
            assert codes == {202: cap, 429: 50 - cap}, codes
            assert await active(client) == cap
            refused = next(answer for answer in answers if answer.status_code == 429)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert {"type", "title", "status", "detail"} <= refused.json().keys()
        finally:
            await cancel_all(client)


async def test_retries_and_replays_respect_the_cap(live_server: LiveServer) -> None:
    cap = get_settings().max_active_tasks
    with httpx.Client(base_url=live_server.url, timeout=20) as sync:
        headers = signed_in_headers(sync)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60, headers=headers) as client:
        try:
            key = {"Idempotency-Key": uuid.uuid4().hex}
            first = await client.post("/api/v1/tasks", json=LONG, headers=key)
            assert first.status_code == 202, first.text
            cancelled = first.json()["id"]
            assert (await client.post(f"/api/v1/tasks/{cancelled}/cancel")).status_code == 202
            # A worker may have claimed it first: then it stops at its next step, and counts until then.
            async with asyncio.timeout(20):
                while (await client.get(f"/api/v1/tasks/{cancelled}")).json()["status"] != "cancelled":
                    await asyncio.sleep(0.05)
            for _ in range(cap):
                assert (await client.post("/api/v1/tasks", json=LONG)).status_code == 202

            retried = await client.post(f"/api/v1/tasks/{cancelled}/retry")
            assert retried.status_code == 429, retried.text
            assert retried.headers["content-type"].startswith("application/problem+json")
            assert (await client.get(f"/api/v1/tasks/{cancelled}")).json()["status"] == "cancelled"  # nothing written

            replay = await client.post("/api/v1/tasks", json=LONG, headers=key)  # the same request: the same task
            assert (replay.status_code, replay.json()["id"]) == (200, cancelled)
            other = await client.post("/api/v1/tasks", json=LONG, headers={"Idempotency-Key": uuid.uuid4().hex})
            assert other.status_code == 429, other.text

            # Concurrent retries of one task and new submissions together: still at most the cap.
            newest = (await client.get("/api/v1/tasks", params={"limit": 1})).json()["items"][0]  # an active one
            assert (await client.post(f"/api/v1/tasks/{newest['id']}/cancel")).status_code == 202  # one place frees
            async with asyncio.timeout(20):  # once it has stopped (a running task stops at its next step)
                while (await client.get(f"/api/v1/tasks/{newest['id']}")).json()["status"] != "cancelled":
                    await asyncio.sleep(0.05)
            answers = await asyncio.gather(
                *(client.post(f"/api/v1/tasks/{cancelled}/retry") for _ in range(5)),
                *(client.post("/api/v1/tasks", json=LONG) for _ in range(5)),
            )
            assert sum(answer.status_code == 202 for answer in answers) == 1, [a.status_code for a in answers]
            assert {answer.status_code for answer in answers} <= {202, 409, 429}
            assert await active(client) == cap
        finally:
            await cancel_all(client)


def test_a_retry_from_the_page_at_the_cap_is_refused_with_a_message(live_server: LiveServer) -> None:
    """The dashboard's retry button is another door: at the cap it says why and writes nothing."""
    from tests.test_pages import follow, post, sign_up, start_task, task_status, wait_until

    cap = get_settings().max_active_tasks
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as browser:
        sign_up(browser)
        first = start_task(browser, steps="100", step_ms="500")
        assert post(browser, f"/tasks/{first}/cancel", {"view": "detail"}).status_code == 303
        wait_until(lambda: task_status(browser, first) == "cancelled")  # a running one stops at its next step
        others = [start_task(browser, steps="100", step_ms="500") for _ in range(cap)]
        try:
            refused = follow(browser, post(browser, f"/tasks/{first}/retry", {"view": "detail"}))
            assert refused.status_code == 200
            assert "unfinished tasks; the limit is" in refused.text, refused.text
            assert task_status(browser, first) == "cancelled"
        finally:
            for task_id in others:
                post(browser, f"/tasks/{task_id}/cancel", {"view": "detail"})
