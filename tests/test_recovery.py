"""Recovery in seconds, with no scheduler at all (issue 18).

Found by issue 18: after `kill -9` of a worker mid-task the task ran again only after
about 58 s, and tasks submitted during a 10 s Redis outage ran about 69 s after Redis came
back: both waited for the scheduler's sweep (every 30 s) and its thresholds (60 s). Now the
live workers notice a dead worker's expired heartbeat, and a broker that came back, by
themselves. These tests send no sweep and leave TASK_STALE_SECONDS and TASK_RESEND_SECONDS
at their defaults (60 s): recovery well within them can only be the workers' own. The
seconds measured are printed (`-s`); tests/test_chaos.py measures them under load.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.processes import (
    FINISHED,
    eventually,
    live_workers,
    redis_server,
    stack,
    task_of,
    user_client,
    wait_task,
)

pytestmark = pytest.mark.services

#: Well below TASK_STALE_SECONDS and TASK_RESEND_SECONDS (60 s), the sweep's thresholds.
DEADLINE = 30


def submit(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": params})
    assert response.status_code == 202, response.text
    return dict(response.json())


def live_worker_ids(redis_url: str) -> set[str]:
    return {info.id for info in live_workers(redis_url)}


def test_a_killed_workers_task_runs_again_on_a_live_worker_within_seconds(migrated: None) -> None:
    with redis_server() as broker, stack(broker.url) as services, user_client(services.url) as api:
        task = submit(api, steps=400, step_ms=50)
        wait_task(api, task["id"], lambda t: t["progress"]["current"] > 0, timeout=60, what="running")
        eventually(lambda: live_worker_ids(broker.url), timeout=30, what="the first worker's heartbeat")
        services.start_other_worker(("tasks",))
        eventually(lambda: len(live_worker_ids(broker.url)) == 2, timeout=120, what="a second worker's heartbeat")

        services.kill_worker()  # the first worker: the only one that ran anything so far
        killed_at = time.monotonic()
        again = wait_task(
            api,
            task["id"],
            lambda t: t["attempts"] == 2 and t["status"] == "running",
            timeout=DEADLINE,
            what="running again on the live worker",
        )
        seconds = time.monotonic() - killed_at
        print(f"\nkill -9 to running again: {seconds:.1f} s")
        assert "stopped responding" in again["error"]
        api.post(f"/api/v1/tasks/{task['id']}/cancel")


def test_tasks_accepted_while_redis_was_down_start_as_soon_as_it_is_back(migrated: None) -> None:
    with redis_server() as broker, stack(broker.url) as services, user_client(services.url) as api:
        eventually(lambda: live_worker_ids(broker.url), timeout=120, what="the worker's heartbeat")
        broker.stop()
        accepted = [submit(api, steps=2, step_ms=10) for _ in range(3)]  # committed; the sends failed
        time.sleep(3)  # an outage the workers notice (they beat every second)
        assert {task_of(api, t["id"])["status"] for t in accepted} == {"queued"}
        broker.start()
        back_at = time.monotonic()
        for task in accepted:
            done = wait_task(api, task["id"], lambda t: t["status"] in FINISHED, timeout=DEADLINE, what="finished")
            assert (done["status"], done["attempts"]) == ("succeeded", 1), done
        seconds = time.monotonic() - back_at
        print(f"\nRedis back to every accepted task finished: {seconds:.1f} s")
        assert "task.send_failed" in services.web.output()  # they really were accepted while Redis was away
