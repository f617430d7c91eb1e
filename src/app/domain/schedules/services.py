"""Schedule rules for their owners (and operators): make, list, read, change, pause, resume, delete, show runs.

What a schedule starts is checked exactly as a submission is (app.domain.tasks.services.check_request):
a schedule that saves is a task that would be accepted. A user holds at most MAX_SCHEDULES_PER_USER;
the count and the insert run under the user's lock (the one their events take; on SQLite the
write lock), so concurrent creations cannot pass it together.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgspec
from sqlalchemy import Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.clock import utcnow
from app.domain.errors import InvalidInput, LimitReached, NotFound
from app.domain.notifications.events import EventLog
from app.domain.pagination import Page
from app.domain.schedules.models import Schedule, ScheduleRun
from app.domain.schedules.rules import cron_problem, describe, next_run, timezone_problem, too_frequent
from app.domain.schedules.schemas import ScheduleChange, ScheduleIn, ScheduleOut, ScheduleRunOut
from app.domain.tasks.schemas import TaskRequest
from app.domain.tasks.services import check_request
from app.domain.text import control_problem

MAX_NAME = 100


def schedule_out(row: Schedule) -> ScheduleOut:
    return ScheduleOut(
        id=row.id,
        name=row.name,
        kind=row.kind,
        params=row.params,
        title=row.title,
        cron=row.cron,
        cron_description=describe(row.cron),
        timezone=row.timezone,
        paused=row.paused,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_status=cast(Any, row.last_status),
        last_task_id=row.last_task_id,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def run_out(row: ScheduleRun) -> ScheduleRunOut:
    return ScheduleRunOut(
        scheduled_for=row.scheduled_for,
        status=cast(Any, row.status),
        task_id=row.task_id,
        reason=row.reason,
        created_at=row.created_at,
    )


def _name_problem(name: str) -> str | None:
    if not 1 <= len(name.strip()) <= MAX_NAME:
        return f"must be 1-{MAX_NAME} characters"
    return control_problem(name)


def check_schedule(
    settings: Settings, *, name: str, kind: str, params: dict[str, Any], title: str | None, cron: str, timezone: str
) -> dict[str, Any]:
    """Every field against its rule; InvalidInput naming each field that breaks one. Returns the stored params."""
    problems: dict[str, str] = {}
    if problem := _name_problem(name):
        problems["name"] = problem
    if problem := cron_problem(cron):
        problems["cron"] = problem
    if problem := timezone_problem(timezone):
        problems["timezone"] = problem
    if not problems and too_frequent(cron, timezone, settings.schedule_min_interval, utcnow()):
        seconds = int(settings.schedule_min_interval.total_seconds())
        problems["cron"] = f"runs more often than once every {seconds} s (SCHEDULE_MIN_INTERVAL_SECONDS)"
    params_out: dict[str, Any] = {}
    try:
        checked = check_request(TaskRequest(kind=kind, params=params, title=title), settings)
        params_out = dict(checked.params)
    except InvalidInput as exc:
        problems |= exc.errors
    if problems:
        raise InvalidInput(problems)
    return params_out


class ScheduleService:
    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    async def create(self, user_id: UUID, data: ScheduleIn) -> Schedule:
        """A new schedule, its next run computed from now (none while paused); LimitReached over the cap."""
        params = check_schedule(
            self.settings,
            name=data.name,
            kind=data.kind,
            params=data.params,
            title=data.title,
            cron=data.cron,
            timezone=data.timezone,
        )
        await EventLog(self.session).lock(user_id)  # the count and the insert go together (module docstring)
        count = int(await self.session.scalar(select(func.count()).where(Schedule.user_id == user_id)) or 0)
        if count >= self.settings.max_schedules_per_user:
            raise LimitReached(f"You have {count} schedules; the limit is {self.settings.max_schedules_per_user}.")
        now = utcnow()
        row = Schedule(
            user_id=user_id,
            name=data.name.strip(),
            kind=data.kind,
            params=params,
            title=data.title.strip() if data.title is not None else None,
            cron=" ".join(data.cron.split()),
            timezone=data.timezone,
            paused=data.paused,
            next_run_at=None if data.paused else next_run(data.cron, data.timezone, now),
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        return row

    def _owned(self, owner: UUID | None, schedule_id: UUID) -> Select[tuple[Schedule]]:
        query = select(Schedule).where(Schedule.id == schedule_id)
        return query if owner is None else query.where(Schedule.user_id == owner)

    async def get(self, owner: UUID | None, schedule_id: UUID, *, lock: bool = False) -> Schedule:
        """The schedule, if it is `owner`'s (any one's for an operator: None); NotFound otherwise."""
        query = self._owned(owner, schedule_id)
        row = await self.session.scalar(query.with_for_update() if lock else query)
        if row is None:
            raise NotFound("No such schedule.")
        return row

    async def page(self, owner: UUID | None, limit: int, offset: int) -> Page[ScheduleOut]:
        """Schedules (of `owner`, or everyone's), oldest first."""
        where = [] if owner is None else [Schedule.user_id == owner]
        total = int(await self.session.scalar(select(func.count()).select_from(Schedule).where(*where)) or 0)
        rows = await self.session.scalars(
            select(Schedule).where(*where).order_by(Schedule.created_at, Schedule.id).limit(limit).offset(offset)
        )
        return Page(items=[schedule_out(row) for row in rows], total=total, limit=limit, offset=offset)

    async def change(self, owner: UUID, schedule_id: UUID, change: ScheduleChange) -> Schedule:
        """Change the fields given; a new expression or time zone moves the next run (from now)."""
        row = await self.get(owner, schedule_id, lock=True)
        unset = msgspec.UNSET
        name = row.name if change.name is unset else change.name
        kind = row.kind if change.kind is unset else change.kind
        params = row.params if change.params is unset else change.params
        title = row.title if change.title is unset else change.title
        cron = row.cron if change.cron is unset else change.cron
        timezone = row.timezone if change.timezone is unset else change.timezone
        stored = check_schedule(
            self.settings, name=name, kind=kind, params=params, title=title, cron=cron, timezone=timezone
        )
        cron = " ".join(cron.split())
        when_changed = (cron, timezone) != (row.cron, row.timezone)
        row.name, row.kind, row.params = name.strip(), kind, stored
        row.title = title.strip() if title is not None else None
        row.cron, row.timezone = cron, timezone
        now = utcnow()
        if when_changed and not row.paused:
            row.next_run_at = next_run(cron, timezone, now)
        row.updated_at = now
        await self.session.flush()
        return row

    async def pause(self, owner: UUID | None, schedule_id: UUID) -> Schedule:
        """Stop firing until resumed (pausing a paused schedule changes nothing)."""
        row = await self.get(owner, schedule_id, lock=True)
        if not row.paused:
            row.paused, row.next_run_at, row.updated_at = True, None, utcnow()
            await self.session.flush()
        return row

    async def resume(self, owner: UUID | None, schedule_id: UUID) -> Schedule:
        """Fire again from now on: the next run is the expression's first time after now (no catching up)."""
        row = await self.get(owner, schedule_id, lock=True)
        if row.paused:
            now = utcnow()
            row.paused, row.next_run_at, row.updated_at = False, next_run(row.cron, row.timezone, now), now
            await self.session.flush()
        return row

    async def delete(self, owner: UUID, schedule_id: UUID) -> None:
        """Delete it with its runs; the tasks it started stay."""
        row = await self.get(owner, schedule_id, lock=True)
        await self.session.delete(row)
        await self.session.flush()

    async def runs(self, owner: UUID, schedule_id: UUID, limit: int, offset: int) -> Page[ScheduleRunOut]:
        """The schedule's runs, newest first."""
        await self.get(owner, schedule_id)
        where = ScheduleRun.schedule_id == schedule_id
        total = int(await self.session.scalar(select(func.count()).select_from(ScheduleRun).where(where)) or 0)
        rows = await self.session.scalars(
            select(ScheduleRun).where(where).order_by(ScheduleRun.scheduled_for.desc()).limit(limit).offset(offset)
        )
        return Page(items=[run_out(row) for row in rows], total=total, limit=limit, offset=offset)


async def purge_runs(session: AsyncSession, older_than: datetime) -> int:
    """Delete runs fired before `older_than` (a schedule's next run is always later: none can fire again)."""
    result = await session.execute(delete(ScheduleRun).where(ScheduleRun.created_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def runs_retention(settings: Settings) -> timedelta:
    """How long runs are kept: as long as the tasks they started."""
    return timedelta(days=settings.task_retention_days)
