"""Worker hooks that run once per process, however many Dramatiq workers the process runs.

A `dramatiq` worker process runs one Worker. Embedded, the web process runs one Worker
per queue (app.workers.queues), each with its own threads, and every Worker's start and
stop runs every middleware's boot and shutdown hooks. Dramatiq's AsyncIO middleware
keeps one event loop per process in a global: started once per Worker, the second loop
would replace the first and the first Worker's stop would end the loop the others use.
`WorkerCount` tells a middleware whether a boot is the process's first and a shutdown
its last.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import AsyncIO


class WorkerCount:
    """The Workers of this process that booted and have not shut down yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers = 0

    def boot(self) -> bool:
        """Count a Worker in; True when it is the only one."""
        with self._lock:
            self._workers += 1
            return self._workers == 1

    def shut_down(self) -> bool:
        """Count a Worker out; True when it was the last one."""
        with self._lock:
            self._workers = max(0, self._workers - 1)
            return self._workers == 0


class SharedAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware with one event loop for all the Workers of the process."""

    def __init__(self) -> None:
        super().__init__()
        self._booted = WorkerCount()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._booted.boot():
            super().before_worker_boot(broker, worker)  # type: ignore[no-untyped-call]

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._booted.shut_down():
            super().after_worker_shutdown(broker, worker)  # type: ignore[no-untyped-call]


def serves(worker: Any, queue: str) -> bool:
    """Whether `worker` takes messages from `queue` (a Worker without a queue list takes them all)."""
    whitelist = getattr(worker, "consumer_whitelist", None)
    return not whitelist or queue in whitelist
