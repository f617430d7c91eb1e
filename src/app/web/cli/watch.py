"""`litestar tasks watch ID`: follow one task live until it ends, with its output lines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import click
import redis.asyncio
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.notifications.events import channel_for
from app.domain.tasks.models import FAILED, SUCCEEDED
from app.domain.tasks.operations import TaskFollower, TaskState
from app.web.cli.output import Steps, console_for_output
from app.web.cli.running import run_in_engine
from app.web.cli.task_logs import print_lines_after
from app.web.http.channels import REDIS_DOWN, ResilientRedisChannelsBackend
from app.workers.runtime import channels_key_prefix

#: Embedded, `tasks watch` reads the task this often (the web process's channels are out of reach).
WATCH_POLL_SECONDS = 0.5
#: Services mode, `tasks watch` reads the task at least this often even without a message (one may be lost).
WATCH_FALLBACK_SECONDS = 2.0

#: `tasks watch` exit codes.
WATCH_SUCCEEDED, WATCH_FAILED, WATCH_UNKNOWN = 0, 1, 2


@contextlib.asynccontextmanager
async def _wake_ups(settings: Settings, channel: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A wait that returns when a task on `channel` may have changed.

    Services mode: a message on the owner's Redis channel (any message: the table is read
    anyway), or WATCH_FALLBACK_SECONDS without one. Embedded, the web process's channels
    are out of this process's reach: every WATCH_POLL_SECONDS.
    """
    if settings.embedded_workers:
        yield lambda: asyncio.sleep(WATCH_POLL_SECONDS)
        return
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    backend = ResilientRedisChannelsBackend(redis=client, key_prefix=channels_key_prefix(settings.redis_namespace))
    woken = asyncio.Event()

    async def listen() -> None:
        async for _ in backend.stream_events():
            woken.set()

    async def wait() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCH_FALLBACK_SECONDS):
                await woken.wait()
        woken.clear()  # before the caller reads: a message during its read wakes the next wait at once

    await backend.subscribe([channel])
    listener = asyncio.create_task(listen())
    try:
        yield wait
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        with contextlib.suppress(*REDIS_DOWN):
            await backend.on_shutdown()
        await client.aclose()


def _state_line(state: TaskState) -> str:
    parts = [f"{state.status:<9}", f"attempt {state.attempts}"]
    if state.progress.total:
        parts.append(f"{state.progress.current}/{state.progress.total} ({state.progress.percent:.0f}%)")
    if state.progress.message:
        parts.append(state.progress.message)
    if state.error:
        parts.append(f"error: {state.error}")
    return "  ".join(parts)


def _show(steps: Steps, state: TaskState) -> None:
    steps.note(_state_line(state))
    steps.show(state.status, state.progress.current, state.progress.total or None)


async def _watch(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, task_id: UUID, console: Console
) -> int:
    """Follow the task until it ends; returns the command's exit code."""
    follower = await TaskFollower.find(sessions, task_id)
    if follower is None:
        click.echo(f"No task with id {task_id}.", err=True)
        return WATCH_UNKNOWN
    async with _wake_ups(settings, channel_for(follower.owner_id)) as woken:
        state = await follower.start()  # after subscribing: a change from here on wakes us up
        if state is None:
            click.echo(f"No task with id {task_id}.", err=True)
            return WATCH_UNKNOWN
        with Steps(console, state.status, None) as steps:
            _show(steps, state)
            shown = await print_lines_after(sessions, task_id, 0, steps.note)
            while not state.finished and not follower.gone:
                await woken()
                changes = await follower.changes()
                # The lines read after the states: those written with the end are printed before it.
                shown = await print_lines_after(sessions, task_id, shown, steps.note)
                for state in changes:
                    _show(steps, state)
    if not state.finished:
        console.print(f"Task {task_id} was deleted before it ended.")
        return WATCH_FAILED
    if state.status == SUCCEEDED:
        console.print(f"Task {task_id} succeeded.")
        return WATCH_SUCCEEDED
    ending = f"failed: {state.error}" if state.status == FAILED else f"was {state.status}"
    console.print(f"Task {task_id} {ending}.")
    return WATCH_FAILED


@click.command(
    name="watch",
    help=(
        "Follow task TASK_ID live until it ends: a line per change (and a progress bar on a terminal) and its "
        "output lines (`#seq ...`, as `tasks logs` prints them), then its final status. "
        "Exit code 0 when it succeeded, 1 when it failed or was cancelled, 2 when there is no such task."
    ),
)
@click.argument("task_id", type=click.UUID)
def watch(task_id: UUID) -> None:
    console = console_for_output()
    code = run_in_engine(lambda sessions, settings: _watch(sessions, settings, task_id, console))
    click.get_current_context().exit(code)
