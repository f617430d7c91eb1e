"""Embedded mode: worker threads and the schedule loop live inside the web process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
import dramatiq

from app.config import Settings
from app.domain.notifications.events import EventPublisher
from app.workers import runtime
from app.workers.queues import queue_threads
from app.workers.runtime import LoopPublisher
from app.workers.schedules import run_schedules


class _OneWorkerPerQueue(logging.Filter):
    """Drops Dramatiq's warning that a second Worker on the broker adds its own worker middleware, as each must."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("You're adding a middleware of the same type twice")


_ONE_WORKER_PER_QUEUE = _OneWorkerPerQueue()


class EmbeddedWorkers:
    """Starts a Dramatiq worker per queue and the schedules with the web app, and stops them with it.

    Each queue (app.workers.queues) has a worker and threads of its own, as it has its own
    processes in services mode: an email never waits for a thread behind users' tasks.
    """

    def __init__(self, broker: dramatiq.Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self._workers: list[dramatiq.Worker] = []
        self._stop = asyncio.Event()
        self._schedules: asyncio.Task[None] | None = None

    async def start(self, publisher: EventPublisher) -> None:
        runtime.embedded_publisher = LoopPublisher(asyncio.get_running_loop(), publisher)
        self._workers = [
            dramatiq.Worker(
                self.broker, queues={queue}, worker_threads=threads, worker_timeout=self.settings.worker_poll_ms
            )
            for queue, threads in queue_threads(self.settings).items()
        ]
        self.broker.logger.addFilter(_ONE_WORKER_PER_QUEUE)
        for worker in self._workers:
            await anyio.to_thread.run_sync(worker.start)
        self._stop.clear()
        self._schedules = asyncio.create_task(run_schedules(self.broker, self._stop), name="schedules")

    async def stop(self) -> None:
        self._stop.set()
        if self._schedules is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedules
        # The worker threads may be publishing through this loop: stop them off the loop, side by
        # side (each takes up to WORKER_POLL_MS twice; one after another, three outlasted the server's
        # 5 s grace). The workers share the process's event loop (app.workers.per_process): it stops
        # with the last.
        await asyncio.gather(*(anyio.to_thread.run_sync(worker.stop) for worker in self._workers))
        self._workers = []
        runtime.embedded_publisher = None
