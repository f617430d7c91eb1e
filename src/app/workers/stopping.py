"""A worker process stops once, however many copies of the stop signal reach it.

`kill -TERM -- -PGID`, and systemd's default KillMode (which signals every process of
a service), reach a Dramatiq worker process twice: directly, and forwarded by the
`dramatiq` main process a moment later. Dramatiq takes a second SIGTERM as "kill now":
its handler calls `sys.exit` in the main thread while the worker threads and the
AsyncIO loop thread go on, so the process hangs until it is sent SIGKILL (15 s in the
tests, 90 s under systemd) instead of finishing its current messages and exiting.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

log = structlog.get_logger(__name__)

#: Copies of the signal that arrive within this long of the first are the same request to stop.
DUPLICATE_SECONDS = 2.0


class OneStopSignal(Middleware):
    """Pass the first SIGTERM (and any later than DUPLICATE_SECONDS after it) to Dramatiq's handler."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        dramatiqs = signal.getsignal(signal.SIGTERM)
        # Only in a `dramatiq` worker process (not in the web process, not in periodiq's).
        if not callable(dramatiqs) or getattr(dramatiqs, "__module__", None) != "dramatiq.cli":
            return
        first: float | None = None

        def once(signum: int, frame: FrameType | None) -> Any:
            nonlocal first
            now = time.monotonic()
            if first is not None and now - first < DUPLICATE_SECONDS:
                log.info("worker.stop_signal_repeated", ignored=True)
                return None
            if first is None:
                first = now
            return dramatiqs(signum, frame)

        signal.signal(signal.SIGTERM, once)
