"""`litestar schedules`: list, pause, resume and run-due (fire what is due now, as the scheduler does)."""

from __future__ import annotations

from uuid import UUID

import click
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.pagination import Page
from app.domain.schedules.firing import Fired, ScheduleFirer
from app.domain.schedules.schemas import ScheduleOut
from app.domain.schedules.services import ScheduleService, schedule_out
from app.web.cli.output import console_for_output, table
from app.web.cli.running import live_publisher, run_in_engine, user_id_of
from app.workers.actors.schedules import send_fired


@click.group(name="schedules", help="Inspect users' schedules, pause or resume one, fire what is due.")
def schedules() -> None:
    """Inspect users' schedules, pause or resume one, fire what is due."""


def _when(schedule: ScheduleOut) -> str:
    return schedule.next_run_at.strftime("%Y-%m-%d %H:%M") if schedule.next_run_at else "-"


@schedules.command(name="list", help="List schedules of every user (or one), oldest first, with their next run.")
@click.option(
    "--user", "login", default=None, metavar="USERNAME_OR_EMAIL", help="Only this user's schedules (username or email)."
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most this many schedules."
)
def list_(login: str | None, limit: int) -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> Page[ScheduleOut]:
        async with sessions() as session:
            user_id = None if login is None else await user_id_of(session, settings, login)
            return await ScheduleService(session, settings).page(user_id, limit, 0)

    found = run_in_engine(work)
    if not found.items:
        console.print("No schedules.")
        return
    rows = [
        [
            str(s.id),
            s.name,
            s.kind,
            s.cron,
            s.timezone,
            "paused" if s.paused else "active",
            _when(s),
            s.last_status or "-",
        ]
        for s in found.items
    ]
    columns = ["ID", "NAME", "KIND", "CRON", "TIME ZONE", "STATE", "NEXT RUN (UTC)", "LAST RUN"]
    console.print(table(console, columns, rows))
    if found.total > len(found.items):
        console.print(f"{len(found.items)} of {found.total} shown (--limit).")


def _change(schedule_id: UUID, pause: bool) -> ScheduleOut:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> ScheduleOut:
        async with sessions() as session:
            service = ScheduleService(session, settings)
            row = await (service.pause(None, schedule_id) if pause else service.resume(None, schedule_id))
            out = schedule_out(row)
            await session.commit()
            return out

    return run_in_engine(work)


@schedules.command(name="pause", help="Pause schedule SCHEDULE_ID (any user's): it starts nothing until resumed.")
@click.argument("schedule_id", type=click.UUID)
def pause(schedule_id: UUID) -> None:
    schedule = _change(schedule_id, pause=True)
    click.echo(f"Schedule {schedule.id} ({schedule.name}) is paused.")


@schedules.command(
    name="resume",
    help="Resume schedule SCHEDULE_ID (any user's): it runs again from the first time its expression names after now.",
)
@click.argument("schedule_id", type=click.UUID)
def resume(schedule_id: UUID) -> None:
    schedule = _change(schedule_id, pause=False)
    click.echo(f"Schedule {schedule.id} ({schedule.name}) is active; next run {_when(schedule)} UTC.")


@schedules.command(
    name="run-due",
    help=(
        "Fire every schedule that is due now, as the scheduler does each minute (safe beside it: each due time "
        "starts one task however many passes run). Embedded, the web process starts the tasks within about "
        "TASK_RESEND_SECONDS + 60 s; with a broker, at once."
    ),
)
def run_due() -> None:
    async def work(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> tuple[list[Fired], int]:
        async with live_publisher(settings) as publisher:
            fired = await ScheduleFirer(sessions, settings, publisher).fire_due()
        sent = 0 if settings.embedded_workers else send_fired(fired)
        return fired, sent

    fired, _ = run_in_engine(work)
    started = [run for run in fired if run.task is not None]
    for run in fired:
        outcome = f"started task {run.task.id}" if run.task is not None else (run.skipped or "skipped")
        click.echo(f"Schedule {run.schedule_id} for {run.scheduled_for:%Y-%m-%d %H:%M} UTC: {outcome}")
    click.echo(f"Fired {len(fired)} due {'run' if len(fired) == 1 else 'runs'}: {len(started)} started.")
