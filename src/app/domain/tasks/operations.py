"""What operators do with tasks across owners: find every failed task, follow one task's changes.

`TaskFollower` follows one task as its owner's live stream would: from the task's row,
then through the `task.updated` events recorded with every change (read back from the
event table, so none is missed however late the caller looks), ending with the row once
it is finished: the final state always comes from the task itself.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.notifications.events import EventLog, EventRecord
from app.domain.tasks.models import FAILED, FINISHED, Task
from app.domain.tasks.schemas import Progress, progress_of
from app.domain.tasks.services import TASK_UPDATED

#: Events read per query while catching up.
EVENT_PAGE = 500


async def failed_task_ids(session: AsyncSession, user_id: UUID | None = None) -> list[UUID]:
    """Every failed task (of one user, if given), oldest first: a retry of them all favours the longest waiting."""
    query = select(Task.id).where(Task.status == FAILED)
    if user_id is not None:
        query = query.where(Task.user_id == user_id)
    return list(await session.scalars(query.order_by(Task.created_at, Task.id)))


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """What a watcher sees of a task; two equal states are one change, shown once."""

    status: str
    attempts: int
    progress: Progress
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def state_of(task: Task) -> TaskState:
    progress = progress_of(task.status, task.progress_current, task.progress_total, task.progress_message)
    return TaskState(status=task.status, attempts=task.attempts, progress=progress, error=task.error)


def _after_last(states: list[TaskState], shown: TaskState) -> list[TaskState]:
    """The states after the last one equal to `shown`; all of them when none is.

    A row read after the events it shows may have been shown before those events are read:
    they are not news.
    """
    for index in range(len(states) - 1, -1, -1):
        if states[index] == shown:
            return states[index + 1 :]
    return states


class TaskFollower:
    """One task's states in order, each once: `start`, then `changes` whenever something may have changed."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], task_id: UUID, owner_id: UUID) -> None:
        self.sessions = sessions
        self.task_id = task_id
        #: The owner's event channel carries the task's events: a caller may listen there for wake-ups.
        self.owner_id = owner_id
        self.gone = False
        self._cursor = 0
        self._shown: TaskState | None = None
        #: True while the last state shown was read from the row: the events behind it may still arrive.
        self._shown_from_row = False

    @classmethod
    async def find(cls, sessions: async_sessionmaker[AsyncSession], task_id: UUID) -> TaskFollower | None:
        """A follower of task `task_id`, or None when there is no such task."""
        async with sessions() as session:
            owner_id = await session.scalar(select(Task.user_id).where(Task.id == task_id))
        return None if owner_id is None else cls(sessions, task_id, owner_id)

    async def start(self) -> TaskState | None:
        """The task's state now (None when it was deleted meanwhile); later changes come from `changes`."""
        async with self.sessions() as session:
            # The cursor first: every event after it is read later, even one the row below already shows.
            self._cursor = await EventLog(session).last_id(self.owner_id)
            task = await session.scalar(select(Task).where(Task.id == self.task_id))
        if task is None:
            self.gone = True
            return None
        self._shown, self._shown_from_row = state_of(task), True
        return self._shown

    async def changes(self) -> list[TaskState]:
        """The states since the last call, oldest first; the last one is the row's when the task has finished.

        Sets `gone` when the task no longer exists.
        """
        async with self.sessions() as session:
            # The row first, then the events: every event of a write that the row shows was committed with it,
            # so it is read too. The other way round, a progress write and the end committing between the two
            # reads were both missed by the events and the row showed the end: the last progress never showed.
            task = await session.scalar(select(Task).where(Task.id == self.task_id))
            events = await self._events_since(EventLog(session))
        states = [msgspec.convert(event.data, TaskState) for event in events if self._is_mine(event)]
        if self._shown is not None and self._shown_from_row:
            states = _after_last(states, self._shown)
        if states:
            self._shown_from_row = False
        if task is None:
            self.gone = True
        elif task.status in FINISHED or not states:
            # The row is the final word on an ended task; without events (none recorded), it is the only one.
            row_state = state_of(task)
            if (states[-1] if states else self._shown) != row_state:
                states.append(row_state)
                self._shown_from_row = True
        news = [state for previous, state in zip([self._shown, *states], states, strict=False) if state != previous]
        if states:
            self._shown = states[-1]
        return news

    def _is_mine(self, event: EventRecord) -> bool:
        return event.type == TASK_UPDATED and event.data.get("id") == str(self.task_id)

    async def _events_since(self, log: EventLog) -> list[EventRecord]:
        """Every event the owner may see after the cursor (which moves past them)."""
        events: list[EventRecord] = []
        while True:
            page = await log.after(self._cursor, user_id=self.owner_id, limit=EVENT_PAGE)
            events.extend(page)
            if page:
                self._cursor = page[-1].id
            if len(page) < EVENT_PAGE:
                return events
