"""What the periodic sweeps share: running every half minute, and queueing what is due.

Cron's finest step is a minute. A sweep that cron runs (its message carries periodiq's
`scheduled_at`) sends itself once more, 30 s later, and that run sends none: the sweeps run
every half minute (tasks.sweep, notifications.send_due_emails, webhooks.send_due).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import dramatiq

from app.workers.context import current_message

#: How long after a scheduled run of a sweep its follow-up runs.
FOLLOW_UP_MS = 30_000

T = TypeVar("T")


def follow_up(actor: dramatiq.Actor[Any, Any]) -> None:
    """Send `actor` again in FOLLOW_UP_MS when the running message is its scheduled (cron) run."""
    message = current_message.get()
    if message is not None and "scheduled_at" in message.options:
        actor.send_with_options(delay=FOLLOW_UP_MS)


def send_each(items: Iterable[T], send: Callable[[T], bool]) -> int:
    """Send a message for each item, in order; how many were sent.

    Stops at the first `send` that answers False (the broker is out of reach: the next sweep
    finds the rest still due). The broker's client blocks: from a coroutine, use `queue_each`.
    """
    sent = 0
    for item in items:
        if not send(item):
            break
        sent += 1
    return sent


async def queue_each(due: Sequence[T], send: Callable[[T], bool]) -> int:
    """`send_each` on a worker thread, off the event loop."""
    return await anyio.to_thread.run_sync(send_each, due, send)
