"""Operator commands on the `litestar` CLI.

`litestar users create|promote|deactivate` and `litestar tasks list|stats|retry|purge|watch`.
Output is for people on a terminal (rich tables, progress bars) and for scripts elsewhere:
without a terminal, tables are plain columns one row a line and progress is a line per step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence, Set
from typing import TypeVar
from uuid import UUID

import click
import msgspec
import redis.asyncio
from litestar.plugins import CLIPluginProtocol
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.accounts.errors import AccountError
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.revocation import announce_revoked, on_users_changed
from app.domain.accounts.schemas import Registration, UserFlags
from app.domain.accounts.services import AccountService
from app.domain.database import create_engine, session_factory
from app.domain.errors import DomainError, LimitReached, NotFound
from app.domain.notifications.events import EventPublisher, channel_for
from app.domain.tasks.artifacts import LocalArtifacts
from app.domain.tasks.maintenance import BATCH as PURGE_BATCH
from app.domain.tasks.maintenance import TaskKeeper
from app.domain.tasks.models import FAILED, STATUSES, SUCCEEDED, Task
from app.domain.tasks.operations import TaskFollower, TaskState, failed_task_ids
from app.domain.tasks.services import TaskService, task_message_args
from app.domain.tasks.stats import TaskRow, list_tasks, task_owner
from app.web.admin_tasks import TaskLoadOut, task_load
from app.web.channels import REDIS_DOWN, ResilientRedisChannelsBackend
from app.web.http.credentials import touch_changed_file
from app.workers.actors.tasks import send_task
from app.workers.runtime import RedisPublisher, channels_key_prefix

T = TypeVar("T")
#: Without a terminal, tables are as wide as their rows: a script reads one row a line.
PIPE_WIDTH = 10_000
#: Embedded, `tasks watch` reads the task this often (the web process's channels are out of reach).
WATCH_POLL_SECONDS = 0.5
#: Services mode, `tasks watch` reads the task at least this often even without a message (one may be lost).
WATCH_FALLBACK_SECONDS = 2.0


def _run(work: Callable[[AccountService], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction; an account refusal is a clear CLI error."""

    async def main() -> T:
        settings = get_settings()
        engine = create_engine(settings)
        try:
            changed: set[UUID] = set()
            stop_hearing = on_users_changed(changed.update)
            try:
                async with session_factory(engine)() as session:
                    result = await work(AccountService(session, Passwords(settings), settings))
                    await session.commit()
            finally:
                stop_hearing()
            await _announce_revoked(changed, settings)
            return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except AccountError as exc:
        raise click.ClickException(exc.detail) from exc


@click.group(name="users", help="Manage user accounts.")
def users() -> None:
    """Manage user accounts."""


@users.command(name="create", help="Create an active user whose email address counts as verified.")
@click.option("--email", required=True, help="The user's email address; they sign in with it or the username.")
@click.option("--username", required=True, help="The user's unique name, shown in the pages and to other operators.")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The user's password (at least 10 characters); asked for twice, hidden, when not given.",
)
@click.option("--full-name", default=None, help="The name shown in the pages (optional).")
@click.option("--superuser", is_flag=True, default=False, help="Make the user an administrator.")
def create(email: str, username: str, password: str, full_name: str | None, superuser: bool) -> None:
    registration = Registration(email=email, username=username, password=password, full_name=full_name)

    async def work(service: AccountService) -> str:
        user = await service.register(registration, is_superuser=superuser, is_verified=True)
        return f"Created {'superuser' if superuser else 'user'} {user.username} ({user.email}), id {user.id}."

    click.echo(_run(work))


def _set_flags(login: str, flags: UserFlags, done: str) -> None:
    async def work(service: AccountService) -> str:
        user = await service.by_login(login)
        if user is None:
            raise click.ClickException(f"No user with username or email {login!r}.")
        await service.set_flags(user, flags)
        return f"{user.username}: {done}."

    click.echo(_run(work))


@users.command(name="promote", help="Make user LOGIN (a username or an email address) an administrator.")
@click.argument("login")
def promote(login: str) -> None:
    _set_flags(login, UserFlags(is_superuser=True), "now a superuser")


