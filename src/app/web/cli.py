"""Operator commands on the `litestar` CLI.

`litestar users create|promote|deactivate` and `litestar tasks list|retry|purge`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import click
import msgspec
import redis
from litestar.plugins import CLIPluginProtocol
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.accounts.errors import AccountError
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.revocation import announce_revoked, on_users_changed
from app.domain.accounts.schemas import Registration, UserFlags
from app.domain.accounts.services import AccountService
from app.domain.database import create_engine, session_factory
from app.domain.errors import DomainError
from app.domain.notifications.events import EventLog
from app.domain.tasks.artifacts import LocalArtifacts
from app.domain.tasks.maintenance import TaskKeeper
from app.domain.tasks.models import STATUSES, Task
from app.domain.tasks.services import TaskService, task_message_args
from app.domain.tasks.stats import list_tasks, task_owner
from app.web.admin_tasks import task_load
from app.web.http.credentials import touch_changed_file
from app.workers.actors.tasks import send_task
from app.workers.runtime import RedisPublisher

T = TypeVar("T")


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


@users.command(name="create", help="Create an active, verified user.")
@click.option("--email", required=True)
@click.option("--username", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--full-name", default=None)
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


@users.command(name="promote", help="Make a user an administrator (by username or email).")
@click.argument("login")
def promote(login: str) -> None:
    _set_flags(login, UserFlags(is_superuser=True), "now a superuser")


@users.command(name="deactivate", help="Deactivate a user: every session and token stops at once.")
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
    """For TaskKeeper in the CLI: purging publishes nothing."""

    async def publish(self, channel: str, data: bytes) -> None:
        return None


@click.group(name="tasks", help="Inspect and look after background tasks.")
def tasks() -> None:
    """Inspect and look after background tasks."""


def _progress(task: Task) -> str:
    if task.progress_total <= 0:
        return "-"
    return f"{task.progress_current}/{task.progress_total} ({100 * task.progress_current / task.progress_total:.0f}%)"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


@tasks.command(name="list", help="List tasks of every user (or one), newest first.")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--user", "login", default=None, metavar="USERNAME_OR_EMAIL")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def list_(status: str | None, login: str | None, limit: int) -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        async with sessions() as session:
            user_id = None
            if login is not None:
                user = await AccountService(session, Passwords(settings), settings).by_login(login)
                if user is None:
                    raise click.ClickException(f"No user with username or email {login!r}.")
                user_id = user.id
            found = await list_tasks(session, status=status, user_id=user_id, limit=limit)
        if not found:
            return "No tasks."
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
        return _table(["ID", "USER", "KIND", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED (UTC)"], rows)

    click.echo(_run_tasks(work))


@tasks.command(name="stats", help="Running and queued tasks per user, and each queue's depth.")
def stats() -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        from app.workers import broker

        async with sessions() as session:
            load = await task_load(session, broker, settings)
        lines = ["QUEUE         WAITING"]
        if settings.embedded_workers:
            lines.append("(embedded: the queues live in the web process's memory; see /admin)")
        elif load.queues is None:
            lines.append("(the broker does not answer)")
        else:
            lines += [f"{queue:<13} {waiting}" for queue, waiting in sorted(load.queues.items())]
        lines.append("")
        lines.append("  ".join(f"{status} {count}" for status, count in load.by_status.items()))
        lines.append(f"Each user runs at most {load.max_running_per_user} tasks at once.")
        lines.append("")
        if not load.users:
            lines.append("Nobody has a task queued or running.")
        else:
            rows = [[u.username, str(u.running), str(u.queued)] for u in load.users]
            lines.append(_table(["USER", "RUNNING", "QUEUED"], rows))
        return "\n".join(lines)

    click.echo(_run_tasks(work))


@tasks.command(name="retry", help="Queue a failed or cancelled task again.")
@click.argument("task_id", type=click.UUID)
def retry(task_id: UUID) -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> tuple[Task, str | None]:
        async with sessions() as session:
            owner = await task_owner(session, task_id)
            if owner is None:
                raise click.ClickException(f"No task with id {task_id}.")
            service = TaskService(session, settings)
            task, old_artifact = await service.retry(owner, task_id)
            await session.commit()
        await _publish(service.events, settings)
        if old_artifact:
            await LocalArtifacts(settings.artifact_path).delete(old_artifact)
        return task, old_artifact

    task, _ = _run_tasks(work)
    settings = get_settings()
    if settings.embedded_workers:
        # This process's broker is in memory and nobody reads it: the web process's sweeper sends
        # the task once it has been queued for TASK_RESEND_SECONDS.
        click.echo(
            f"Task {task.id} queued again (attempt {task.attempts}); the web process sends it "
            f"within about {settings.task_resend_seconds + 60} s."
        )
    elif send_task(*task_message_args(task)):
        click.echo(f"Task {task.id} queued again (attempt {task.attempts}).")
    else:
        click.echo(
            f"Task {task.id} queued again (attempt {task.attempts}); "
            "the broker is unreachable: the sweeper re-sends it."
        )


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


async def _publish(events: EventLog, settings: Settings) -> None:
    """Tell live readers in services mode. A publish that fails is only late: readers re-read the table."""
    if settings.embedded_workers:
        return  # the web process's channels are in its memory, out of this process's reach
    publisher = RedisPublisher(settings.redis_url, settings.redis_namespace)
    try:
        await events.publish(publisher)
    except (redis.RedisError, OSError) as exc:
        click.echo(f"Live readers were not told ({exc}); they catch up on their next heartbeat.", err=True)
    finally:
        await publisher.close()


@tasks.command(name="purge", help="Delete finished tasks and their artifacts older than N days.")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=0),
    default=None,
    help="Default: TASK_RETENTION_DAYS.",
)
def purge(older_than_days: int | None) -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        if older_than_days is not None:
            settings = msgspec.structs.replace(settings, task_retention_days=older_than_days)
        keeper = TaskKeeper(sessions, _NoPublisher(), LocalArtifacts(settings.artifact_path), settings)
        deleted = await keeper.purge()
        noun = "task" if deleted == 1 else "tasks"
        return f"Deleted {deleted} finished {noun} older than {settings.task_retention_days} days."

    click.echo(_run_tasks(work))


class OperatorCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(users)
        cli.add_command(tasks)
