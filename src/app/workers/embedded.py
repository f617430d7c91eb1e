"""Embedded mode: worker threads and the schedule loop live inside the web process."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import dramatiq

from app.config import Settings
from app.domain.notifications.events import EventPublisher
from app.workers import runtime
from app.workers.runtime import LoopPublisher
from app.workers.schedules import run_schedules


class EmbeddedWorkers:
    """Starts a Dramatiq worker and the schedules with the web app, and stops them with it."""

    def __init__(self, broker: dramatiq.Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self._worker: dramatiq.Worker | None = None
        self._stop = asyncio.Event()
        self._schedules: asyncio.Task[None] | None = None

    async def start(self, publisher: EventPublisher) -> None:
        runtime.embedded_publisher = LoopPublisher(asyncio.get_running_loop(), publisher)
        self._worker = dramatiq.Worker(
            self.broker, worker_threads=self.settings.worker_threads, worker_timeout=self.settings.worker_poll_ms
        )
        await anyio.to_thread.run_sync(self._worker.start)
        self._stop.clear()
        self._schedules = asyncio.create_task(run_schedules(self.broker, self._stop), name="schedules")

    async def stop(self) -> None:
        self._stop.set()
        if self._schedules is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedules
        if self._worker is not None:
            # The worker threads may be publishing through this loop: stop them off the loop.
            await anyio.to_thread.run_sync(self._worker.stop)
        runtime.embedded_publisher = None
