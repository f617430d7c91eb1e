"""Faults under load: a worker killed mid-task, Redis restarted, Postgres restarted, one after another.

Each scenario runs its own Postgres cluster and redis-server (tests/chaos.py), a web
process and a worker on them, and a steady load: users submitting demo tasks and
listening to their live events, reconnecting with Last-Event-ID when a stream drops.
The test plays the scheduler (a `tasks.sweep` message every second). After the faults
it waits until no task is queued or running, and then checks that

- every accepted task (202) ended exactly once, and a submission that got no answer
  (5xx, broken connection) either left no task or one that ended: none is stuck;
- every ended task has exactly one notification (one `notification.created` event),
  except the ones cancelled (submitters cancel every fifth task: queued, running or
  already ended), which have none;
- every live-event client saw exactly the event log of its user: no gap, no duplicate,
  in order, across all its reconnections;
- /health/ready answers 200 again (database, broker and a worker heartbeat);
- a submission the service could not take got a 503 (Retry-After), not a 500;
- the web process still stops cleanly.

Live events come only through wake-ups here (SSE_HEARTBEAT_SECONDS is longer than the
test), so a channel that stopped listening after the Redis restart shows as a client
that never catches up. `make test` runs the short scenario (each fault once, small
load); `make chaos` runs the long one (`chaos` marker).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest

from tests.chaos import (
    Facts,
    Load,
    PostgresServer,
    migrate,
    postgres_server,
    query,
    read_facts,
    require_postgres_bin,
    seconds_until_running_again,
    send_sweeps,
    sign_up,
    worker_ids_of,
)
from tests.processes import FINISHED, RedisServer, Stack, eventually, live_members, redis_server, stack
from tests.servers import LiveServer, wait_ready
from tests.sse import Event, events

pytestmark = pytest.mark.services

DOWN_SECONDS = 2.0
SETTINGS = {
    "TASK_STALE_SECONDS": "3",
    "TASK_RESEND_SECONDS": "2",
    "MAX_ACTIVE_TASKS": "100000",
    "SSE_HEARTBEAT_SECONDS": "600",
    "SSE_MAX_STREAMS_PER_USER": "100",
}

Fault = Callable[[Stack, RedisServer, PostgresServer], None]


def kill_worker(services: Stack, broker: RedisServer, database: PostgresServer) -> None:
    """SIGKILL the worker (and every process it forked) while it runs tasks, then start a new one."""
    eventually(lambda: running_tasks(database.url), timeout=30, what="a running task")
    services.kill_worker()
    services.start_worker()


def restart_redis(services: Stack, broker: RedisServer, database: PostgresServer) -> None:
    """Stop redis-server (no persistence: every queued message is gone), start it again on the same port."""
    broker.stop()
    time.sleep(DOWN_SECONDS)
    broker.start()


def restart_postgres(services: Stack, broker: RedisServer, database: PostgresServer) -> None:
    """Crash Postgres (immediate shutdown: every connection breaks), start it again after a while."""
    database.crash()
    time.sleep(DOWN_SECONDS)
    database.start()


def everything_at_once(services: Stack, broker: RedisServer, database: PostgresServer) -> None:
    """Kill the worker mid-task, then lose Redis and Postgres together for longer than TASK_STALE_SECONDS."""
    eventually(lambda: running_tasks(database.url), timeout=30, what="a running task")
    services.kill_worker()
    broker.stop()
    database.crash()
    time.sleep(2 * DOWN_SECONDS)
    database.start()
    broker.start()
    services.start_worker()


def running_tasks(database_url: str) -> int:
    async def count() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM task WHERE status = 'running'"))
        finally:
            await connection.close()

    return asyncio.run(count())


def unfinished_tasks(database_url: str) -> list[str]:
    """The tasks still queued or running, one line each (what a failure report shows)."""

    async def rows() -> list[str]:
        connection = await asyncpg.connect(database_url)
        try:
            found = await connection.fetch(
                "SELECT id, status, attempts, enqueued_at, started_at, heartbeat_at, error, now() AS now FROM task"
                " WHERE status IN ('queued', 'running') ORDER BY created_at"
            )
            return [" ".join(f"{key}={value}" for key, value in row.items()) for row in found]
        finally:
            await connection.close()

    return asyncio.run(rows())


async def run_scenario(faults: list[Fault], *, users: int, listeners: int, submit_every: float, settle: float) -> None:
    bindir = require_postgres_bin()
    with postgres_server(bindir) as database, redis_server() as broker:
        await asyncio.to_thread(migrate, database.url)
        settings = {**SETTINGS, "DATABASE_URL": database.url}
        with stack(broker.url, settings=settings, graceful=True) as services:
            load = Load(services.url, users=users, listeners_per_user=listeners, submit_every=submit_every)
            await load.start()
            sweeping = asyncio.Event()
            sweeper = asyncio.create_task(send_sweeps(broker.url, sweeping))
            try:
                await asyncio.sleep(settle)
                for fault in faults:
                    await asyncio.to_thread(fault, services, broker, database)
                    await asyncio.sleep(settle)
                await load.stop_submitting()
                await asyncio.to_thread(
                    eventually,
                    lambda: not unfinished_tasks(database.url),
                    timeout=120,
                    what="every task to end",
                    interval=0.5,
                )
                facts = await read_facts(database.url)
                await asyncio.to_thread(wait_ready, LiveServer(url=services.url, processes=[services.web]))
                await asyncio.to_thread(
                    eventually,
                    lambda: caught_up(load, facts),
                    timeout=60,
                    what="every live-event client to receive its user's last event",
                    interval=0.2,
                )
            except BaseException:
                print("\n".join(["unfinished tasks:", *unfinished_tasks(database.url)]))
                print(services.logs(tail=60000))
                raise
            finally:
                sweeping.set()
                await sweeper
                await load.stop_listening()
        web_exit = services.web.popen.returncode
    print(summary(load, facts))  # shown with -s, and with the report of a failure
    check(load, facts)
    assert web_exit != -signal.SIGKILL, "the web process did not stop on SIGTERM"


def summary(load: Load, facts: Facts) -> str:
    outcomes = Counter(task["status"] for task in facts.tasks.values())
    attempts = Counter(task["attempts"] for task in facts.tasks.values())
    unanswered = Counter(reason for user in load.people for reason in user.unknown)
    connections = [(listener.connections, listener.broken) for user in load.people for listener in user.listeners]
    refused = Counter(code for user in load.people for listener in user.listeners for code in listener.refused)
    cancels = Counter(answer for user in load.people for answer in user.cancels)
    events = sum(len(rows) for rows in facts.events.values())
    return (
        f"tasks {dict(outcomes)}, attempts {dict(attempts)}, unanswered submissions {dict(unanswered)}, "
        f"cancel answers {dict(cancels)}; "
        f"{events} events; (stream connections, broken) per client {connections}, refused {dict(refused)}"
    )


def expected_events(facts: Facts, user_id: str) -> list[tuple[int, str]]:
    mine = [(event_id, kind) for event_id, kind, _ in facts.events.get(user_id, [])]
    return sorted(mine + facts.broadcast)


def caught_up(load: Load, facts: Facts) -> bool:
    for user in load.people:
        last = expected_events(facts, user.id)[-1][0]
        if any(listener.last_id < last for listener in user.listeners):
            return False
    return True


def check(load: Load, facts: Facts) -> None:
    problems: list[str] = []
    accepted = {task_id for user in load.people for task_id in user.accepted}
    assert accepted, "no task was accepted"
    for user in load.people:
        assert user.refused == [], f"submissions refused with {user.refused}"
        assert set(user.unknown) <= {"503", "connection"}, f"unanswered submissions: {user.unknown}"
        assert set(user.cancels) <= {"202", "409", "503", "connection"}, f"cancel answers: {user.cancels}"
        theirs = {task_id for task_id, task in facts.tasks.items() if str(task["user_id"]) == user.id}
        missing = set(user.accepted) - theirs
        assert not missing, f"accepted tasks that do not exist: {missing}"
        extra = theirs - set(user.accepted)
        assert len(extra) <= len(user.unknown), f"{len(extra)} tasks beyond the {len(user.unknown)} unanswered ones"

    for task_id, task in facts.tasks.items():
        if task["status"] not in FINISHED:
            problems.append(f"task {task_id} is stuck {task['status']}")
            continue
        user_events = facts.events[str(task["user_id"])]
        states = [
            payload["status"] for _, kind, payload in user_events if kind == "task.updated" and payload["id"] == task_id
        ]
        ends = [state for state in states if state in FINISHED]
        if ends != [task["status"]] or states[-1] != task["status"]:
            problems.append(f"task {task_id} ({task['status']}) ended {ends} in its events {states}")
        notes = facts.notifications.get(task_id, [])
        created = [
            payload
            for _, kind, payload in user_events
            if kind == "notification.created" and payload["task_id"] == task_id
        ]
        wanted = 0 if task["status"] == "cancelled" else 1
        if len(notes) != wanted or len(created) != wanted:
            problems.append(f"task {task_id} ({task['status']}): {len(notes)} notifications, {len(created)} events")
        elif wanted:
            title = "Task completed" if task["status"] == "succeeded" else "Task failed"
            key = f"task:{task_id}:{task['attempts']}:{task['status']}"
            if (notes[0]["title"], notes[0]["dedupe_key"]) != (title, key):
                problems.append(f"task {task_id}: notification {notes[0]}")

    for user in load.people:
        expected = expected_events(facts, user.id)
        for number, listener in enumerate(user.listeners):
            if listener.received != expected:
                got = Counter(listener.received)
                duplicates = [item for item, times in got.items() if times > 1]
                gaps = [item for item in expected if item not in got]
                problems.append(
                    f"user {user.id} listener {number} ({listener.connections} connections): "
                    f"{len(listener.received)} events of {len(expected)}; duplicates {duplicates[:5]}, "
                    f"missing {gaps[:5]}, in order: {listener.received == sorted(listener.received)}"
                )
    outcomes = Counter(task["status"] for task in facts.tasks.values())
    assert not problems, f"{outcomes}\n" + "\n".join(problems[:40])


async def test_tasks_notifications_and_live_events_survive_each_fault_once() -> None:
    """The short scenario, in `make test`: each fault once, under a small load.

    When some task never ends, the failure report lists the unfinished tasks' rows and the
    processes' whole output.
    """
    await run_scenario([kill_worker, restart_redis, restart_postgres], users=2, listeners=1, submit_every=0.4, settle=3)


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_tasks_notifications_and_live_events_survive_repeated_faults_under_load() -> None:
    rounds = [kill_worker, restart_redis, restart_postgres] * 3
    await run_scenario(rounds, users=4, listeners=2, submit_every=0.25, settle=4)


@pytest.mark.chaos
@pytest.mark.timeout(900)
async def test_tasks_notifications_and_live_events_survive_faults_together() -> None:
    faults = [everything_at_once, restart_postgres, everything_at_once]
    await run_scenario(faults, users=3, listeners=2, submit_every=0.25, settle=4)


async def test_while_postgres_is_down_streams_end_cleanly_and_requests_get_503() -> None:
    """Found by the scenarios above, while Postgres restarted.

    Every open stream broke off mid-response, each with a traceback in the log; now a
    stream whose database read fails ends like any finished response, and the client's
    reconnection with Last-Event-ID gets what came meanwhile. And requests got 500
    ("an unexpected error"); now, as nothing is wrong with them and nothing was written,
    they get a 503 problem with Retry-After, which a client may simply repeat.
    """
    bindir = require_postgres_bin()
    with postgres_server(bindir) as database, redis_server() as broker:
        await asyncio.to_thread(migrate, database.url)
        settings = {"DATABASE_URL": database.url, "SSE_HEARTBEAT_SECONDS": "0.5"}
        with stack(broker.url, worker=False, settings=settings) as services:
            async with httpx.AsyncClient(base_url=services.url, timeout=20) as client:
                user = await sign_up(client)
                client.headers.update(user.headers)
                first = (await client.post("/api/v1/tasks", json={"kind": "demo"})).json()["id"]
                async with client.stream("GET", "/api/v1/events") as response, asyncio.timeout(20):
                    stream = events(response)
                    seen = await until_task(stream, first)
                    database.crash()
                    # The next heartbeat reads the table, finds no database and ends the response:
                    # reading it to its end raises nothing (a broken-off chunked body would).
                    assert [event async for event in stream] == []
                for method, path in [("GET", "/api/v1/tasks"), ("POST", "/api/v1/tasks"), ("GET", "/api/v1/events")]:
                    answer = await client.request(method, path, json={"kind": "demo"})
                    assert answer.status_code == 503, answer.text
                    assert answer.headers["content-type"].startswith("application/problem+json")
                    assert (answer.headers["retry-after"], answer.json()["status"]) == ("5", 503)
                database.start()
                second = (await client.post("/api/v1/tasks", json={"kind": "demo"})).json()["id"]
                resume = {"Last-Event-ID": str(seen[-1].id)}
                async with client.stream("GET", "/api/v1/events", headers=resume) as response, asyncio.timeout(20):
                    resumed = await until_task(events(response), second)
                assert [(e.event, e.data["id"]) for e in resumed] == [("task.updated", second)]
                assert (await client.get("/api/v1/tasks")).json()["total"] == 2
                paths = (await client.get("/schema/openapi.json")).json()["paths"]
                for path, method in [("/api/v1/tasks", "get"), ("/api/v1/tasks", "post"), ("/api/v1/events", "get")]:
                    assert "503" in paths[path][method]["responses"], (path, method)
        assert "Exception caught after response started" not in services.web.output()


async def until_task(stream: AsyncIterator[Event], task_id: str) -> list[Event]:
    """The stream's next events, up to and including the first `task.updated` of `task_id`."""
    found = []
    async for event in stream:
        found.append(event)
        if event.event == "task.updated" and event.data["id"] == task_id:
            return found
    raise AssertionError(f"the stream ended before task {task_id} showed up: {found}")


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_recovery_takes_seconds_under_load() -> None:
    """Issue 18, measured under load with no scheduler: the workers recover by themselves.

    Two users submit demo tasks of 2 s and listen to their streams, on two `tasks` workers.
    1. `kill -9` of one worker while it runs tasks: how long until each of its tasks runs
       again on the other one (its heartbeat expires after WORKER_STALE_SECONDS, 5 s).
    2. Redis down for 10 s while users go on submitting (each is answered 202 and
       committed; the send fails): how long after Redis is back until the first of those
       tasks runs, and until every one of them has.
    Then every task must end exactly once, with its one notification, as in the scenarios
    above. The seconds are printed (run with -s); docs/benchmarks.md has them too
    (bench/fair_share.py measures the same, quietly).
    """
    bindir = require_postgres_bin()
    with postgres_server(bindir) as database, redis_server() as broker:
        await asyncio.to_thread(migrate, database.url)
        settings = {
            "MAX_ACTIVE_TASKS": "100000",
            "SSE_HEARTBEAT_SECONDS": "600",
            "SSE_MAX_STREAMS_PER_USER": "100",
            "DATABASE_URL": database.url,
        }
        with stack(broker.url, settings=settings, split=True) as services:
            services.start_other_worker(("tasks",))  # the survivor
            load = Load(services.url, users=2, listeners_per_user=1, submit_every=0.4, steps=40, step_ms=50)
            await load.start()
            try:
                assert services.worker is not None
                group = services.worker.popen.pid
                victims = await asyncio.to_thread(
                    eventually,
                    lambda: worker_ids_of(broker.url, set(live_members(group))),
                    timeout=60,
                    what="the first worker's heartbeat",
                )

                def held() -> list[str]:
                    rows = query(
                        database.url,
                        "SELECT id FROM task WHERE status = 'running' AND worker_id = ANY($1)",
                        list(victims),
                    )
                    return [str(row["id"]) for row in rows]

                holding = await asyncio.to_thread(eventually, held, timeout=60, what="tasks on the first worker")
                services.kill_worker()
                killed_at = time.monotonic()
                rerun = await asyncio.to_thread(seconds_until_running_again, database.url, holding, killed_at)

                before = {task_id for user in load.people for task_id in user.accepted}
                broker.stop()
                await asyncio.sleep(10)
                during = [t for user in load.people for t in user.accepted if t not in before]
                broker.start()
                back_at = time.monotonic()

                def started(count: int) -> bool:
                    rows = query(
                        database.url,
                        "SELECT count(*) AS n FROM task WHERE id = ANY($1::uuid[])"
                        " AND (started_at IS NOT NULL OR status = 'cancelled')",  # submitters cancel some
                        during,
                    )
                    return int(rows[0]["n"]) >= count

                await asyncio.to_thread(eventually, lambda: started(1), timeout=60, what="a task run", interval=0.05)
                first = time.monotonic() - back_at
                await asyncio.to_thread(eventually, lambda: started(len(during)), timeout=120, what="all of them")
                every = time.monotonic() - back_at
                await load.stop_submitting()
                await asyncio.to_thread(
                    eventually, lambda: not unfinished_tasks(database.url), timeout=120, what="every task to end"
                )
                facts = await read_facts(database.url)
                await asyncio.to_thread(
                    eventually, lambda: caught_up(load, facts), timeout=60, what="every client to catch up"
                )
            except BaseException:
                print("\n".join(["unfinished tasks:", *await asyncio.to_thread(unfinished_tasks, database.url)]))
                print(services.logs(tail=30000))
                raise
            finally:
                await load.stop_listening()
    print(
        f"\nkill -9: {len(holding)} tasks running again after {rerun:.1f} s; "
        f"Redis down 10 s: {len(during)} tasks accepted meanwhile, the first running {first:.1f} s "
        f"and all of them {every:.1f} s after it was back"
    )
    check(load, facts)
    assert during, "no task was accepted while Redis was down"
