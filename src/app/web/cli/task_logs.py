"""`litestar tasks logs ID`: a task's output lines; `tasks watch` prints them as they come too."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import click
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.tasks.logs import TaskLogLine, lines_after
from app.domain.tasks.models import Task
from app.web.cli.output import console_for_output
from app.web.cli.running import run_in_engine

#: `tasks logs` exit codes (as `tasks watch`'s for an unknown task).
LOGS_SHOWN, LOGS_UNKNOWN = 0, 2


def line_text(line: TaskLogLine) -> str:
    """One output line as the CLI prints it: `#seq time attempt N LEVEL message` (a line starting with `#`)."""
    return (
        f"#{line.seq} {line.created_at:%Y-%m-%d %H:%M:%S} attempt {line.attempt} {line.level.upper():<7} {line.message}"
    )


async def print_lines_after(
    sessions: async_sessionmaker[AsyncSession], task_id: UUID, after: int, say: Callable[[str], None]
) -> int:
    """Print every line of the task after `after`, oldest first; returns the last seq printed (or `after`)."""
    while True:
        async with sessions() as session:
            lines = await lines_after(session, task_id, after)
        for line in lines:
            say(line_text(line))
        if not lines:
            return after
        after = lines[-1].seq


async def _logs(sessions: async_sessionmaker[AsyncSession], task_id: UUID, after: int, console: Console) -> int:
    async with sessions() as session:
        known = await session.scalar(select(Task.id).where(Task.id == task_id))
    if known is None:
        click.echo(f"No task with id {task_id}.", err=True)
        return LOGS_UNKNOWN
    # Lines are plain text, not rich markup; soft wrapping keeps a long line one line in a pipe.
    last = await print_lines_after(sessions, task_id, after, lambda text: console.print(text, soft_wrap=True))
    if last == after:
        click.echo("No output lines." if after == 0 else f"No output lines after #{after}.", err=True)
    return LOGS_SHOWN


@click.command(
    name="logs",
    help=(
        "Print the output lines of task TASK_ID, oldest first: `#seq time attempt N LEVEL message`, one a line. "
        "`tasks watch` prints new ones as they come. Exit code 2 when there is no such task."
    ),
)
@click.argument("task_id", type=click.UUID)
@click.option(
    "--after", type=click.IntRange(min=0), default=0, show_default=True, help="Only lines after this line number."
)
def logs(task_id: UUID, after: int) -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], _settings: Settings) -> int:
        return await _logs(sessions, task_id, after, console)

    click.get_current_context().exit(run_in_engine(work))
