"""The owner's hot read of one task, in one round trip, and the row shape every task read shares.

Pages of tasks are app.domain.tasks.listing's (the same columns, the same `row_out`).

Core statements on the read engine (app.domain.database.read), rows turned straight
into the API's Structs: no ORM session, no transaction, no Task objects. What they
answer is exactly what `task_out` makes of a Task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.database import read
from app.domain.errors import NotFound
from app.domain.tasks.models import Task
from app.domain.tasks.schemas import TaskOut, progress_of

#: The columns a TaskOut is made of.
COLUMNS = (
    Task.id,
    Task.kind,
    Task.title,
    Task.description,
    Task.status,
    Task.progress_current,
    Task.progress_total,
    Task.progress_message,
    Task.params,
    Task.result,
    Task.error,
    Task.attempts,
    Task.created_at,
    Task.started_at,
    Task.finished_at,
    Task.run_at,
)


def row_out(row: Sequence[Any]) -> TaskOut:
    """The TaskOut of a row holding COLUMNS, in their order (unpacked: faster than by name)."""
    (
        id_,
        kind,
        title,
        description,
        status,
        current,
        total,
        message,
        params,
        result,
        error,
        attempts,
        created_at,
        started_at,
        finished_at,
        run_at,
    ) = row
    return TaskOut(
        id=id_,
        kind=kind,
        title=title,
        description=description,
        status=status,
        progress=progress_of(status, current, total, message),
        params=params,
        result=result,
        error=error,
        attempts=attempts,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        run_at=run_at,
    )


#: One task of one user. Parameters: task_id, user_id.
ONE = select(*COLUMNS).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"))


async def get_one(engine: AsyncEngine, user_id: UUID, task_id: UUID) -> TaskOut:
    """One of the user's tasks; NotFound for another user's or no task."""
    rows = await read(engine, ONE, {"task_id": task_id, "user_id": user_id})
    if not rows:
        raise NotFound("No such task.")
    return row_out(rows[0])
