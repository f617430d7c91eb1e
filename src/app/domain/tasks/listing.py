"""Task lists: which tasks, in which order, and where a page ends; the same rules for every door.

The API (a user's own tasks, and every user's for superusers), the dashboard and `litestar
tasks list` turn what their caller typed into a TaskQuery with `task_query` (a refusal is
InvalidQuery: a 400 at the API) and read it with `list_tasks` or `list_all_tasks`: one Core
statement on the read engine (the filtered total, left-joined with one page), rows straight
into Structs, as app.domain.tasks.reads does for a single task.

A page ends with a cursor: the sort it was made for and the last row's (sort key, id). The
next page is the rows after that position in the same total order (ties broken by id), so
tasks created or deleted meanwhile never make a row show twice or be skipped, which an
offset cannot promise. Cursors are made and read strictly by app.domain.pagination.
`?offset=` keeps working; the two together are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal, NamedTuple, cast, get_args
from uuid import UUID

import msgspec
from sqlalchemy import ColumnElement, Integer, Select, String, and_, bindparam, func, or_, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import UnaryExpression

from app.domain.accounts.models import User
from app.domain.database import read
from app.domain.errors import InvalidQuery
from app.domain.pagination import CursorPage, decode_cursor, encode_cursor, like_pattern
from app.domain.tasks.models import STATUSES, Task
from app.domain.tasks.reads import COLUMNS, row_out
from app.domain.tasks.schemas import TaskOut
from app.domain.text import control_problem

#: The orders a list can have: newest (or most recently finished) first with a leading `-`.
#: Unfinished tasks come last in both `finished_at` orders. Ties are broken by id, in the same direction.
Sort = Literal["-created_at", "created_at", "-finished_at", "finished_at"]
SORTS: tuple[str, ...] = get_args(Sort)
DEFAULT_SORT: Sort = "-created_at"
#: Longest `q` (the text searched for in titles and descriptions).
MAX_TEXT = 200
#: Longest kind name (the column's size).
MAX_KIND = 64
#: Most distinct kinds one list may ask for.
MAX_KINDS = 20


class Position(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Where a page ended: the last row's sort key (null: an unfinished task in a `finished_at` order) and id."""

    sort: Sort
    key: Annotated[datetime, msgspec.Meta(tz=True)] | None
    id: UUID


def _decode_position(cursor: str) -> Position:
    """The position a task list's cursor holds; ValueError for anything else."""
    position = decode_cursor(cursor, Position)
    if position.key is None and position.sort.endswith("created_at"):
        raise ValueError("not a cursor")
    return position


class TaskQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which tasks a list shows and in which order; empty filters match every task."""

    statuses: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    #: Found, case-insensitively and literally (`%` and `_` are plain characters), in the title or description.
    text: str | None = None
    #: Created at or after this moment (UTC).
    created_after: datetime | None = None
    #: Created before this moment (UTC).
    created_before: datetime | None = None
    #: Only this owner's tasks (lists of every user's tasks).
    user_id: UUID | None = None
    #: Only the tasks of the user with this username (lists of every user's tasks).
    username: str | None = None
    sort: Sort = DEFAULT_SORT
    #: Continue after this position (from a cursor made for the same sort).
    after: Position | None = None


def _values(given: Iterable[str]) -> list[str]:
    """Repeated or comma-separated values, each once, in the order given."""
    found = (part.strip() for value in given for part in value.split(","))
    return list(dict.fromkeys(part for part in found if part))


def _moment(value: datetime | str | None) -> datetime | None:
    """An ISO 8601 date or date-time as a UTC moment (a naive one is UTC; a date is its midnight, UTC).

    ValueError for anything else, or a moment UTC cannot hold (the year 1 at +01:00).
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip()) if value.strip() else None
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range") from exc


