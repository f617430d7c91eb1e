"""Services mode: an event committed by a worker reaches open streams on every web process."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.accounts import signed_in_headers
from tests.processes import ROOT, redis_server, stack
from tests.servers import free_port, spawn_web
from tests.sse import Event, events

pytestmark = pytest.mark.services


async def task_end(url: str, headers: dict[str, str], task_id: asyncio.Future[str]) -> Event:
    """Open a stream on `url` at once; return the event (written by the worker) of the named task's success."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client,
        client.stream("GET", "/api/v1/events?last_event_id=0") as response,
    ):
        assert response.status_code == 200
        async for event in events(response):
            if (
                event.event == "task.updated"
                and event.data["status"] == "succeeded"
                and event.data["id"] == await task_id
            ):
                return event
    raise AssertionError("stream ended")


async def test_a_workers_event_reaches_a_stream_on_each_web_process(migrated: None) -> None:
    # Heartbeats far apart: only the Redis wake-up can bring the event in time.
    quiet = {"SSE_HEARTBEAT_SECONDS": "600"}
    with redis_server() as broker, stack(broker.url, settings=quiet) as services:
        port = free_port()
        other = spawn_web("web-2", port, ROOT, services.env)
        try:
            second = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=services.url, timeout=30) as client:
                headers = signed_in_headers(client)
            async with httpx.AsyncClient(timeout=30, headers=headers) as api:
                for _ in range(200):
                    try:
                        if (await api.get(second + "/health/live")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
                task_id: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                listeners = [asyncio.create_task(task_end(url, headers, task_id)) for url in (services.url, second)]
                await asyncio.sleep(1)  # both streams are open and subscribed
                created = await api.post(
                    services.url + "/api/v1/tasks", json={"kind": "demo", "params": {"steps": 1, "step_ms": 0}}
                )
                assert created.status_code == 202, created.text
                task_id.set_result(created.json()["id"])
                done = await asyncio.wait_for(asyncio.gather(*listeners), 30)
            assert [event.data["id"] for event in done] == [created.json()["id"]] * 2
        finally:
            other.stop()
