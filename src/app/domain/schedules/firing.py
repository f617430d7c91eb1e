"""Firing due schedules: exactly one task per due time, however many firing passes run at once.

A pass (`ScheduleFirer.fire_due`, run each minute by the `schedules.fire` actor, or by
`litestar schedules run-due`) takes one due schedule at a time, each in a transaction of its own:

1. it takes the schedule: `FOR UPDATE SKIP LOCKED` on Postgres, so a concurrent pass skips a
   schedule being fired instead of waiting for it and, once it commits, no longer sees it due
   (its `next_run_at` moved); on SQLite the write lock first (one writer at a time);
2. the due time it fires for is the latest time the expression names at or before now: after
   downtime, missed times are *coalesced* into one run for the latest of them, not a burst;
3. it inserts that time's `schedule_run` row, whose key (schedule_id, scheduled_for) refuses a
   second run of the same time (ON CONFLICT DO NOTHING: nothing more is done for it);
4. it starts the task through TaskService.create, the submission's own path (kind and params
   checked again, MAX_ACTIVE_TASKS, the `task.updated` event). Over the cap, or if the params no
   longer pass (a kind changed), the run is recorded as `skipped` with the reason, shown on the
   schedule; an inactive owner's run is skipped likewise;
5. it moves `next_run_at` to the first time after now, and commits all of it at once.

So a due time either fired (its run row, its task and the schedule's new next run committed
together) or did not at all (a crash before the commit leaves the schedule due, and the next
pass fires it). The caller sends each started task's turn after the commit; a lost turn is made
up by the tasks' sweep, as for any task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast
from uuid import UUID

from sqlalchemy import Table, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.errors import InvalidInput, LimitReached
from app.domain.notifications.events import EventPublisher
from app.domain.schedules.models import SKIPPED, STARTED, Schedule, ScheduleRun
from app.domain.schedules.rules import latest_run, next_run
from app.domain.tasks.fairness import due_by
from app.domain.tasks.schemas import TaskOut, TaskRequest
from app.domain.tasks.services import TaskService

#: Schedules one pass fires at most (each in its own transaction); the rest wait for the next pass.
BATCH = 500
_RUNS = cast(Table, ScheduleRun.__table__)
#: SQLite: a write that changes nothing, which takes the database's write lock until commit.
_SQLITE_WRITE_LOCK = text("UPDATE schedule SET id = id WHERE 0")


@dataclass(frozen=True)
class Fired:
    """One due time fired: the task it started (None when skipped) or why it was skipped."""

    schedule_id: UUID
    scheduled_for: datetime
    task: TaskOut | None
    skipped: str | None = None


@dataclass
class ScheduleFirer:
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    publisher: EventPublisher

    async def fire_due(self, now: datetime | None = None, limit: int = BATCH) -> list[Fired]:
        """Fire every schedule due at `now` (default: the clock's now), one transaction each; what was fired."""
        fired: list[Fired] = []
        while len(fired) < limit:
            one = await self.fire_one(now or utcnow())
            if one is None:
                break
            fired.append(one)
        return fired

    async def fire_one(self, now: datetime) -> Fired | None:
        """Fire the earliest due schedule nobody else is firing; None when there is none."""
        async with self.sessions() as session:
            async with session.begin():
                postgres = session.get_bind().dialect.name == "postgresql"
                if not postgres:
                    await session.execute(_SQLITE_WRITE_LOCK)
                schedule = await session.scalar(
                    select(Schedule)
                    .where(Schedule.paused.is_(False), Schedule.next_run_at <= due_by(now))
                    .order_by(Schedule.next_run_at, Schedule.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if schedule is None:
                    return None
                fired, service = await self._fire(session, schedule, now, postgres)
            if service is not None:
                await service.events.publish(self.publisher)
            return fired

    async def _fire(
        self, session: AsyncSession, schedule: Schedule, now: datetime, postgres: bool
    ) -> tuple[Fired, TaskService | None]:
        assert schedule.next_run_at is not None
        moment = due_by(now)
        scheduled_for = max(schedule.next_run_at, latest_run(schedule.cron, schedule.timezone, moment) or moment)
        schedule.next_run_at = next_run(schedule.cron, schedule.timezone, max(moment, scheduled_for))
        schedule.last_run_at = scheduled_for
        dialect_insert = postgres_insert if postgres else sqlite_insert
        claimed = await session.scalar(
            dialect_insert(_RUNS)
            .values(schedule_id=schedule.id, scheduled_for=scheduled_for, status=SKIPPED, created_at=utcnow())
            .on_conflict_do_nothing()
            .returning(_RUNS.c.schedule_id)
        )
        if claimed is None:  # this time fired already (another pass): only the next run moves
            await session.flush()
            return Fired(schedule.id, scheduled_for, None, "fired already"), None
        task, reason, service = await self._start(session, schedule, scheduled_for)
        status = STARTED if task else SKIPPED
        await session.execute(
            update(_RUNS)
            .where(_RUNS.c.schedule_id == schedule.id, _RUNS.c.scheduled_for == scheduled_for)
            .values(status=status, task_id=task.id if task else None, reason=reason)
        )
        schedule.last_status, schedule.last_error = status, reason
        schedule.last_task_id = task.id if task else None
        await session.flush()
        return Fired(schedule.id, scheduled_for, task, reason), service

    async def _start(
        self, session: AsyncSession, schedule: Schedule, scheduled_for: datetime
    ) -> tuple[TaskOut | None, str | None, TaskService | None]:
        """Start the schedule's task as its owner would submit it: (task, None, service) or (None, why not, None)."""
        owner = await session.get(User, schedule.user_id)
        if owner is None or not owner.is_active:
            return None, "Skipped: the account is deactivated.", None
        description = f"Started by schedule “{schedule.name}” for {scheduled_for:%Y-%m-%d %H:%M} UTC."
        request = TaskRequest(kind=schedule.kind, params=schedule.params, title=schedule.title, description=description)
        service = TaskService(session, self.settings)
        try:
            task, _ = await service.create(owner, request)
        except LimitReached as exc:
            return None, f"Skipped: {exc.detail}", None
        except InvalidInput as exc:
            return None, f"Skipped: the task is no longer valid ({exc.detail}).", None
        return task, None, service