def task_query(
    *,
    statuses: Iterable[str] = (),
    kinds: Iterable[str] = (),
    text: str | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    sort: str | None = None,
    cursor: str | None = None,
) -> TaskQuery:
    """A TaskQuery from what a caller typed (empty values are no filter); InvalidQuery names every field wrong."""
    errors: dict[str, str] = {}
    status_list = _values(statuses)
    if any(status not in STATUSES for status in status_list):
        errors["status"] = f"each one of {', '.join(STATUSES)}"
    kind_list = _values(kinds)
    if len(kind_list) > MAX_KINDS or any(len(kind) > MAX_KIND or control_problem(kind) for kind in kind_list):
        errors["kind"] = f"at most {MAX_KINDS} kinds, each at most {MAX_KIND} characters without control characters"
    text = (text or "").strip() or None
    if text is not None and (len(text) > MAX_TEXT or control_problem(text)):
        errors["q"] = f"at most {MAX_TEXT} characters, without control characters"
    moments: dict[str, datetime | None] = {}
    for field, value in (("created_after", created_after), ("created_before", created_before)):
        try:
            moments[field] = _moment(value)
        except ValueError:
            errors[field] = "an ISO 8601 date-time, such as 2026-11-22T10:00:00Z (without an offset: UTC)"
    sort = sort or DEFAULT_SORT
    if sort not in SORTS:
        errors["sort"] = f"one of {', '.join(SORTS)}"
    position = None
    if cursor:
        try:
            position = _decode_position(cursor)
        except ValueError:
            errors["cursor"] = "is not a cursor this list gave (pass `next_cursor` as it is)"
        else:
            if position.sort != sort:
                errors["cursor"] = f"was made for sort={position.sort}; pass the same sort with it"
    if errors:
        raise InvalidQuery(errors)
    return TaskQuery(
        statuses=tuple(status_list),
        kinds=tuple(kind_list),
        text=text,
        created_after=moments["created_after"],
        created_before=moments["created_before"],
        sort=cast(Sort, sort),  # one of SORTS, checked above
        after=position,
    )


def owned_by(query: TaskQuery, *, user_id: UUID | None = None, username: str | None = None) -> TaskQuery:
    """`query` narrowed to one owner's tasks, named by id or by username (any case), for lists of every user's tasks."""
    username = (username or "").strip().lower() or None
    if username is not None and (len(username) > MAX_TEXT or control_problem(username)):
        raise InvalidQuery({"username": f"at most {MAX_TEXT} characters, without control characters"})
    return msgspec.structs.replace(query, user_id=user_id, username=username)


class _Shape(NamedTuple):
    """What a statement depends on (its bind parameters carry the rest): one cached statement per shape."""

    everyone: bool
    user: bool
    statuses: bool
    kinds: bool
    text: bool
    after: bool
    before: bool
    username: bool
    sort: str
    #: "none", "key" (after a row with a sort key) or "null" (after an unfinished task, in a finished_at order).
    cursor: str


def _shape(query: TaskQuery, everyone: bool) -> _Shape:
    cursor = "none" if query.after is None else ("null" if query.after.key is None else "key")
    return _Shape(
        everyone=everyone,
        user=not everyone or query.user_id is not None,
        statuses=bool(query.statuses),
        kinds=bool(query.kinds),
        text=query.text is not None,
        after=query.created_after is not None,
        before=query.created_before is not None,
        username=everyone and query.username is not None,
        sort=query.sort,
        cursor=cursor,
    )


