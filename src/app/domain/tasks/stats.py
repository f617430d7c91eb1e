"""Read-only views of tasks for operators: the CLI's listing and the numbers behind /metrics.

Each function is one cheap query; none changes anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.errors import InvalidInput
from app.domain.tasks.models import ACTIVE, FINISHED, QUEUED, RUNNING, STATUSES, Task

DURATION_WINDOW = timedelta(hours=1)
#: At most this many durations are read per refresh (the newest), to keep the query cheap.
DURATION_SAMPLE = 10_000


@dataclass(frozen=True)
class Durations:
    """Run times (finished_at - started_at, seconds) of tasks that finished within a window."""

    count: int = 0
    total: float = 0.0
    quantiles: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskStats:
    by_status: dict[str, int]
    durations: Durations


def quantile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile of sorted values (nearest rank); 0.0 when there are none."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def count_by_status(session: AsyncSession) -> dict[str, int]:
    """How many tasks are in each status; every status is present, even at 0."""
    rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in rows.tuples():
        counts[status] = int(count)
    return counts


async def recent_durations(
    session: AsyncSession, window: timedelta = DURATION_WINDOW, quantiles: Sequence[float] = (0.5, 0.95)
) -> Durations:
    """Run times of the tasks that finished within `window` (those that started: not cancelled while queued)."""
    since = utcnow() - window
    rows = await session.execute(
        select(Task.started_at, Task.finished_at)
        .where(Task.status.in_(FINISHED), Task.finished_at >= since, Task.started_at.is_not(None))
        .order_by(Task.finished_at.desc())
        .limit(DURATION_SAMPLE)
    )
    seconds = sorted(
        max(0.0, (finished - started).total_seconds())
        for started, finished in rows.tuples()
        if started is not None and finished is not None
    )
    return Durations(count=len(seconds), total=sum(seconds), quantiles={q: quantile(seconds, q) for q in quantiles})


async def task_stats(session: AsyncSession) -> TaskStats:
    return TaskStats(by_status=await count_by_status(session), durations=await recent_durations(session))


@dataclass(frozen=True)
class UserLoad:
    """One user's unfinished tasks: how many run, how many wait."""

    user_id: UUID
    username: str
    running: int
    queued: int


async def load_by_user(session: AsyncSession, limit: int = 50) -> list[UserLoad]:
    """The users with unfinished tasks, most running first (then most queued): who holds the task threads."""
    running = func.sum(case((Task.status == RUNNING, 1), else_=0))
    queued = func.sum(case((Task.status == QUEUED, 1), else_=0))
    rows = await session.execute(
        select(Task.user_id, User.username, running, queued)
        .join(User, User.id == Task.user_id)
        .where(Task.status.in_(ACTIVE))
        .group_by(Task.user_id, User.username)
        .order_by(running.desc(), queued.desc(), User.username)
        .limit(limit)
    )
    return [UserLoad(user_id, username, int(r or 0), int(q or 0)) for user_id, username, r, q in rows.tuples()]


@dataclass(frozen=True)
class TaskRow:
    task: Task
    username: str


async def list_tasks(
    session: AsyncSession, *, status: str | None = None, user_id: UUID | None = None, limit: int = 50
) -> list[TaskRow]:
    """Tasks of every user (or one), newest first, with their owner's username."""
    if status is not None and status not in STATUSES:
        raise InvalidInput({"status": f"one of {', '.join(STATUSES)}"})
    query = select(Task, User.username).join(User, User.id == Task.user_id)
    if status is not None:
        query = query.where(Task.status == status)
    if user_id is not None:
        query = query.where(Task.user_id == user_id)
    rows = await session.execute(query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit))
    return [TaskRow(task=task, username=username) for task, username in rows.tuples()]


async def task_owner(session: AsyncSession, task_id: UUID) -> User | None:
    """The user who owns task `task_id`, or None when there is no such task."""
    owner: User | None = await session.scalar(
        select(User).join(Task, Task.user_id == User.id).where(Task.id == task_id)
    )
    return owner
