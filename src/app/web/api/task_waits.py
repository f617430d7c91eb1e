"""`Prefer: wait=N` (RFC 7240) on task submission and on GET: answer once the task ends, or after N seconds.

The wait holds no worker thread and no database connection: the handler subscribes to the
owner's event channel (the task's changes are published there) and reads the task again on
each message, at least every FALLBACK_SECONDS (a message may be lost), until it ends, the
time is up, the process starts stopping, or the client goes away. The answer is the task as
it is then, with `Preference-Applied: wait=N` when the wait was honoured.

A user may hold at most MAX_WAITS_PER_USER waits per process: beyond that, and for an
unreadable preference, the answer comes at once (a preference is a wish, RFC 7240 §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from uuid import UUID

from litestar.channels import ChannelsPlugin

from app.domain.notifications.events import channel_for
from app.domain.tasks.models import FINISHED as FINISHED_STATUSES
from app.domain.tasks.schemas import TaskOut
from app.web.http.draining import Draining

#: The longest wait a client may ask for (seconds).
MAX_WAIT_SECONDS = 60
#: Waits one user may hold at once in one process.
MAX_WAITS_PER_USER = 10
#: Read the task at least this often while waiting, message or not.
FALLBACK_SECONDS = 2.0
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?(?:$|[,;\s])", re.IGNORECASE)
_waiting: Counter[UUID] = Counter()


def requested_wait(prefer: str | None) -> int:
    """Seconds asked for by a `Prefer` header (`wait=N`), at most MAX_WAIT_SECONDS; 0 for none."""
    if not prefer:
        return 0
    found = _WAIT.search(prefer)
    return min(int(found.group(1)), MAX_WAIT_SECONDS) if found else 0


@contextlib.contextmanager
def _slot(user_id: UUID) -> Iterator[bool]:
    """A wait slot of the user's, if one is free."""
    if _waiting[user_id] >= MAX_WAITS_PER_USER:
        yield False
        return
    _waiting[user_id] += 1
    try:
        yield True
    finally:
        _waiting[user_id] -= 1
        if _waiting[user_id] <= 0:
            del _waiting[user_id]


async def wait_for_end(
    channels: ChannelsPlugin,
    draining: Draining,
    user_id: UUID,
    seconds: int,
    read: Callable[[], Awaitable[TaskOut]],
    task: TaskOut,
) -> tuple[TaskOut, bool]:
    """(the task once it ended or `seconds` passed, whether the wait was honoured). `task` is its state now."""
    if seconds <= 0 or task.status in FINISHED_STATUSES:
        return task, seconds > 0
    with _slot(user_id) as free:
        if not free:
            return task, False
        subscriber = await channels.subscribe([channel_for(user_id)])
        try:
            task = await read()  # after subscribing: a change from here on wakes us
            messages = subscriber.iter_events()
            deadline = asyncio.get_running_loop().time() + seconds
            stopping = asyncio.ensure_future(draining.wait())
            try:
                while task.status not in FINISHED_STATUSES:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0 or stopping.done():
                        break
                    message = asyncio.ensure_future(anext(messages))
                    await asyncio.wait({message, stopping}, timeout=min(left, FALLBACK_SECONDS))
                    message.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await message
                    task = await read()
            finally:
                stopping.cancel()
        finally:
            await channels.unsubscribe(subscriber)
    return task, True
