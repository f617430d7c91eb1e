"""What async actors use: a database engine and an event publisher on the worker's event loop.

They are made lazily on the AsyncIO middleware's loop (asyncpg connections belong to
the loop that opened them) and closed before that loop stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
import redis.asyncio
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.database import create_engine, session_factory
from app.domain.notifications.events import EventPublisher
from app.workers.per_process import WorkerCount, serves
from app.workers.queues import TASKS

log = structlog.get_logger(__name__)


def channels_key_prefix(namespace: str) -> str:
    """The Redis key prefix of the live-event channels, shared by web processes and workers."""
    return f"{namespace.upper()}_CHANNELS"


def pubsub_name(key_prefix: str, channel: str) -> str:
    """`channel` (an event channel, the revocations') as Redis pub/sub knows it: after the deployment's prefix.

    Litestar's pub/sub backend names Redis channels as the app does, so deployments and test runs
    sharing one Redis heard each other: another's revocations cleared this process's credential cache.
    """
    return f"{key_prefix}:{channel}"


class RedisPublisher:
    """Publishes on the Redis pub/sub channels that the web processes' channels backend listens on.

    A plain PUBLISH: Litestar's backend sends a Lua script (EVALSHA) so that one message reaches
    several channels at once, and an event goes to one.
    """

    def __init__(self, url: str, namespace: str) -> None:
        self._client = redis.asyncio.Redis.from_url(url)
        self._prefix = channels_key_prefix(namespace)

    async def publish(self, channel: str, data: bytes) -> None:
        """Publish, or log why not: the event is in the table, so a lost publish is only late."""
        try:
            await self._client.publish(pubsub_name(self._prefix, channel), data)
        except (redis.RedisError, OSError) as exc:
            log.warning("events.publish_failed", channel=channel, error=str(exc))

    async def close(self) -> None:
        await self._client.aclose()


class LoopPublisher:
    """Embedded mode: hands events to the web app's channels plugin on the web app's own loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: EventPublisher) -> None:
        self._loop = loop
        self._target = target

    async def publish(self, channel: str, data: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(self._target.publish(channel, data), self._loop)
        await asyncio.wrap_future(future)


#: Set by the web app in embedded mode, before the embedded workers start.
embedded_publisher: EventPublisher | None = None


@dataclass
class WorkerRuntime:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    publisher: EventPublisher
    #: The event loop its connections belong to.
    loop: asyncio.AbstractEventLoop

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()
        if isinstance(self.publisher, RedisPublisher):
            await self.publisher.close()


_runtime: WorkerRuntime | None = None


def _build(settings: Settings, loop: asyncio.AbstractEventLoop) -> WorkerRuntime:
    publisher: EventPublisher
    if settings.embedded_workers:
        if embedded_publisher is None:
            raise RuntimeError("Embedded workers need the web app's publisher; start them through the web app.")
        publisher = embedded_publisher
    else:
        publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    engine = create_engine(settings)
    return WorkerRuntime(engine=engine, sessions=session_factory(engine), publisher=publisher, loop=loop)


def runtime() -> WorkerRuntime:
    """The runtime of this worker process, on the running event loop; call from actor code only.

    Built again when the loop is another one: a recovery pass that ran while a Worker stopped
    (after RuntimeLifecycle had closed the runtime, before the loop stopped) built one on the
    loop being stopped, and the process's next Worker used its connections from its own loop
    ("attached to a different loop"; seen with in-process Workers in tests).
    """
    global _runtime
    loop = asyncio.get_running_loop()
    if _runtime is None or _runtime.loop is not loop:
        _runtime = _build(get_settings(), loop)
    return _runtime


#: Set while this process's `tasks` worker stops: an actor then hands the next task to the queue
#: instead of running it itself (app.workers.actors.tasks).
tasks_stopping = threading.Event()


class RuntimeLifecycle(Middleware):
    """Closes the runtime's connections on the event loop before the AsyncIO middleware stops it.

    With several Workers in one process (embedded), only when the last one stops.
    """

    def __init__(self) -> None:
        self._workers = WorkerCount()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._workers.boot()
        if serves(worker, TASKS):
            tasks_stopping.clear()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        global _runtime
        if serves(worker, TASKS):
            tasks_stopping.set()
        if not self._workers.shut_down():
            return
        loop_thread = get_event_loop_thread()
        if _runtime is not None and loop_thread is not None:
            loop_thread.run_coroutine(_runtime.close())
        _runtime = None