@users.command(
    name="deactivate",
    help="Deactivate user LOGIN (a username or an email address): every session and token stops at once.",
)
@click.argument("login")
def deactivate(login: str) -> None:
    _set_flags(login, UserFlags(is_active=False), "deactivated")


def _run_tasks(work: Callable[[async_sessionmaker[AsyncSession], Settings], Awaitable[T]]) -> T:
    """Run `work` with a session factory of its own engine; a domain refusal is a clear CLI error."""

    async def main() -> T:
        settings = get_settings()
        engine = create_engine(settings)
        try:
            return await work(session_factory(engine), settings)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        raise click.ClickException(exc.detail) from exc


class _NoPublisher:
    """Where the CLI's events go when no live reader is in reach (embedded, or purging)."""

    async def publish(self, channel: str, data: bytes) -> None:
        return None


def _console() -> Console:
    """Rich output on a terminal; in a pipe or a log, plain lines (no colours, no wrapping) for scripts to read."""
    console = Console(highlight=False, markup=False, emoji=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, markup=False, emoji=False, width=PIPE_WIDTH)


def _table(
    console: Console, columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Set[str] = frozenset()
) -> Table:
    """A table with a header; `numeric` columns are right-aligned. Without a terminal: no lines, one row a line."""
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=column == "ID")
    for row in rows:
        table.add_row(*row)
    return table


class _Steps:
    """A rich progress bar on a terminal; without one (a pipe, a log), plain lines instead.

    `note` lines are printed either way (above the bar on a terminal); `trace` lines only
    without a terminal, where they say what the bar would have shown.
    """

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._bar = self._progress.add_task(description, total=total)

    def __enter__(self) -> _Steps:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        self._progress.advance(self._bar, count)

    def show(self, description: str, completed: int, total: int | None) -> None:
        """Set the bar; a total of None is a bar without an end (progress unknown)."""
        self._progress.update(self._bar, description=description, completed=completed, total=total)

    def note(self, line: str) -> None:
        self.console.print(line)

    def trace(self, line: str) -> None:
        if self._progress.disable:
            self.console.print(line)


async def _user_id(session: AsyncSession, settings: Settings, login: str) -> UUID:
    user = await AccountService(session, Passwords(settings), settings).by_login(login)
    if user is None:
        raise click.ClickException(f"No user with username or email {login!r}.")
    return user.id


@click.group(name="tasks", help="Inspect and look after background tasks.")
def tasks() -> None:
    """Inspect and look after background tasks."""


def _progress(task: Task) -> str:
    if task.progress_total <= 0:
        return "-"
    return f"{task.progress_current}/{task.progress_total} ({100 * task.progress_current / task.progress_total:.0f}%)"


