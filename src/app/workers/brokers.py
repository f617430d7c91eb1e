"""The Dramatiq broker: Redis (or RabbitMQ with BROKER_URL=amqp://) in services mode, in memory embedded."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import weakref
from concurrent.futures import Executor
from typing import Any
from uuid import uuid4

import dramatiq
import redis
import redis.asyncio
import structlog
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage, Middleware
from periodiq import PeriodiqMiddleware
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from app.config import Settings
from app.workers.context import LogContext
from app.workers.heartbeat import Heartbeat, HeartbeatStore, MemoryHeartbeats, RedisHeartbeats
from app.workers.metrics import WorkerMetrics
from app.workers.per_process import SharedAsyncIO
from app.workers.recovery import Recovery
from app.workers.runtime import RuntimeLifecycle
from app.workers.stopping import OneStopSignal

log = structlog.get_logger(__name__)

CONSUMER_RESTART_SECONDS = 1.0


#: The least poll of an idle Redis consumer (its fetches without a wake-up, which Dramatiq's back-off
#: spreads over half to all of the poll): sends wake it at once, so such a fetch only finds what
#: announced itself to no one (a wake-up lost with a Redis restart, a message that another producer
#: sent or that Redis handed back from a dead worker). Each fetch is a Lua script in Redis: polling
#: every 100 ms, an idle worker used 4.3% of a core.
IDLE_FETCH_MIN_SECONDS = 1.0
#: The longest an idle consumer waits before Dramatiq's loop runs again (delayed messages come due, a stop).
LOOP_SECONDS = 0.1
#: Connections of one event loop's broker client (sends from the web's loop: `enqueue_from_loop`); a send
#: is one round trip, so a few serve hundreds of submissions a second. As many as the web's blocking threads
#: that sent before (app.web.http.blocking).
LOOP_CONNECTIONS = 40
LOOP_CONNECTION_WAIT_SECONDS = 10.0


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose idle consumers are woken by a send instead of waiting for their next poll.

    Dramatiq's Redis consumer sleeps between empty fetches with a back-off that grows up to
    the worker timeout, so a message sent to an idle worker waits for the next poll. Here
    each send is followed by a PUBLISH on the queue's wake-up channel, and an idle consumer
    waits on its subscription to that channel instead of sleeping: it fetches as soon as a
    message is there, and otherwise polls every worker timeout, or every second when that is
    shorter (IDLE_FETCH_MIN_SECONDS). The subscription stays open between waits, so a wake-up sent
    while the consumer is fetching is kept and ends its next wait at once.

    While it waits, the consumer hands control back to Dramatiq's loop at least every worker
    timeout, and at most 0.1 s apart (LOOP_SECONDS): that loop enqueues the delayed messages
    whose time has come and sees a stop, both without a Redis command.

    From an asyncio loop, `enqueue_from_loop` sends without a thread (see `enqueue_async`).
    """

    def __init__(self, *, url: str | None = None, client: redis.Redis | None = None, **options: Any) -> None:
        if client is None and url is not None:
            client = _redis_client(url)
        super().__init__(client=client, **options)  # type: ignore[no-untyped-call]
        self.url = url  # for the asyncio clients; a broker made from a client alone sends from threads only
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._unpack_size: int | None = None

    @property
    def consumer_class(self) -> type[Consumer]:
        return _WakingConsumer

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.wake"

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        enqueued: dramatiq.Message[Any] = super().enqueue(message, delay=delay)
        try:
            self.client.publish(self.wake_channel(enqueued.queue_name), b"")
        except redis.RedisError as exc:  # the message is in Redis: the worker's next poll finds it
            log.warning("broker.wake_failed", queue=enqueued.queue_name, error=str(exc))
        return enqueued

    async def enqueue_async(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        """`enqueue` for a caller on an asyncio loop: the same message in Redis, one round trip, no thread.

        Dramatiq's brokers block, so a send from the web's loop went to a thread: with its two
        Redis round trips and the hand-over of the GIL between the loop and the sending thread,
        it was half of a task submission's CPU (docs/benchmarks.md). This does what
        `RedisBroker.enqueue` does (a Redis message id of its own, the delay queue and the eta,
        the middleware's enqueue hooks, Dramatiq's dispatch script with its arguments) on an
        asyncio client of this loop, and sends the wake-up in the same pipeline.
        tests/test_workers.py checks that a worker runs what it sends, now and delayed.
        """
        message = message.copy(options={"redis_message_id": str(uuid4())})
        queue_name = message.queue_name
        if delay is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        if self._unpack_size is None:  # Dramatiq asks Redis once per process (a blocking call): not on the loop
            self._unpack_size = await asyncio.get_running_loop().run_in_executor(None, self._max_unpack_size)
        self.emit_before("enqueue", message, delay)
        # The arguments of Dramatiq's `RedisBroker._dispatch` for its "enqueue" command.
        arguments = [
            "enqueue",
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance("enqueue"),
            self._unpack_size,
            message.options["redis_message_id"],
            message.encode(),
        ]
        script = self.scripts["dispatch"]
        client = self.loop_client()
        for attempt in (1, 2):
            async with client.pipeline(transaction=False) as pipeline:
                pipeline.evalsha(script.sha, 1, self.namespace, *arguments)
                pipeline.publish(self.wake_channel(queue_name), b"")
                sent, woke = await pipeline.execute(raise_on_error=False)
            if not isinstance(sent, NoScriptError) or attempt == 2:
                break
            await client.script_load(script.script)  # a Redis that restarted has forgotten it
        if isinstance(sent, Exception):
            raise sent
        if isinstance(woke, Exception):  # the message is in Redis: the worker's next poll finds it
            log.warning("broker.wake_failed", queue=queue_name, error=str(woke))
        self.emit_after("enqueue", message, delay)
        return message

    def loop_client(self) -> redis.asyncio.Redis:
        """This loop's asyncio Redis client (a client belongs to the loop it was made on)."""
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is None:
            if self.url is None:
                raise RuntimeError("WakingRedisBroker(url=...) is needed to send from an asyncio loop")
            client = self._loop_clients[loop] = _async_redis_client(self.url)
        return client

    async def close_loop_client(self) -> None:
        """Close this loop's client, if it made one: call before the loop ends."""
        client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


async def enqueue_from_loop(
    broker: dramatiq.Broker,
    message: dramatiq.Message[Any],
    *,
    delay: int | None = None,
    executor: Executor | None = None,
) -> dramatiq.Message[Any]:
    """Send `message` on `broker` from an asyncio loop without blocking it.

    On Redis without a thread (`WakingRedisBroker.enqueue_async`); in memory (embedded) at once,
    which blocks nothing; on RabbitMQ, whose client blocks, in a thread of `executor` with the
    caller's context variables (its log context). A caller that is cancelled stops waiting, but
    the send runs to its end: a message sent after its task's commit is still sent.
    """
    if isinstance(broker, WakingRedisBroker) and broker.url is not None:
        return await asyncio.shield(broker.enqueue_async(message, delay=delay))
    if isinstance(broker, StubBroker):
        enqueued: dramatiq.Message[Any] = broker.enqueue(message, delay=delay)
        return enqueued
    call = functools.partial(contextvars.copy_context().run, broker.enqueue, message, delay=delay)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


class _WakingConsumer(_RedisConsumer):
    """A Redis consumer that waits for a wake-up where Dramatiq's sleeps, and fetches only when woken or due."""

    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        # A maximum back-off of 0 makes the parent return at once after an empty fetch; the wait is here.
        super().__init__(broker, queue_name, prefetch, 0)  # type: ignore[no-untyped-call]
        self.loop_seconds = min(timeout / 1000, LOOP_SECONDS)
        self.idle_fetch_ms = max(timeout, int(IDLE_FETCH_MIN_SECONDS * 1000))
        self.idle_misses = 0
        self.fetch_at = 0.0  # time.monotonic() of the next fetch without a wake-up
        self.pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(broker.wake_channel(queue_name))
        except redis.ConnectionError as exc:
            self.pubsub.close()
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def __next__(self) -> MessageProxy | None:
        now = time.monotonic()
        if self.message_cache or now >= self.fetch_at:
            full = self.outstanding_message_count >= self.prefetch  # no fetch: the parent returns None at once
            message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
            if message is not None:
                self.idle_misses = 0
                return message
            if full:
                self.fetch_at = now + self.loop_seconds  # a thread that ends frees a place: look on the next round
            else:
                self.idle_misses, backoff_ms = compute_backoff(self.idle_misses, max_backoff=self.idle_fetch_ms)
                self.fetch_at = now + backoff_ms / 1000
        try:
            if self.pubsub.get_message(timeout=min(self.loop_seconds, max(0.0, self.fetch_at - now))) is not None:
                while self.pubsub.get_message(timeout=0) is not None:  # one fetch answers every wake-up so far
                    pass
                self.idle_misses = 0
                self.fetch_at = 0.0
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        return None

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            super().close()


class PollCheck(Middleware):
    """Warns when a `dramatiq` worker process will poll at another interval than WORKER_POLL_MS says.

    The CLI builds its Worker with Dramatiq's default worker timeout, which Dramatiq reads from
    `dramatiq_worker_timeout` when it is imported (the CLI has no flag): the Procfile,
    compose.yaml and `make worker` set it from WORKER_POLL_MS, but a WORKER_POLL_MS that only
    `.env` holds never reaches it. Only the CLI sends `process_boot`; embedded workers are
    given WORKER_POLL_MS directly.
    """

    def __init__(self, poll_ms: int) -> None:
        self.poll_ms = poll_ms

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if self.poll_ms != dramatiq.worker.WORKER_TIMEOUT:
            log.warning(
                "worker.poll_differs",
                worker_poll_ms=self.poll_ms,
                dramatiq_worker_timeout=dramatiq.worker.WORKER_TIMEOUT,
                fix="start `dramatiq` with dramatiq_worker_timeout=$WORKER_POLL_MS in its environment",
            )


def heartbeat_store(settings: Settings) -> HeartbeatStore:
    if settings.embedded_workers:
        return MemoryHeartbeats()
    return RedisHeartbeats.of(settings.redis_url, settings.redis_namespace)


def build_broker(settings: Settings, heartbeats: HeartbeatStore) -> dramatiq.Broker:
    """The broker and its middleware.

    The idle poll of a `dramatiq` CLI worker is Dramatiq's own setting, the environment
    variable `dramatiq_worker_timeout` (read when Dramatiq is imported, before this runs): the
    Procfile, compose.yaml and `make worker` set it from WORKER_POLL_MS. Embedded workers
    are given WORKER_POLL_MS directly (app.workers.embedded).
    """
    metrics = _worker_metrics(settings)
    # RuntimeLifecycle must come after AsyncIO: its shutdown hook runs while the loop still runs.
    extra: list[Middleware] = [
        SharedAsyncIO(),
        CurrentMessage(),
        LogContext(),
        RuntimeLifecycle(),
        PeriodiqMiddleware(skip_delay=60),
        Heartbeat(
            heartbeats,
            interval=settings.worker_heartbeat_seconds,
            ttl=settings.worker_stale_seconds,
            watch=Recovery(),
            on_beat=metrics.record_beat if metrics is not None else None,
        ),
        OneStopSignal(),
        PollCheck(settings.worker_poll_ms),
        *([metrics] if metrics is not None else []),
    ]
    broker: dramatiq.Broker
    url = settings.job_broker_url
    if settings.embedded_workers:
        broker = StubBroker()
    elif url.startswith(("amqp://", "amqps://")):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        broker = WakingRedisBroker(url=url, namespace=settings.redis_namespace)
    for middleware in extra:
        broker.add_middleware(middleware)
    # A consumer that lost the broker tries again after this long (Dramatiq: 3 s): with Redis back,
    # messages flow again within a second.
    dramatiq.worker.CONSUMER_RESTART_DELAY_SECS = CONSUMER_RESTART_SECONDS
    return broker


def _redis_client(url: str) -> redis.Redis:
    """A broker client that gives up fast: a request must not hang on a Redis outage (the task is
    committed already, and the sweeper sends it once Redis is back)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )


def _async_redis_client(url: str) -> redis.asyncio.Redis:
    """`_redis_client` for an asyncio loop, with at most LOOP_CONNECTIONS connections: a send waits up to
    LOOP_CONNECTION_WAIT_SECONDS for one (then fails as a broker out of reach does), so a burst of
    submissions, or a Redis that answers slowly, is not met with a new connection per request."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=LOOP_CONNECTIONS,
        timeout=LOOP_CONNECTION_WAIT_SECONDS,
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=30,
        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )
    return redis.asyncio.Redis.from_pool(pool)


def _worker_metrics(settings: Settings) -> WorkerMetrics | None:
    """Dramatiq's Prometheus middleware for `dramatiq` process groups with WORKER_METRICS_PORT set.

    Embedded, the workers share the web process and its /metrics; Dramatiq's middleware needs
    a worker process of its own (it sets up on `process_boot`, which only the CLI sends).
    """
    if settings.embedded_workers or not settings.worker_metrics_port:
        return None
    return WorkerMetrics(settings)
