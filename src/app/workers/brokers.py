"""The Dramatiq broker: Redis (or RabbitMQ with BROKER_URL=amqp://) in services mode, in memory embedded."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware
from periodiq import PeriodiqMiddleware
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.config import Settings
from app.workers.context import LogContext
from app.workers.heartbeat import Heartbeat, HeartbeatStore, MemoryHeartbeats, RedisHeartbeats
from app.workers.runtime import RuntimeLifecycle


def heartbeat_store(settings: Settings) -> HeartbeatStore:
    if settings.embedded_workers:
        return MemoryHeartbeats()
    return RedisHeartbeats(settings.redis_url, prefix=f"{settings.redis_namespace}:workers:")


def build_broker(settings: Settings, heartbeats: HeartbeatStore) -> dramatiq.Broker:
    # RuntimeLifecycle must come after AsyncIO: its shutdown hook runs while the loop still runs.
    extra: list[Middleware] = [
        AsyncIO(),
        CurrentMessage(),
        LogContext(),
        RuntimeLifecycle(),
        PeriodiqMiddleware(skip_delay=60),
        Heartbeat(heartbeats, interval=settings.worker_heartbeat_seconds, ttl=settings.worker_stale_seconds),
    ]
    broker: dramatiq.Broker
    url = settings.job_broker_url
    if settings.embedded_workers:
        broker = StubBroker()
    elif url.startswith(("amqp://", "amqps://")):
        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        broker = RedisBroker(client=_redis_client(url), namespace=settings.redis_namespace)  # type: ignore[no-untyped-call]
    for middleware in extra:
        broker.add_middleware(middleware)
    _default_worker_timeout(settings.worker_poll_ms)
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
