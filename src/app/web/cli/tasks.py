"""`litestar tasks`: list, stats, retry and purge (watch: watch.py)."""

from __future__ import annotations

from uuid import UUID

import click
import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings, get_settings
from app.domain.audit.admin import record_task_retry
from app.domain.audit.schemas import AuditContext
from app.domain.errors import DomainError, LimitReached, NotFound
from app.domain.notifications.events import EventPublisher
from app.domain.tasks.artifacts import LocalArtifacts
from app.domain.tasks.listing import DEFAULT_SORT, SORTS, OwnedTaskOut, list_all_tasks, owned_by, task_query
from app.domain.tasks.maintenance import BATCH as PURGE_BATCH
from app.domain.tasks.maintenance import TaskKeeper
from app.domain.tasks.models import STATUSES, Task
from app.domain.tasks.operations import failed_task_ids
from app.domain.tasks.schemas import Progress
from app.domain.tasks.services import TaskService, task_message_args
from app.domain.tasks.stats import task_owner
from app.web.api.admin_tasks import TaskLoadOut, task_load
from app.web.cli.output import Steps, console_for_output, table
from app.web.cli.running import NoPublisher, cli_context, live_publisher, run_in_engine, user_id_of
from app.workers.actors.tasks import send_task


@click.group(name="tasks", help="Inspect and look after background tasks.")
def tasks() -> None:
    """Inspect and look after background tasks."""


def _progress(progress: Progress) -> str:
    if progress.total <= 0:
        return "-"
    return f"{progress.current}/{progress.total} ({progress.percent:.0f}%)"


@tasks.command(
    name="list",
    help=(
        "List tasks of every user (or one), newest first. Filters work as the API's (GET /api/v1/admin/tasks): "
        "each option narrows the list, a repeated --status or --kind matches any of its values."
    ),
)
@click.option("--status", multiple=True, type=click.Choice(STATUSES), help="Only tasks in this status (repeatable).")
@click.option("--kind", multiple=True, metavar="KIND", help="Only tasks of this kind (repeatable).")
@click.option(
    "--search", metavar="TEXT", default=None, help="Only tasks whose title or description contains TEXT (any case)."
)
@click.option(
    "--created-after",
    metavar="WHEN",
    default=None,
    help="Only tasks created at or after WHEN (ISO 8601 date or date-time; without an offset: UTC).",
)
@click.option(
    "--created-before",
    metavar="WHEN",
    default=None,
    help="Only tasks created before WHEN (ISO 8601 date or date-time; without an offset: UTC).",
)
@click.option(
    "--user", "login", default=None, metavar="USERNAME_OR_EMAIL", help="Only this user's tasks (username or email)."
)
@click.option("--sort", type=click.Choice(SORTS), default=DEFAULT_SORT, show_default=True, help="The order.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many tasks."
)
def list_(
    status: tuple[str, ...],
    kind: tuple[str, ...],
    search: str | None,
    created_after: str | None,
    created_before: str | None,
    login: str | None,
    sort: str,
    limit: int,
) -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> list[OwnedTaskOut]:
        query = task_query(
            statuses=status,
            kinds=kind,
            text=search,
            created_after=created_after,
            created_before=created_before,
            sort=sort,
        )
        async with sessions() as session:
            user_id = None if login is None else await user_id_of(session, settings, login)
        engine: AsyncEngine = sessions.kw["bind"]
        return (await list_all_tasks(engine, owned_by(query, user_id=user_id), limit=limit, offset=0)).items

    found = run_in_engine(work)
    if not found:
        console.print("No tasks.")
        return
    rows = [
        [
            str(task.id),
            task.username,
            task.kind,
            task.status,
            str(task.attempts),
            _progress(task.progress),
            task.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for task in found
    ]
    columns = ["ID", "USER", "KIND", "STATUS", "ATTEMPTS", "PROGRESS", "CREATED (UTC)"]
    console.print(table(console, columns, rows, numeric={"ATTEMPTS"}))


@tasks.command(name="stats", help="Running and queued tasks per user, and each queue's depth.")
def stats() -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> TaskLoadOut:
        from app.workers import broker

        async with sessions() as session:
            return await task_load(session, broker, settings)

    load = run_in_engine(work)
    settings = get_settings()
    if settings.embedded_workers:
        console.print("QUEUE: embedded, the queues live in the web process's memory; see /admin.")
    elif load.queues is None:
        console.print("QUEUE: the broker does not answer.")
    else:
        queues = sorted(load.queues.items())
        console.print(table(console, ["QUEUE", "WAITING"], [[q, str(n)] for q, n in queues], numeric={"WAITING"}))
    console.print()
    console.print("  ".join(f"{status} {count}" for status, count in load.by_status.items()))
    console.print(f"Each user runs at most {load.max_running_per_user} tasks at once.")
    console.print()
    if not load.users:
        console.print("Nobody has a task queued or running.")
    else:
        rows = [[u.username, str(u.running), str(u.queued)] for u in load.users]
        console.print(table(console, ["USER", "RUNNING", "QUEUED"], rows, numeric={"RUNNING", "QUEUED"}))


async def _retry_one(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    task_id: UUID,
    publisher: EventPublisher,
    context: AuditContext,
) -> Task:
    """Queue task `task_id` again under its owner's rules (the same as the API's, caps included), committed."""
    async with sessions() as session:
        owner = await task_owner(session, task_id)
        if owner is None:
            raise NotFound(f"No task with id {task_id}.")
        service = TaskService(session, settings)
        task, old_artifact = await service.retry(owner, task_id)
        record_task_retry(session, context, task, owner)
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
        async with live_publisher(settings) as publisher:
            return await _retry_one(sessions, settings, task_id, publisher, cli_context())

    task = run_in_engine(work)
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
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        async with sessions() as session:
            user_id = None if login is None else await user_id_of(session, settings, login)
            task_ids = await failed_task_ids(session, user_id)
        if not task_ids:
            return "No failed tasks." if login is None else f"No failed tasks of {login}."
        queued = skipped = unsent = 0
        context = cli_context()  # one command: every row it records shares its id
        async with live_publisher(settings) as publisher:
            with Steps(console, "Retrying", len(task_ids)) as steps:
                for task_id in task_ids:
                    steps.advance(1)
                    try:
                        task = await _retry_one(sessions, settings, task_id, publisher, context)
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

    console.print(run_in_engine(work))


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
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
        if older_than_days is not None:
            settings = msgspec.structs.replace(settings, task_retention_days=older_than_days)
        keeper = TaskKeeper(sessions, NoPublisher(), LocalArtifacts(settings.artifact_path), settings)
        cutoff = keeper.retention_cutoff()
        total = await keeper.count_purgeable(cutoff)
        deleted = 0
        with Steps(console, "Deleting", total) as steps:
            async for count in keeper.purge_batches(cutoff, batch_size):
                deleted += count
                steps.advance(count)
                steps.trace(f"Deleted {count} ({deleted} of {total}).")
        noun = "task" if deleted == 1 else "tasks"
        return f"Deleted {deleted} finished {noun} older than {settings.task_retention_days} days."

    console.print(run_in_engine(work))
