"""The Dramatiq broker: Redis (or RabbitMQ with BROKER_URL=amqp://) in services mode, in memory embedded."""

from __future__ import annotations

from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage, Middleware
from periodiq import PeriodiqMiddleware
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.config import Settings
from app.workers.context import LogContext
from app.workers.heartbeat import Heartbeat, HeartbeatStore, MemoryHeartbeats, RedisHeartbeats
from app.workers.per_process import SharedAsyncIO
from app.workers.recovery import Recovery
from app.workers.runtime import RuntimeLifecycle
from app.workers.stopping import OneStopSignal

log = structlog.get_logger(__name__)

CONSUMER_RESTART_SECONDS = 1.0


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose idle consumers are woken by a send instead of waiting for their next poll.

    Dramatiq's Redis consumer sleeps between empty fetches with a back-off that grows up to
    the worker timeout, so a message sent to an idle worker waits for the next poll. Here
    each send is followed by a PUBLISH on the queue's wake-up channel, and an idle consumer
    waits on its subscription to that channel instead of sleeping: it fetches as soon as a
    message is there, and still polls at least every worker timeout (delayed messages, a
    lost wake-up). The subscription stays open between waits, so a wake-up sent while the
    consumer is fetching is kept and ends its next wait at once.
    """

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


class _WakingConsumer(_RedisConsumer):
    """A Redis consumer that waits for a wake-up (or at most its timeout) where Dramatiq's sleeps."""

    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        # A maximum back-off of 0 makes the parent return at once after an empty fetch; the wait is here.
        super().__init__(broker, queue_name, prefetch, 0)  # type: ignore[no-untyped-call]
        self.idle_timeout = timeout
        self.idle_misses = 0
        self.pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(broker.wake_channel(queue_name))
        except redis.ConnectionError as exc:
            self.pubsub.close()
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def __next__(self) -> MessageProxy | None:
        message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        if message is not None:
            self.idle_misses = 0
            return message
        self.idle_misses, backoff_ms = compute_backoff(self.idle_misses, max_backoff=self.idle_timeout)
        try:
            if self.pubsub.get_message(timeout=backoff_ms / 1000) is not None:
                while self.pubsub.get_message(timeout=0) is not None:  # one fetch answers every wake-up so far
                    pass
                self.idle_misses = 0
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        return None

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            super().close()


def heartbeat_store(settings: Settings) -> HeartbeatStore:
    if settings.embedded_workers:
        return MemoryHeartbeats()
    return RedisHeartbeats(settings.redis_url, prefix=f"{settings.redis_namespace}:workers:")


def build_broker(settings: Settings, heartbeats: HeartbeatStore) -> dramatiq.Broker:
    # RuntimeLifecycle must come after AsyncIO: its shutdown hook runs while the loop still runs.
    extra: list[Middleware] = [
        SharedAsyncIO(),
        CurrentMessage(),
        LogContext(),
        RuntimeLifecycle(),
        PeriodiqMiddleware(skip_delay=60),
        Heartbeat(
            heartbeats, interval=settings.worker_heartbeat_seconds, ttl=settings.worker_stale_seconds, watch=Recovery()
        ),
        OneStopSignal(),
    ]
    broker: dramatiq.Broker
    url = settings.job_broker_url
    if settings.embedded_workers:
        broker = StubBroker()
    elif url.startswith(("amqp://", "amqps://")):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        broker = WakingRedisBroker(client=_redis_client(url), namespace=settings.redis_namespace)  # type: ignore[no-untyped-call]
    for middleware in extra:
        broker.add_middleware(middleware)
    _default_worker_timeout(settings.worker_poll_ms)
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


def _default_worker_timeout(milliseconds: int) -> None:
    """Make WORKER_POLL_MS the poll timeout of every Worker, including the `dramatiq` CLI's.

    An idle Redis consumer backs off up to the worker timeout between polls (1,000 ms by
    default), which is how long an idle worker may take to notice a message. The CLI
    has no flag for it and reads `dramatiq_worker_timeout` only at import, before this
    module runs, so the keyword default itself is set here.
    """
    defaults = dramatiq.Worker.__init__.__kwdefaults__
    if defaults is not None:
        defaults["worker_timeout"] = milliseconds
