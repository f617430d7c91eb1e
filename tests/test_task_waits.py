"""`Prefer: wait=N` (issue 21.3): the answer waits for the task to end, holding no worker thread and no
database connection while it waits; against the live service, in both modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.servers import LiveServer
from tests.test_revocation import register, sign_in_api

LONG = {"steps": 100, "step_ms": 500}  # 50 s, in long steps (few progress writes)


@asynccontextmanager
async def signed_client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(90.0)) as client:
        signed = await sign_in_api(client, await register(client))
        client.headers.update(signed.headers)
        yield client


async def start(client: httpx.AsyncClient, prefer: str | None = None, **params: Any) -> httpx.Response:
    headers = {"Prefer": prefer} if prefer else {}
    return await client.post("/api/v1/tasks", json={"kind": "demo", "params": params}, headers=headers)


async def test_a_submission_that_prefers_to_wait_answers_with_the_ended_task(live_server: LiveServer) -> None:
    async with signed_client(live_server) as client:
        answer = await start(client, "wait=30", steps=3, step_ms=50)
        assert answer.status_code == 202, answer.text
        assert answer.headers["preference-applied"] == "wait=30"
        assert answer.headers["location"] == f"/api/v1/tasks/{answer.json()['id']}"
        task = answer.json()
        assert (task["status"], task["result"]) == ("succeeded", {"steps": 3})
        # Without the preference, the answer is the queued task, at once.
        plain = await start(client, None, steps=3, step_ms=50)
        assert plain.json()["status"] in ("queued", "running")
        assert "preference-applied" not in plain.headers


async def test_get_waits_for_the_end_or_for_n_seconds(live_server: LiveServer) -> None:
    async with signed_client(live_server) as client:
        short = (await start(client, None, steps=4, step_ms=100)).json()
        ended = await client.get(f"/api/v1/tasks/{short['id']}", headers={"Prefer": "respond-async, wait=20"})
        assert ended.status_code == 200
        assert ended.headers["preference-applied"] == "wait=20"
        assert ended.json()["status"] == "succeeded"

        long = (await start(client, None, **LONG)).json()
        try:
            waited = await client.get(f"/api/v1/tasks/{long['id']}", headers={"Prefer": "wait=1"})
            assert waited.status_code == 200
            assert waited.headers["preference-applied"] == "wait=1"
            assert waited.json()["status"] in ("queued", "running")  # the time was up first
        finally:
            await client.post(f"/api/v1/tasks/{long['id']}/cancel")


async def test_a_wait_is_at_most_60_seconds_and_unreadable_preferences_are_ignored(live_server: LiveServer) -> None:
    async with signed_client(live_server) as client:
        answer = await start(client, "wait=100000", steps=2, step_ms=50)
        assert answer.headers["preference-applied"] == "wait=60"
        assert answer.json()["status"] == "succeeded"
        task_id = answer.json()["id"]
        for prefer in ("wait=abc", "wait=-5", "handling=lenient", "wait", "wait=" + "9" * 50, "wait=0"):
            got = await client.get(f"/api/v1/tasks/{task_id}", headers={"Prefer": prefer})
            assert got.status_code == 200, (prefer, got.text)
            assert "preference-applied" not in got.headers, prefer
        too_long = await client.get(f"/api/v1/tasks/{task_id}", headers={"Prefer": "wait=1," + "x" * 300})
        assert too_long.status_code == 400
        assert too_long.headers["content-type"].startswith("application/problem+json")


async def test_waits_hold_no_database_connection_and_a_user_holds_at_most_ten(live_server: LiveServer) -> None:
    """Twelve waits on a long task: ten are honoured, two answer at once without waiting; meanwhile
    other requests are answered (the read pool has 4 connections in tests: a wait holding one would
    leave none), and the task keeps running on its worker thread."""
    async with signed_client(live_server) as client:
        long = (await start(client, None, **LONG)).json()
        try:
            waits = [
                asyncio.ensure_future(client.get(f"/api/v1/tasks/{long['id']}", headers={"Prefer": "wait=20"}))
                for _ in range(12)
            ]
            at_once = []
            for done in asyncio.as_completed(waits):
                answer = await done
                assert answer.status_code == 200
                at_once.append(answer)
                if len(at_once) == 2:
                    break
            assert all("preference-applied" not in answer.headers for answer in at_once)
            for _ in range(5):
                listed = await client.get("/api/v1/tasks")
                assert listed.status_code == 200
            progressed = (await client.get(f"/api/v1/tasks/{long['id']}")).json()
            assert progressed["status"] == "running"
            assert sum(not w.done() for w in waits) == 10  # still waiting, all of them
            await client.post(f"/api/v1/tasks/{long['id']}/cancel")
            ended = await asyncio.gather(*waits)
            honoured = [answer for answer in ended if "preference-applied" in answer.headers]
            assert len(honoured) == 10
            assert {answer.json()["status"] for answer in honoured} == {"cancelled"}
        finally:
            await client.post(f"/api/v1/tasks/{long['id']}/cancel")
