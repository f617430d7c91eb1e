"""Keeping tasks from getting lost, and old ones from piling up.

`sweep` finds tasks queued for longer than TASK_RESEND_SECONDS (their message was lost,
or the broker was down when they were created) and returns them to be sent again; and
running tasks whose heartbeat is older than TASK_STALE_SECONDS (their worker died),
which it queues again for their next attempt, or fails when none is left. `purge`
deletes finished tasks older than TASK_RETENTION_DAYS, with their artifacts.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.clock import utcnow
from app.domain.notifications.events import EventLog, EventPublisher
from app.domain.tasks.artifacts import ArtifactStore
from app.domain.tasks.models import FAILED, FINISHED, QUEUED, RUNNING, Task
from app.domain.tasks.services import record_task_event

BATCH = 500


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

    async def sweep(self) -> tuple[list[tuple[UUID, int]], int]:
        """(tasks to send again as (id, attempt), how many running tasks were handed back)."""
        now = utcnow()
        stale = now - timedelta(seconds=self.settings.task_stale_seconds)
        async with self.sessions() as session, session.begin():
            events = EventLog(session)
            dead = await session.scalars(
                select(Task).where(Task.status == RUNNING, Task.heartbeat_at < stale).limit(BATCH).with_for_update()
            )
            handed_back = 0
            requeued: list[tuple[UUID, int]] = []
            for task in dead:
                handed_back += 1
                if task.attempts >= self.settings.task_max_attempts:
                    task.status, task.finished_at = FAILED, now
                    task.error = "Its worker stopped responding, and no attempts are left."
                else:
                    task.status, task.attempts, task.enqueued_at = QUEUED, task.attempts + 1, now
                    task.error = "Its worker stopped responding; trying again."
                    task.heartbeat_at = None
                    requeued.append((task.id, task.attempts))
                await session.flush()
                await record_task_event(events, task)
            overdue = now - timedelta(seconds=self.settings.task_resend_seconds)
            resend = list(
                (
                    await session.execute(
                        update(Task)
                        .where(Task.status == QUEUED, Task.enqueued_at < overdue)
                        .values(enqueued_at=now)
                        .returning(Task.id, Task.attempts)
                    )
                ).tuples()
            )
        await events.publish(self.publisher)
        # Handed-back tasks are sent now; a later sweep sends them again if that send is lost.
        return sorted(set(resend) | set(requeued)), handed_back

    async def purge(self) -> int:
        cutoff = utcnow() - timedelta(days=self.settings.task_retention_days)
        deleted = 0
        while True:
            async with self.sessions() as session, session.begin():
                rows = (
                    await session.execute(
                        select(Task.id, Task.artifact)
                        .where(Task.status.in_(FINISHED), Task.finished_at < cutoff)
                        .limit(BATCH)
                    )
                ).all()
                if not rows:
                    return deleted
                await session.execute(delete(Task).where(Task.id.in_([row.id for row in rows])))
            for row in rows:
                if row.artifact:
                    await self.artifacts.delete(row.artifact)
            deleted += len(rows)
