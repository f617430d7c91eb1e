"""Ending long-lived responses when the process is asked to stop.

Granian stops a worker by letting its open requests finish, and a live event stream never
finishes by itself: the worker was killed after the server's timeout, and the app's own
shutdown (embedded workers, pools) never ran. So on SIGTERM or SIGINT the app first sets
`Draining`, which ends every event stream (browsers reconnect with Last-Event-ID and miss
nothing), then hands the signal on to the server's handler as before.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from litestar import Litestar

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def end_stream(end: asyncio.Future[None]) -> None:
    """Set a stream's end (its one future, set by whichever reason comes first: see app.web.api.events)."""
    if not end.done():
        end.set_result(None)


class Draining:
    """Set once this process has been asked to stop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._ends: set[asyncio.Future[None]] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def begin(self) -> None:
        if not self._event.is_set():
            log.info("web.draining")
        self._event.set()
        for end in self._ends:
            end_stream(end)

    def end_with(self, end: asyncio.Future[None]) -> None:
        """Set `end` done when stopping begins (at once if it has); `forget` it once nobody waits for it.

        An event stream waits on one future for every reason it may end: a future costs a
        tenth of a task waiting on `wait()`, and 10,000 streams held one task each.
        """
        if self._event.is_set():
            end_stream(end)
        else:
            self._ends.add(end)

    def forget(self, end: asyncio.Future[None]) -> None:
        self._ends.discard(end)

    async def wait(self) -> None:
        await self._event.wait()

    def chain_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Run `begin` before the server's own loop signal handlers; False when there are none to chain.

        asyncio keeps one handler per signal and has no public getter, so the server's
        handler is read from the loop's table. Servers that do not use loop handlers
        (the test client, uvicorn) are left alone: their shutdown already reaches the app.
        """
        handlers = getattr(loop, "_signal_handlers", None)
        if not isinstance(handlers, dict):
            return False
        chained = False
        for sig in STOP_SIGNALS:
            previous = handlers.get(sig)
            if previous is None:
                continue

            def handle(previous: asyncio.Handle = previous) -> None:
                self.begin()
                previous._run()

            loop.add_signal_handler(sig, handle)
            chained = True
        return chained

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        self.chain_signal_handlers(asyncio.get_running_loop())
        try:
            yield
        finally:
            self.begin()
