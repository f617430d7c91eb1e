"""Recovery within seconds: a dead worker's tasks handed back, and turns sent again when the broker returns.

Every worker process beats in the heartbeat store every WORKER_HEARTBEAT_SECONDS, and its
key expires WORKER_STALE_SECONDS after its last beat (app.workers.heartbeat). After each
beat, each worker process reads who is alive and, only when something changed, runs on
its event loop (never in the heartbeat thread, which must keep beating):

- a worker is gone (its key expired: killed, or its machine lost): its running tasks
  whose last write is also older than WORKER_STALE_SECONDS are queued again for their next
  attempt (or failed when their round has none left), and a turn is sent for each. A task
  written more recently is looked at again after the next beat: after a Redis restart the
  keys of live workers are missing until they beat again, but their tasks are still written;
- the store did not answer and now does, or Redis restarted (its run id changed: every
  message it held is gone), or this worker just started: a process that serves the `tasks`
  queue sends a turn for every task that may start now, instead of leaving them to the
  scheduler's sweep.

Nothing polls the database while nothing changes: an idle stack only beats.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import anyio
import structlog
from dramatiq.asyncio import get_event_loop_thread

from app.config import get_settings
from app.domain.tasks.maintenance import TaskKeeper
from app.workers.heartbeat import WorkerInfo
from app.workers.queues import TASKS

log = structlog.get_logger(__name__)


class Recovery:
    """The heartbeat's watcher (one per process): decides after each beat whether there is anything to recover."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] | None = None
        self._generation: str | None = None
        self._store_lost = False
        self._look_again = False
        self._resend = True  # at start: what was left queued while no worker served the queue
        self._running: concurrent.futures.Future[None] | None = None

    def __call__(self, alive: set[str] | None, generation: str | None, me: WorkerInfo) -> None:
        with self._lock:
            if alive is None:
                self._store_lost = True
                return
            restarted = self._generation is not None and generation != self._generation
            if self._store_lost or restarted:
                self._resend = True
                log.info("workers.broker_back", restarted=restarted)
            self._store_lost = False
            self._generation = generation
            gone = self._known is None or not self._known <= alive
            self._known = alive
            serves_tasks = not me.queues or TASKS in me.queues
            resend = self._resend and serves_tasks
            if not (gone or self._look_again or resend):
                return
            if self._running is not None and not self._running.done():
                self._look_again = True  # after the one still running
                return
            loop_thread = get_event_loop_thread()
            if loop_thread is None:
                return
            self._resend = self._look_again = False
            self._running = asyncio.run_coroutine_threadsafe(self._recover(alive, resend), loop_thread.loop)

    async def _recover(self, alive: set[str], resend: bool) -> None:
        from app.workers.actors.tasks import artifacts, send_turns
        from app.workers.runtime import runtime

        rt = runtime()
        keeper = TaskKeeper(rt.sessions, rt.publisher, artifacts(), get_settings())
        try:
            handed = await keeper.hand_back(alive)
            turns = await keeper.startable() if resend else len(handed.requeued)
            sent = await anyio.to_thread.run_sync(send_turns, turns)
        except Exception as exc:  # noqa: BLE001 - the database may be away: try again after the next beat
            log.warning("workers.recovery_failed", error=repr(exc))
            with self._lock:
                self._look_again = True
                self._resend = self._resend or resend
            return
        with self._lock:
            self._look_again = self._look_again or handed.suspects > 0
            self._resend = self._resend or (resend and sent < turns)
        if handed.requeued or handed.failed or sent:
            log.info(
                "workers.recovered",
                handed_back=len(handed.requeued),
                failed=handed.failed,
                turns_sent=sent,
                resend=resend,
            )
