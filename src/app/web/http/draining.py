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
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from litestar import Litestar

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], Any]
#: A stop signal, the handler put in front of it, and the handler that one calls.
Chained = tuple[int, Handler, Handler]


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

    def chain_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[Chained]:
        """Run `begin` on `loop` at every stop signal, then the process's handler as before.

        Servers stop on SIGTERM and SIGINT through their loop's signal handlers; the loop keeps
        its table out of reach (asyncio in a private attribute, uvloop in C), but a Python-level
        handler stands in front of it (asyncio's no-op beside its wake-up fd, uvloop's
        dispatcher): that handler is wrapped here, so any loop works. Only from the main thread,
        where signals are handled, and only over a Python handler (not the default or ignored):
        the test client runs the app in another thread and is left alone.
        """
        if threading.current_thread() is not threading.main_thread():
            return []
        chained: list[Chained] = []
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handle(signum: int, frame: FrameType | None, previous: Handler = previous) -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(self.begin)
                previous(signum, frame)

            signal.signal(sig, handle)
            chained.append((sig, handle, previous))
        return chained

    @staticmethod
    def unchain_signal_handlers(chained: list[Chained]) -> None:
        """Put back the handlers `chain_signal_handlers` wrapped, where its own are still in place."""
        for sig, handle, previous in chained:
            if signal.getsignal(sig) is handle:
                signal.signal(sig, previous)

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        chained = self.chain_signal_handlers(asyncio.get_running_loop())
        try:
            yield
        finally:
            self.begin()
            self.unchain_signal_handlers(chained)