@tasks.command(name="list", help="List tasks of every user (or one), newest first.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only tasks in this status.")
@click.option(
    "--user", "login", default=None, metavar="USERNAME_OR_EMAIL", help="Only this user's tasks (username or email)."
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many tasks."
)
def list_(status: str | None, login: str | None, limit: int) -> None:
    console = _console()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> list[TaskRow]:
        async with sessions() as session:
            user_id = None if login is None else await _user_id(session, settings, login)
            return await list_tasks(session, status=status, user_id=user_id, limit=limit)

    found = _run_tasks(work)
    if not found:
        console.print("No tasks.")
        return
    rows = [
        [
            str(row.task.id),
            row.username,
            row.task.kind,
            row.task.status,
            str(row.task.attempts),
            _progress(row.task),
            row.task.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for row in found
    ]
    columns = ["ID", "USER", "KIND", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED (UTC)"]
    console.print(_table(console, columns, rows, numeric={"ATTEMPTS"}))


@tasks.command(name="stats", help="Running and queued tasks per user, and each queue's depth.")
def stats() -> None:
    console = _console()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TaskLoadOut:
        from app.workers import broker

        async with sessions() as session:
            return await task_load(session, broker, settings)

    load = _run_tasks(work)
    settings = get_settings()
    if settings.embedded_workers:
        console.print("QUEUE: embedded, the queues live in the web process's memory; see /admin.")
    elif load.queues is None:
        console.print("QUEUE: the broker does not answer.")
    else:
        queues = sorted(load.queues.items())
        console.print(_table(console, ["QUEUE", "WAITING"], [[q, str(n)] for q, n in queues], numeric={"WAITING"}))
    console.print()
    console.print("  ".join(f"{status} {count}" for status, count in load.by_status.items()))
    console.print(f"Each user runs at most {load.max_running_per_user} tasks at once.")
    console.print()
    if not load.users:
        console.print("Nobody has a task queued or running.")
    else:
        rows = [[u.username, str(u.running), str(u.queued)] for u in load.users]
        console.print(_table(console, ["USER", "RUNNING", "QUEUED"], rows, numeric={"RUNNING", "QUEUED"}))


@contextlib.asynccontextmanager
async def _live_publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    """Where the CLI tells live readers of its changes: Redis in services mode.

    Embedded, the web process's channels are in its memory, out of this process's reach: its
    streams find the events in the table at their next heartbeat.
    """
    if settings.embedded_workers:
        yield _NoPublisher()
        return
    publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    try:
        yield publisher  # RedisPublisher logs a publish that fails: it is only late
    finally:
        await publisher.close()


async def _retry_one(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, task_id: UUID, publisher: EventPublisher
) -> Task:
    """Queue task `task_id` again under its owner's rules (the same as the API's, caps included), committed."""
    async with sessions() as session:
        owner = await task_owner(session, task_id)
        if owner is None:
            raise NotFound(f"No task with id {task_id}.")
        service = TaskService(session, settings)
        task, old_artifact = await service.retry(owner, task_id)
        await session.commit()
    await service.events.publish(publisher)
    if old_artifact:
        await LocalArtifacts(settings.artifact_path).delete(old_artifact)
    return task


def _send(task: Task, settings: Settings) -> bool:
    """Send a retried task's message; False when it is left to a sweeper (embedded, or the broker is down)."""
    # Embedded, this process's broker is in memory and nobody reads it: the web process's sweeper
    # sends the task once it has been queued for TASK_RESEND_SECONDS.
    return not settings.embedded_workers and send_task(*task_message_args(task))


def _resend_note(settings: Settings) -> str:
    return f"the web process sends it within about {settings.task_resend_seconds + 60} s"


@tasks.command(
    name="retry",
    help=(
        "Queue failed or cancelled task TASK_ID again, or with --all every failed task (of one user with --user). "
        "A retry counts against its user's MAX_ACTIVE_TASKS as a new task does: with --all, a task over that cap "
        "is skipped and reported, and the others go on."
    ),
)
@click.argument("task_id", type=click.UUID, required=False)
@click.option("--all", "every_failed", is_flag=True, default=False, help="Retry every failed task instead of one.")
@click.option(
    "--user",
    "login",
    default=None,
    metavar="USERNAME_OR_EMAIL",
    help="With --all: only this user's failed tasks (username or email).",
)
def retry(task_id: UUID | None, every_failed: bool, login: str | None) -> None:
    if every_failed == (task_id is not None):
        raise click.UsageError("Give either a TASK_ID or --all.")
    if login is not None and not every_failed:
        raise click.UsageError("--user goes with --all.")
    if task_id is None:
        _retry_all(login)
        return

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> Task:
        async with _live_publisher(settings) as publisher:
            return await _retry_one(sessions, settings, task_id, publisher)

    task = _run_tasks(work)
    settings = get_settings()
    queued = f"Task {task.id} queued again (attempt {task.attempts})"
    if settings.embedded_workers:
        click.echo(f"{queued}; {_resend_note(settings)}.")
    elif _send(task, settings):
        click.echo(f"{queued}.")
    else:
        click.echo(f"{queued}; the broker is unreachable: the sweeper re-sends it.")


def _retry_all(login: str | None) -> None:
    """Retry every failed task (of one user), oldest first, each in a transaction of its own."""
    console = _console()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        async with sessions() as session:
            user_id = None if login is None else await _user_id(session, settings, login)
            task_ids = await failed_task_ids(session, user_id)
        if not task_ids:
            return "No failed tasks." if login is None else f"No failed tasks of {login}."
        queued = skipped = unsent = 0
        async with _live_publisher(settings) as publisher:
            with _Steps(console, "Retrying", len(task_ids)) as steps:
                for task_id in task_ids:
                    steps.advance(1)
                    try:
                        task = await _retry_one(sessions, settings, task_id, publisher)
                    except LimitReached as exc:
                        skipped += 1
                        steps.note(f"Task {task_id} skipped, over its owner's cap: {exc.detail}")
                        continue
                    except DomainError as exc:  # retried, or deleted, since it was listed
                        skipped += 1
                        steps.note(f"Task {task_id} skipped: {exc.detail}")
                        continue
                    queued += 1
                    if not settings.embedded_workers and not _send(task, settings):
                        unsent += 1
                    steps.trace(f"Task {task.id} queued again (attempt {task.attempts}).")
        summary = f"Queued {queued} failed {'task' if queued == 1 else 'tasks'} again; skipped {skipped}."
        if queued and settings.embedded_workers:
            summary += f" Embedded, {_resend_note(settings)}."
        if unsent:
            summary += f" The broker is unreachable: the sweeper re-sends {unsent} of them."
        return summary

    console.print(_run_tasks(work))


async def _announce_revoked(user_ids: set[UUID], settings: Settings) -> None:
    """Tell every web process in services mode that these users' credentials changed.

    Embedded, the web process's channels are out of this process's reach: a file under var/
    that it watches tells it instead.
    """
    if not user_ids:
        return
    if settings.embedded_workers:
        touch_changed_file(settings)
        return
    publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    try:
        await announce_revoked(publisher, user_ids)
    finally:
        await publisher.close()


@tasks.command(
    name="purge",
    help="Delete finished tasks, and their files, that ended more than N days ago: batch by batch, showing progress.",
)
@click.option(
    "--older-than-days",
    type=click.IntRange(min=0),
    default=None,
    help="Only tasks that finished more than this many days ago. Default: TASK_RETENTION_DAYS.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=PURGE_BATCH,
    show_default=True,
    help="Tasks deleted per transaction; each batch commits on its own, so a purge stopped midway keeps its work.",
)
def purge(older_than_days: int | None, batch_size: int) -> None:
    console = _console()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        if older_than_days is not None:
            settings = msgspec.structs.replace(settings, task_retention_days=older_than_days)
        keeper = TaskKeeper(sessions, _NoPublisher(), LocalArtifacts(settings.artifact_path), settings)
        cutoff = keeper.retention_cutoff()
        total = await keeper.count_purgeable(cutoff)
        deleted = 0
        with _Steps(console, "Deleting", total) as steps:
            async for count in keeper.purge_batches(cutoff, batch_size):
                deleted += count
                steps.advance(count)
                steps.trace(f"Deleted {count} ({deleted} of {total}).")
        noun = "task" if deleted == 1 else "tasks"
        return f"Deleted {deleted} finished {noun} older than {settings.task_retention_days} days."

    console.print(_run_tasks(work))


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


def _show(steps: _Steps, state: TaskState) -> None:
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
        with _Steps(console, state.status, None) as steps:
            _show(steps, state)
            while not state.finished and not follower.gone:
                await woken()
                for state in await follower.changes():
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


@tasks.command(
    name="watch",
    help=(
        "Follow task TASK_ID live until it ends: a line per change (and a progress bar on a terminal), "
        "then its final status. Exit code 0 when it succeeded, 1 when it failed or was cancelled, "
        "2 when there is no such task."
    ),
)
@click.argument("task_id", type=click.UUID)
def watch(task_id: UUID) -> None:
    console = _console()
    code = _run_tasks(lambda sessions, settings: _watch(sessions, settings, task_id, console))
    click.get_current_context().exit(code)


class OperatorCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(users)
        cli.add_command(tasks)
