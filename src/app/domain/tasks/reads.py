"""The owner's hot reads of tasks: a page (with its total) and one task, each in one round trip.

Core statements on the read engine (app.domain.database.read), rows turned straight
into the API's Structs: no ORM session, no transaction, no Task objects. What they
answer is exactly what `task_out` makes of a Task.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, Integer, Select, bindparam, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.database import read
from app.domain.errors import InvalidInput, NotFound
from app.domain.pagination import Page
from app.domain.tasks.models import STATUSES, Task
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
    )


@cache
def page_query(*, by_status: bool, by_kind: bool) -> Select[tuple[Any, ...]]:
    """The count and the page in one statement: the count's one row, left-joined with the page.

    Both sides are plain subqueries (no LATERAL), so SQLite runs it too; a page past the end
    is one row with the total and NULLs. Parameters: user_id, status, kind, limit, offset.
    """
    where: list[ColumnElement[bool]] = [Task.user_id == bindparam("user_id")]
    if by_status:
        where.append(Task.status == bindparam("status"))
    if by_kind:
        where.append(Task.kind == bindparam("kind"))
    counted = select(func.count().label("total")).select_from(Task).where(*where).subquery("counted")
    page = (
        select(*COLUMNS)
        .where(*where)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    return (
        select(counted.c.total, *page.c)
        .select_from(counted.outerjoin(page, true()))
        .order_by(page.c.created_at.desc(), page.c.id.desc())
    )


#: One task of one user. Parameters: task_id, user_id.
ONE = select(*COLUMNS).where(Task.id == bindparam("task_id"), Task.user_id == bindparam("user_id"))


async def list_page(
    engine: AsyncEngine, user_id: UUID, *, status: str | None, kind: str | None, limit: int, offset: int
) -> Page[TaskOut]:
    """The user's tasks, newest first, as the API's page."""
    if status is not None and status not in STATUSES:
        raise InvalidInput({"status": f"one of {', '.join(STATUSES)}"})
    statement = page_query(by_status=bool(status), by_kind=bool(kind))
    parameters = {"user_id": user_id, "status": status, "kind": kind, "limit": limit, "offset": offset}
    rows = await read(engine, statement, parameters)
    items = [row_out(row[1:]) for row in rows if row[1] is not None]  # row: total, then COLUMNS
    return Page(items=items, total=int(rows[0][0]) if rows else 0, limit=limit, offset=offset)


async def get_one(engine: AsyncEngine, user_id: UUID, task_id: UUID) -> TaskOut:
    """One of the user's tasks; NotFound for another user's or no task."""
    rows = await read(engine, ONE, {"task_id": task_id, "user_id": user_id})
    if not rows:
        raise NotFound("No such task.")
    return row_out(rows[0])
