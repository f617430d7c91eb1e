"""Blocking calls (the broker's and heartbeats' Redis clients, RabbitMQ's) run off the event loop, in threads.

asyncio's executor, not `anyio.to_thread.run_sync`: anyio's capacity limiter, cancel scopes and
async-library detection took 90 µs of CPU per call against 45 here, and every task submission
made one (its message to the broker, which now goes without a thread on Redis:
app.workers.brokers.enqueue_from_loop). A caller that is cancelled stops waiting; the call itself
runs to its end in its thread (a message sent after its task's commit is still sent).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

#: Threads for blocking calls, per web process: as many calls wait on a slow or lost broker at once.
BLOCKING_THREADS = 40

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: The threads themselves; broker sends that may block (RabbitMQ's) are given them (`enqueue_from_loop`).
threads = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="blocking")


async def in_thread(function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`function(*args, **kwargs)` in a thread, with the caller's context variables (its log context)."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(threads, call)