def _filters(shape: _Shape) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if shape.user:
        where.append(Task.user_id == bindparam("user_id"))
    if shape.statuses:
        where.append(Task.status.in_(bindparam("statuses", expanding=True)))
    if shape.kinds:
        where.append(Task.kind.in_(bindparam("kinds", expanding=True)))
    if shape.text:
        pattern = bindparam("pattern", type_=String)
        where.append(or_(Task.title.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\")))
    if shape.after:
        where.append(Task.created_at >= bindparam("created_after", type_=Task.__table__.c.created_at.type))
    if shape.before:
        where.append(Task.created_at < bindparam("created_before", type_=Task.__table__.c.created_at.type))
    if shape.username:
        where.append(User.username == bindparam("username"))
    return where


def _sort_column(sort: str) -> Any:
    return Task.__table__.c.created_at if sort.endswith("created_at") else Task.__table__.c.finished_at


def _beyond(shape: _Shape) -> ColumnElement[bool]:
    """The rows after the cursor's position, in the shape's order."""
    column, ids = _sort_column(shape.sort), Task.__table__.c.id
    descending = shape.sort.startswith("-")
    cursor_id = bindparam("cursor_id", type_=ids.type)
    if shape.cursor == "null":  # after an unfinished task: only unfinished ones are left, by id
        return and_(column.is_(None), ids < cursor_id if descending else ids > cursor_id)
    position = tuple_(bindparam("cursor_key", type_=column.type), cursor_id)
    beyond = tuple_(column, ids) < position if descending else tuple_(column, ids) > position
    return or_(beyond, column.is_(None)) if column.nullable else beyond


def _order(sort: str, column: Any, ids: Any) -> tuple[UnaryExpression[Any], UnaryExpression[Any]]:
    if sort.startswith("-"):
        first, second = column.desc(), ids.desc()
    else:
        first, second = column.asc(), ids.asc()
    return (first.nulls_last() if column.nullable else first), second


@lru_cache(maxsize=512)
def _statement(shape: _Shape) -> Select[tuple[Any, ...]]:
    """The filtered total and one page in one statement: the count's one row, left-joined with the page.

    Both sides are plain subqueries (no LATERAL), so SQLite runs it too; a page past the end is
    one row with the total and NULLs. The page holds `limit` rows and one more, which says
    whether there is a next page. A row: total, COLUMNS, cancel_requested, and for lists of
    every user's tasks the owner's user_id and username.
    """
    where = _filters(shape)
    source = Task.__table__.join(User.__table__, User.id == Task.user_id) if shape.everyone else Task.__table__
    counted = select(func.count().label("total")).select_from(source).where(*where).subquery("counted")
    owner = (Task.user_id.label("owner_id"), User.username) if shape.everyone else ()
    column = _sort_column(shape.sort)
    page = (
        select(*COLUMNS, Task.cancel_requested, *owner)
        .select_from(source)
        .where(*where, *([_beyond(shape)] if shape.cursor != "none" else []))
        .order_by(*_order(shape.sort, column, Task.__table__.c.id))
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    return (
        select(counted.c.total, *page.c)
        .select_from(counted.outerjoin(page, true()))
        .order_by(*_order(shape.sort, page.c[column.name], page.c.id))
    )


class TaskRows(NamedTuple):
    """One page's rows (total first in each) and what the envelope says besides the items."""

    rows: Sequence[Sequence[Any]]
    total: int
    next_cursor: str | None


async def _page_rows(
    engine: AsyncEngine, query: TaskQuery, *, everyone: bool, user_id: UUID | None, limit: int, offset: int
) -> TaskRows:
    if query.after is not None and offset:
        raise InvalidQuery({"offset": "must be 0 (or left out) with a cursor: a cursor says where the page starts"})
    shape = _shape(query, everyone)
    parameters: dict[str, Any] = {
        "user_id": user_id if user_id is not None else query.user_id,
        "statuses": list(query.statuses),
        "kinds": list(query.kinds),
        "pattern": like_pattern(query.text) if query.text is not None else None,
        "created_after": query.created_after,
        "created_before": query.created_before,
        "username": query.username,
        "cursor_key": query.after.key if query.after is not None else None,
        "cursor_id": query.after.id if query.after is not None else None,
        "limit": limit + 1,
        "offset": offset,
    }
    rows = await read(engine, _statement(shape), parameters)
    total = int(rows[0][0]) if rows else 0
    found = [row for row in rows if row[1] is not None]  # row[1]: the task's id
    next_cursor = None
    if len(found) > limit:
        found = found[:limit]
        last = row_out(found[-1][1 : 1 + len(COLUMNS)])
        key = last.created_at if query.sort.endswith("created_at") else last.finished_at
        next_cursor = encode_cursor(Position(sort=query.sort, key=key, id=last.id))
    return TaskRows(rows=found, total=total, next_cursor=next_cursor)


class TaskListing(NamedTuple):
    page: CursorPage[TaskOut]
    #: The running tasks of the page asked to stop (the dashboard says they are being cancelled).
    cancelling: set[UUID]


async def list_tasks(engine: AsyncEngine, user_id: UUID, query: TaskQuery, *, limit: int, offset: int) -> TaskListing:
    """A page of one user's tasks (query.user_id and query.username do not apply)."""
    found = await _page_rows(engine, query, everyone=False, user_id=user_id, limit=limit, offset=offset)
    end = 1 + len(COLUMNS)
    items = [row_out(row[1:end]) for row in found.rows]
    cancelling = {item.id for item, row in zip(items, found.rows, strict=True) if row[end]}
    page = CursorPage(items=items, total=found.total, limit=limit, offset=offset, next_cursor=found.next_cursor)
    return TaskListing(page=page, cancelling=cancelling)


class OwnedTaskOut(TaskOut, frozen=True, kw_only=True):
    """A task with its owner, in lists of every user's tasks."""

    user_id: UUID
    username: str


async def list_all_tasks(engine: AsyncEngine, query: TaskQuery, *, limit: int, offset: int) -> CursorPage[OwnedTaskOut]:
    """A page of every user's tasks, each with its owner (narrowed by query.user_id and query.username)."""
    found = await _page_rows(engine, query, everyone=True, user_id=None, limit=limit, offset=offset)
    end = 1 + len(COLUMNS)
    items = [
        OwnedTaskOut(**msgspec.structs.asdict(row_out(row[1:end])), user_id=row[end + 1], username=row[end + 2])
        for row in found.rows
    ]
    return CursorPage(items=items, total=found.total, limit=limit, offset=offset, next_cursor=found.next_cursor)
