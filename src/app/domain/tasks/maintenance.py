"""Keeping tasks from getting lost, and old ones from piling up.

`hand_back` finds running tasks whose worker is gone: its heartbeat key expired (the
workers' heartbeat store lists the live ones) and the task has not been written for
WORKER_STALE_SECONDS, or, whatever the store says, not for TASK_STALE_SECONDS (a worker
alive but stuck). It queues them again for their next attempt, or fails them when their
round has none left. `overdue` finds tasks that may start but stayed queued for longer
than TASK_RESEND_SECONDS (their message was lost, or the broker was down when they were
created), and `startable` counts those that may start now: the caller sends a message for
each, as the scheduler's sweep does, and a worker does at once when the broker comes back.
`purge` deletes finished tasks older than TASK_RETENTION_DAYS, with their artifacts
(`purge_batches` does it batch by batch, for a caller that shows progress).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
from uuid import UUID

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import utcnow
from app.domain.notifications.events import EventLog, EventPublisher
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.fairness import due_by, limits, startable
from app.domain.tasks.models import FAILED, FINISHED, QUEUED, RUNNING, Task
from app.domain.tasks.schemas import task_out
from app.domain.tasks.services import record_task_event
from app.domain.webhooks.outbox import record_end

BATCH = 500
_TASKS = cast(Table, Task.__table__)


@dataclass(frozen=True)
class HandedBack:
    """What `hand_back` did: tasks queued again (to send), how many failed, how many may be next."""

    requeued: list[UUID]
    failed: int
    #: Running tasks whose worker is gone but which were written too recently to be sure: look again soon.
    suspects: int


class TaskKeeper:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        artifacts: ArtifactStore,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.artifacts = artifacts
        self.settings = settings

    async def hand_back(self, alive: Collection[str] | None) -> HandedBack:
        """Queue again (or fail) the running tasks whose worker is gone; `alive`: the live workers' ids, if known."""
        now = utcnow()
        stuck = Task.heartbeat_at < now - timedelta(seconds=self.settings.task_stale_seconds)
        orphaned = None
        if alive is not None:
            elsewhere = or_(Task.worker_id.is_(None), Task.worker_id.not_in(list(alive)))
            orphaned = and_(elsewhere, Task.heartbeat_at < now - timedelta(seconds=self.settings.worker_stale_seconds))
        dead_rule = stuck if orphaned is None else or_(stuck, orphaned)
        requeued: list[UUID] = []
        failed = 0
        async with self.sessions() as session, session.begin():
            events = EventLog(session)
            dead = await session.scalars(
                select(Task)
                .where(Task.status == RUNNING, dead_rule)
                .order_by(Task.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            for task in dead:
                if task.attempts - task.first_attempt + 1 >= self.settings.task_max_attempts:
                    task.status, task.finished_at = FAILED, now
                    task.error = "Its worker stopped responding, and no attempts are left."
                    failed += 1
                else:
                    task.status, task.attempts, task.enqueued_at = QUEUED, task.attempts + 1, now
                    task.error = "Its worker stopped responding; trying again."
                    requeued.append(task.id)
                task.heartbeat_at = None
                task.worker_id = None
                await session.flush()
                await record_task_event(events, task)
                if task.status == FAILED:  # its webhook's delivery: sent by the due-deliveries sweep
                    await record_end(session, task_out(task))
            suspects = 0
            if alive is not None:
                suspects = (
                    await session.scalar(
                        select(func.count())
                        .select_from(Task)
                        .where(
                            Task.status == RUNNING,
                            or_(Task.worker_id.is_(None), Task.worker_id.not_in(list(alive))),
                        )
                    )
                    or 0
                )
        await events.publish(self.publisher)
        return HandedBack(requeued=requeued, failed=failed, suspects=int(suspects))

    async def startable(self) -> int:
        """How many queued tasks may start now (at most BATCH): one message each gets them all going."""
        per_user, per_kind = limits(self.settings)
        candidate = _TASKS.alias()
        may_start = startable(candidate, per_user, per_kind)
        query = select(func.count()).select_from(
            select(candidate.c.id).select_from(may_start.source).where(*may_start.conditions).limit(BATCH).subquery()
        )
        async with self.sessions() as session:
            return int(await session.scalar(query, {"due_by": due_by(utcnow())}) or 0)

    async def overdue(self) -> list[tuple[UUID, int]]:
        """Tasks that may start but stayed queued for TASK_RESEND_SECONDS, as (id, attempt), marked as sent now."""
        now = utcnow()
        per_user, per_kind = limits(self.settings)
        candidate = _TASKS.alias()
        may_start = startable(candidate, per_user, per_kind)
        waiting = (
            select(candidate.c.id)
            .select_from(may_start.source)
            .where(
                *may_start.conditions,
                candidate.c.enqueued_at < now - timedelta(seconds=self.settings.task_resend_seconds),
            )
            .limit(BATCH)
        )
        # Its own transaction, holding no user's lock: a claim holds a queued row and then takes its user's lock.
        async with self.sessions() as session, session.begin():
            rows = await session.execute(
                update(_TASKS)
                .where(_TASKS.c.id.in_(waiting.scalar_subquery()), _TASKS.c.status == QUEUED)
                .values(enqueued_at=now)
                .returning(_TASKS.c.id, _TASKS.c.attempts),
                {"due_by": due_by(now)},
            )
            return sorted((row[0], row[1]) for row in rows)

    async def coming_due(self, within: timedelta) -> list[tuple[UUID, int, datetime]]:
        """Queued tasks asked to start later (`run_at`) whose time comes within `within`: (id, attempt, due at).

        The caller sends each a turn delayed until then. One indexed range read (status, enqueued_at).
        """
        now = utcnow()
        query = (
            select(_TASKS.c.id, _TASKS.c.attempts, _TASKS.c.run_at)
            .where(
                _TASKS.c.status == QUEUED,
                _TASKS.c.enqueued_at > now,
                _TASKS.c.enqueued_at <= now + within,
                _TASKS.c.run_at.is_not(None),
            )
            .order_by(_TASKS.c.enqueued_at)
            .limit(BATCH)
        )
        async with self.sessions() as session:
            return [(row[0], row[1], row[2]) for row in await session.execute(query)]

    async def purge(self) -> int:
        """Delete finished tasks older than TASK_RETENTION_DAYS, with their artifacts; returns how many."""
        deleted = 0
        async for count in self.purge_batches(self.retention_cutoff()):
            deleted += count
        return deleted

    def retention_cutoff(self) -> datetime:
        """Tasks that finished before this are past TASK_RETENTION_DAYS."""
        return utcnow() - timedelta(days=self.settings.task_retention_days)

    async def count_purgeable(self, cutoff: datetime) -> int:
        """How many finished tasks `purge_batches(cutoff)` would delete now (for a progress bar)."""
        query = select(func.count()).select_from(Task).where(Task.status.in_(FINISHED), Task.finished_at < cutoff)
        async with self.sessions() as session:
            return int(await session.scalar(query) or 0)

    async def purge_batches(self, cutoff: datetime, batch_size: int = BATCH) -> AsyncIterator[int]:
        """Delete finished tasks that finished before `cutoff`, `batch_size` per transaction; yields each batch's count.

        Each batch commits, then its artifacts are deleted, before the caller hears of it: a purge
        stopped midway leaves no row without its file's deletion having been tried, and no lock held.
        """
        while True:
            async with self.sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        select(Task.id, Task.artifact)
                        .where(Task.status.in_(FINISHED), Task.finished_at < cutoff)
                        .limit(batch_size)
                    )
                ).all()
                if not rows:
                    return
                await session.execute(delete(Task).where(Task.id.in_([row.id for row in rows])))
            for row in rows:
                if row.artifact:
                    await self.artifacts.delete(row.artifact)
            yield len(rows)
