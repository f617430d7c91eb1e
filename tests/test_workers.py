"""The job side: broker set-up, poll timeout, log context, schedules, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pendulum
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from periodiq import PeriodiqMiddleware, cron
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.notifications.events import EventLog
from app.domain.notifications.models import Event
from app.workers import broker
from app.workers.brokers import LOOP_CONNECTIONS, WakingRedisBroker, enqueue_from_loop
from app.workers.schedules import periodic_actors, run_schedules


def test_the_broker_matches_the_run_mode(mode: str) -> None:
    expected = "StubBroker" if mode == "embedded" else "WakingRedisBroker"
    assert type(broker).__name__ == expected
    names = {type(m).__name__ for m in broker.middleware}
    assert {"SharedAsyncIO", "CurrentMessage", "LogContext", "Heartbeat", "PeriodiqMiddleware", "Retries"} <= names


def test_the_worker_defaults_are_dramatiqs_own() -> None:
    """A CLI worker's idle poll is Dramatiq's own setting, `dramatiq_worker_timeout`, which the Procfile sets
    from WORKER_POLL_MS (tests/test_worker_metrics.py runs it): importing the app patches no default."""
    defaults = dramatiq.Worker.__init__.__kwdefaults__
    assert defaults is not None
    assert defaults["worker_timeout"] == dramatiq.worker.WORKER_TIMEOUT


@contextlib.contextmanager
def idle_worker(namespace: str, worker_timeout: int) -> Iterator[tuple[WakingRedisBroker, redis.Redis]]:
    """A started one-thread Dramatiq worker on a `WakingRedisBroker` of a private redis-server, with a client of
    that server. Actors declared on the broker afterwards get their consumers at once (Dramatiq's worker
    middleware adds one per declared queue)."""
    from tests.processes import redis_server

    with redis_server() as server:
        client = redis.Redis.from_url(server.url)
        woken = WakingRedisBroker(url=server.url, namespace=namespace)
        worker = dramatiq.Worker(woken, worker_timeout=worker_timeout, worker_threads=1)
        worker.start()
        try:
            yield woken, client
        finally:
            worker.stop()
            woken.close()


def send(actor: dramatiq.Actor[..., Any], how: str, delay: int | None = None) -> None:
    """Send a message of `actor` as a thread does (Dramatiq's blocking `enqueue`) or as the web's loop does."""
    if how == "thread":
        actor.send_with_options(delay=delay)
        return
    broker = actor.broker

    async def from_loop() -> None:
        try:
            await enqueue_from_loop(broker, actor.message(), delay=delay)
        finally:
            assert isinstance(broker, WakingRedisBroker)
            await broker.close_loop_client()

    asyncio.run(from_loop())


@pytest.mark.services
@pytest.mark.parametrize("how", ["thread", "loop"])
def test_a_send_wakes_an_idle_redis_worker_long_before_its_next_poll(how: str) -> None:
    """With a 3 s poll, an idle worker still starts a message within a fraction of a second, whether the message
    was sent by Dramatiq's own `enqueue` or from an asyncio loop (the Lua script and the wake-up in one pipeline)."""
    with idle_worker("wake-test", worker_timeout=3_000) as (woken, client):
        started: list[float] = []

        def record() -> None:
            started.append(time.monotonic())

        actor = dramatiq.actor(record, actor_name="wake_test_record", queue_name="wake-test", broker=woken)
        time.sleep(3.5)  # idle past one whole poll: the consumer now waits at its longest
        for count in range(1, 4):
            if count == 3:
                client.script_flush()  # as after a Redis restart: the loop's send loads the script again
            sent = time.monotonic()
            send(actor, how)
            deadline = sent + 5
            while len(started) < count and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(started) == count, "the message never started"
            assert started[-1] - sent < 1.0, f"started {started[-1] - sent:.3f} s after the send"
            time.sleep(1)


@pytest.mark.services
@pytest.mark.parametrize("how", ["thread", "loop"])
def test_a_delayed_message_starts_on_time_whatever_the_poll(how: str) -> None:
    """Dramatiq's loop, which enqueues a delayed message whose time has come, runs at least every 0.1 s
    while the consumer waits: with a 3 s poll the message was up to 3 s late."""
    with idle_worker("delay-test", worker_timeout=3_000) as (woken, _):
        started: list[float] = []
        actor = dramatiq.actor(
            lambda: started.append(time.monotonic()), actor_name="delay_test", queue_name="delay-test", broker=woken
        )
        time.sleep(2)  # idle: the consumers' back-off has grown (to 3 s, had they slept as Dramatiq's do)
        lateness = []
        for _ in range(2):
            due = time.monotonic() + 2.5
            send(actor, how, delay=2_500)
            while len(started) < len(lateness) + 1 and time.monotonic() < due + 10:
                time.sleep(0.005)
            lateness.append(started[-1] - due)
        assert max(lateness) < 0.5, f"started {lateness} s after their time"


@pytest.mark.services
def test_a_burst_of_sends_from_a_loop_shares_a_few_connections_and_loses_none() -> None:
    """500 sends at once from one event loop (a burst of submissions) reach Redis over at most LOOP_CONNECTIONS
    connections, waiting for one when all are busy, and every message is in the queue."""
    from tests.processes import redis_server

    with redis_server() as server:
        client = redis.Redis.from_url(server.url)
        broker = WakingRedisBroker(url=server.url, namespace="burst")
        actor = dramatiq.actor(lambda: None, actor_name="burst_test", queue_name="burst-test", broker=broker)

        async def burst() -> int:
            before = len(client.client_list())  # this test's client and the broker's own
            try:
                await asyncio.gather(*(enqueue_from_loop(broker, actor.message()) for _ in range(500)))
                return len(client.client_list()) - before  # the loop's connections, still open in its pool
            finally:
                await broker.close_loop_client()

        try:
            actor.send()  # the broker's blocking client connects, as in a web process
            connections = asyncio.run(burst())
            # Can fail: with an unbounded pool the burst opened 500 connections (checked).
            assert 1 <= connections <= LOOP_CONNECTIONS
            assert client.llen("burst:burst-test") == 501
        finally:
            broker.close()


@pytest.mark.services
def test_an_idle_redis_worker_polls_at_most_twice_a_second_even_with_a_short_poll() -> None:
    """Sends wake idle consumers, so fetching more often finds nothing more: each fetch is a Lua script
    in Redis (an idle worker at a 100 ms poll used 4.3% of a core). Counted in Redis's own statistics."""
    with idle_worker("idle-test", worker_timeout=100) as (woken, client):
        dramatiq.actor(lambda: None, actor_name="idle_test", queue_name="idle-test", broker=woken)  # the queue, its DQ
        time.sleep(1.5)  # past the back-off after start
        client.config_resetstat()
        time.sleep(3)
        scripts = sum(int(stats["calls"]) for name, stats in client.info("commandstats").items() if "eval" in name)
    assert scripts <= 2 * 6 + 2, f"{scripts} fetches in 3 s by two idle consumers (a 100 ms poll made about 70)"


@pytest.mark.services
def test_who_is_alive_is_read_without_walking_the_keyspace() -> None:
    """Every worker reads who is alive after each beat: from the set of ids and their keys, not a SCAN of
    every key Redis holds (sessions, rate limits, the broker's messages), which grew with the users."""
    from app.workers.heartbeat import RedisHeartbeats, WorkerInfo
    from tests.processes import redis_server

    def info(worker_id: str) -> WorkerInfo:
        return WorkerInfo(id=worker_id, hostname="h", pid=1, threads=1, started_at=0.0, seen_at=0.0)

    with redis_server() as server:
        client = redis.Redis.from_url(server.url)
        client.mset({f"session:{n}": b"x" for n in range(20_000)})
        heartbeats = RedisHeartbeats(server.url, prefix="ns:workers:")
        try:
            heartbeats.beat(info("short"), ttl=0.3)
            heartbeats.beat(info("long"), ttl=60)
            heartbeats.beat(info("leaving"), ttl=60)
            heartbeats.forget("leaving")
            client.config_resetstat()
            assert sorted(w.id for w in heartbeats.alive()) == ["long", "short"]
            time.sleep(0.5)
            assert [w.id for w in heartbeats.alive()] == ["long"]
            assert client.smembers("ns:workers:ids") == {b"long"}  # the expired id is taken out as it is found
            heartbeats.beat(info("short"), ttl=60)  # a worker that beats again is back
            assert sorted(w.id for w in heartbeats.alive()) == ["long", "short"]
            assert "cmdstat_scan" not in client.info("commandstats")
        finally:
            heartbeats.close()
            client.close()


@pytest.mark.services
def test_a_worker_stops_on_sigterm_to_its_process_group() -> None:
    """Found by the tests' own teardown: each services-mode worker took 15 s to stop, then SIGKILL.

    SIGTERM to the whole group (as the tests, `kill -- -PGID` and systemd send it) reached
    the worker process twice, directly and forwarded by Dramatiq's main process, and
    Dramatiq took the second as "kill now", which left its threads running.
    """
    from tests.processes import ROOT, eventually
    from tests.servers import start_worker

    worker = start_worker(ROOT, {"LOG_LEVEL": "INFO"})  # INFO: Dramatiq's own boot and stop lines
    try:
        eventually(lambda: "ready for action" in worker.output(), timeout=120, what="the worker to boot")
    finally:
        code = worker.stop(signal.SIGTERM, timeout=15)  # after 15 s: SIGKILL, -9
    assert code == 0, worker.output()[-3000:]
    assert "Killing worker process" not in worker.output()
    assert "Worker has been shut down." in worker.output()


def test_housekeeping_is_scheduled() -> None:
    scheduled = {actor.actor_name: str(actor.options["periodic"]) for actor in periodic_actors(broker)}
    assert scheduled == {
        "maintenance.purge_events": "@hourly",
        "accounts.purge_tokens": "@hourly",
        "tasks.sweep": "* * * * *",
        "notifications.send_due_emails": "* * * * *",
        "webhooks.send_due": "* * * * *",
        "tasks.purge": "@hourly",
        "schedules.fire": "* * * * *",
        "schedules.purge_runs": "@hourly",
    }


async def test_the_in_process_schedule_sends_what_is_due() -> None:
    stub = StubBroker()
    stub.add_middleware(PeriodiqMiddleware())

    @dramatiq.actor(broker=stub, periodic=cron("* * * * *"), actor_name="tick")
    def tick() -> None: ...

    @dramatiq.actor(broker=stub, periodic=cron("30 4 * * *"), actor_name="nightly")
    def nightly() -> None: ...

    start, started = pendulum.datetime(2026, 1, 1, 10, 0, 59, 700_000), time.monotonic()

    def clock() -> pendulum.DateTime:  # 0.3 s before a minute starts, then real time
        return start + timedelta(seconds=time.monotonic() - started)

    stop = asyncio.Event()
    task = asyncio.create_task(run_schedules(stub, stop, clock))
    await asyncio.sleep(0.8)
    stop.set()
    await asyncio.wait_for(task, 2)
    queue = stub.queues["default"]
    sent = [dramatiq.Message.decode(queue.get_nowait()) for _ in range(queue.qsize())]
    assert [(m.actor_name, m.options["scheduled_at"]) for m in sent] == [("tick", "2026-01-01 10:01:00+00:00")]


async def test_purging_events_keeps_the_recent_ones(migrated: None, db_session: AsyncSession) -> None:
    now = datetime.now(UTC)
    async with db_session.begin():
        db_session.add_all(
            [
                Event(type="test.old", payload={}, created_at=now - timedelta(hours=100)),
                Event(type="test.new", payload={}, created_at=now - timedelta(hours=1)),
            ]
        )
    async with db_session.begin():
        deleted = await EventLog(db_session).purge(now - timedelta(hours=72))
    assert deleted >= 1
    remaining = {e.type for e in await EventLog(db_session).after(0, user_id=None, limit=10_000)}
    assert "test.new" in remaining
    assert "test.old" not in remaining


@pytest.mark.services
def test_a_runtime_belongs_to_the_event_loop_it_is_used_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found with in-process Workers: a recovery pass that ran while one Worker stopped built the runtime on the
    loop being stopped, and the next Worker's actors met its connections ("attached to a different loop")."""
    from sqlalchemy import text

    from app.workers import runtime as runtimes

    monkeypatch.setattr(runtimes, "_runtime", None)

    async def used() -> runtimes.WorkerRuntime:
        rt = runtimes.runtime()
        async with rt.session() as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
        return rt

    first = asyncio.run(used())
    second = asyncio.run(used())  # the first one's connections belong to a loop that has ended
    assert second is not first
    assert second.loop is not first.loop
