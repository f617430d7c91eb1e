"""Application metrics, exposed with Litestar's HTTP metrics at /metrics.

Besides open SSE streams: tasks by status (`app_tasks`), the run time of tasks finished in
the last hour (`app_task_duration_seconds`, a summary with p50/p95, count and sum) and the
messages waiting on the broker (`app_queue_depth`). A `MetricsRefresher` in each web
process reads them every few seconds (and once at start-up); a scrape only reports the
last reading, so it never waits on the database or the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pika.exceptions  # type: ignore[import-untyped]
import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.tasks.models import STATUSES
from app.domain.tasks.stats import Durations, task_stats
from app.web.http.background import in_background
from app.web.http.blocking import in_thread

log = structlog.get_logger(__name__)

SSE_CONNECTIONS = Gauge("app_sse_connections", "Open server-sent event streams in this process")
SSE_SLOW_CLIENTS = Counter("app_sse_slow_clients_total", "Streams closed because their client stopped reading")

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Reading:
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    durations: Durations = field(default_factory=lambda: Durations(quantiles={0.5: 0.0, 0.95: 0.0}))
    queue_depth: dict[str, int] = field(default_factory=lambda: {DEFAULT_QUEUE: 0})


class TaskMetrics(Collector):
    """Reports the latest `Reading`; swapping in a new one is a single assignment."""

    def __init__(self) -> None:
        self.reading = Reading()

    def collect(self) -> Iterable[Metric]:
        reading = self.reading
        tasks = GaugeMetricFamily("app_tasks", "Tasks by status", labels=["status"])
        for status, count in sorted(reading.by_status.items()):
            tasks.add_metric([status], count)
        yield tasks

        name = "app_task_duration_seconds"
        durations = Metric(name, "Run time of the tasks that finished in the last hour", "summary")
        for q, seconds in sorted(reading.durations.quantiles.items()):
            durations.add_sample(name, {"quantile": str(q)}, seconds)
        durations.add_sample(name + "_count", {}, reading.durations.count)
        durations.add_sample(name + "_sum", {}, reading.durations.total)
        yield durations

        depth = GaugeMetricFamily(
            "app_queue_depth", "Messages waiting on the broker, delayed ones included", labels=["queue"]
        )
        for queue, waiting in sorted(reading.queue_depth.items()):
            depth.add_metric([queue], waiting)
        yield depth


TASK_METRICS = TaskMetrics()
REGISTRY.register(TASK_METRICS)


def _queue_names(broker: dramatiq.Broker) -> list[str]:
    declared = {name for name in broker.get_declared_queues() if not name.endswith((".DQ", ".XQ"))}
    return sorted(declared or {DEFAULT_QUEUE})


def _redis_depth(broker: Any, queues: list[str]) -> dict[str, int]:
    """RedisBroker keeps a queue's waiting message ids in the list `{namespace}:{queue}`, delayed ones in `.DQ`."""
    pipeline = broker.client.pipeline(transaction=False)
    for queue in queues:
        pipeline.llen(f"{broker.namespace}:{queue}")
        pipeline.llen(f"{broker.namespace}:{dq_name(queue)}")
    lengths = [int(n) for n in pipeline.execute()]
    return {queue: lengths[2 * i] + lengths[2 * i + 1] for i, queue in enumerate(queues)}


def rabbitmq_counts(broker: RabbitmqBroker, queue: str) -> tuple[int, int, int]:
    """Ready, delayed (`.DQ`) and dead (`.XQ`) messages of `queue`, on this thread's connection.

    Dramatiq keeps one connection per thread and only its `enqueue` replaces a broken one: after
    a RabbitMQ restart this thread's connection is dead, so it is dropped and the count tried once
    more on a new one (which fails while RabbitMQ is still down).
    """
    try:
        return broker.get_queue_message_counts(queue)
    except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
        del broker.connection
        return broker.get_queue_message_counts(queue)


def _rabbitmq_depth(broker: RabbitmqBroker, queues: list[str]) -> dict[str, int]:
    """Each queue's ready messages and its delay queue's; not those a worker holds unacknowledged (its prefetch)."""
    depth = {}
    for queue in queues:
        ready, delayed, _dead = rabbitmq_counts(broker, queue)
        depth[queue] = ready + delayed
    return depth


async def queue_depth(broker: dramatiq.Broker) -> dict[str, int]:
    """Messages waiting on each queue of `broker` (and its delay queue); not those a worker already took."""
    queues = _queue_names(broker)
    stub_queues = getattr(broker, "queues", None)
    if isinstance(stub_queues, dict):  # StubBroker: in-memory queue.Queue objects
        return {
            queue: sum(stub_queues[name].qsize() for name in (queue, dq_name(queue)) if name in stub_queues)
            for queue in queues
        }
    if hasattr(broker, "client") and hasattr(broker, "namespace"):  # RedisBroker
        return await in_thread(_redis_depth, broker, queues)
    if isinstance(broker, RabbitmqBroker):
        return await in_thread(_rabbitmq_depth, broker, queues)
    return {}


class MetricsRefresher:
    """Refreshes TASK_METRICS every `interval` seconds while the web app runs (see `lifespan`)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        broker: dramatiq.Broker,
        interval: float,
        metrics: TaskMetrics = TASK_METRICS,
    ) -> None:
        self.sessions = sessions
        self.broker = broker
        self.interval = interval
        self.metrics = metrics

    async def refresh(self) -> None:
        async with self.sessions() as session:
            stats = await task_stats(session)
        try:
            depth = await queue_depth(self.broker)
        except Exception as exc:  # noqa: BLE001 - a broker that is down keeps the last depth
            log.warning("metrics.queue_depth_failed", error=repr(exc))
            depth = self.metrics.reading.queue_depth
        self.metrics.reading = Reading(by_status=stats.by_status, durations=stats.durations, queue_depth=depth)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a failed reading keeps the last one; the next may work
                log.warning("metrics.refresh_failed", error=repr(exc))
            await asyncio.sleep(self.interval)

    @asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """For Litestar's `lifespan=[...]`: refresh in the background from start-up to shutdown."""
        async with in_background(self.run(), "metrics-refresher"):
            yield
