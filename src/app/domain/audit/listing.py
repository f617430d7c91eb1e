"""Reading the audit log: filters, newest first, a page at a time with a keyset cursor; the same rules for every
door (the admin API and page, a user's own security history, `litestar audit list`).

As app.domain.tasks.listing does for tasks: what a caller typed becomes an AuditQuery
(`audit_query`; a refusal is InvalidQuery, a 400 at the API), read with one Core statement on
the read engine, rows straight into Structs. A page ends with a cursor holding the last row's
(at, id): the next page is the rows before it in the total order (at, id) descending, so rows
recorded meanwhile never make one show twice or be skipped. Cursors are made and read strictly
by app.domain.pagination.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, NamedTuple
from uuid import UUID

import msgspec
from sqlalchemy import ColumnElement, Integer, Select, String, and_, bindparam, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.audit.models import AuditEntry
from app.domain.audit.schemas import USER, AuditEntryOut, AuditPage
from app.domain.database import read
from app.domain.errors import InvalidQuery
from app.domain.pagination import decode_cursor, encode_cursor, like_pattern
from app.domain.text import control_problem

MAX_TEXT = 200
MAX_ACTIONS = 20
#: An action (`auth.login_failed`), or a prefix of actions (`auth.`, `auth.*`, `auth`: every `auth.` action).
_ACTION = re.compile(r"[a-z_]{1,32}(\.[a-z_]{1,32})*(\.\*?)?")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_TARGET_TYPE = re.compile(r"[a-z_]{1,32}")
_TABLE = AuditEntry.__table__


class Position(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Where a page ended: the last row's time and id."""

    at: Annotated[datetime, msgspec.Meta(tz=True)]
    id: UUID


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which rows a list shows; empty filters match every row."""

    #: Exactly these actions, or (`prefixes`) any action starting with one of these (each ends with a dot).
    actions: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    actor_id: UUID | None = None
    #: The actor's name as recorded (a username, `cli:<operator>`), any case.
    actor_name: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    #: At or after this moment (UTC).
    since: datetime | None = None
    #: Before this moment (UTC).
    until: datetime | None = None
    request_id: str | None = None
    #: Found, case-insensitively and literally, in the actor's or the target's name or the target's id.
    text: str | None = None
    #: Only what this user did, or what was done to their account (a user's own security history).
    involving: UUID | None = None
    after: Position | None = None


def _values(given: Iterable[str]) -> list[str]:
    """Repeated or comma-separated values, each once, in the order given."""
    found = (part.strip() for value in given for part in value.split(","))
    return list(dict.fromkeys(part for part in found if part))


def _moment(value: datetime | str | None) -> datetime | None:
    """An ISO 8601 date or date-time as a UTC moment (naive: UTC); ValueError for anything else."""
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


def _bad_text(value: str, limit: int = MAX_TEXT) -> bool:
    return len(value) > limit or control_problem(value) is not None


def audit_query(
    *,
    actions: Iterable[str] = (),
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    request_id: str | None = None,
    text: str | None = None,
    cursor: str | None = None,
    involving: UUID | None = None,
) -> AuditQuery:
    """An AuditQuery from what a caller typed (empty values are no filter); InvalidQuery names every field wrong.

    `actor` is a user id or an actor's name; an action ending with `.` or `.*` (or with no dot at
    all) is a prefix: `auth` and `auth.*` both mean every `auth.` action.
    """
    errors: dict[str, str] = {}
    exact: list[str] = []
    prefixes: list[str] = []
    action_list = _values(actions)
    if len(action_list) > MAX_ACTIONS or not all(_ACTION.fullmatch(a) and len(a) <= 64 for a in action_list):
        errors["action"] = (
            f"at most {MAX_ACTIONS} actions such as auth.login_failed, or prefixes such as auth. or auth.*"
        )
    for action in action_list:
        if action.endswith((".", ".*")) or "." not in action:
            prefixes.append(action.rstrip("*").rstrip(".") + ".")
        else:
            exact.append(action)
    actor_id, actor_name = None, None
    actor = (actor or "").strip() or None
    if actor is not None:
        try:
            actor_id = UUID(actor)
        except ValueError:
            if _bad_text(actor, 100):
                errors["actor"] = "a user id, or a name of at most 100 characters without control characters"
            actor_name = actor.lower()
    target_type = (target_type or "").strip() or None
    if target_type is not None and not _TARGET_TYPE.fullmatch(target_type):
        errors["target_type"] = "a kind of target such as user, token, session or task"
    target_id = (target_id or "").strip().lower() or None
    if target_id is not None and _bad_text(target_id, 64):
        errors["target_id"] = "an id of at most 64 characters"
    moments: dict[str, datetime | None] = {}
    for field, value in (("since", since), ("until", until)):
        try:
            moments[field] = _moment(value)
        except ValueError:
            errors[field] = "an ISO 8601 date-time, such as 2026-11-22T10:00:00Z (without an offset: UTC)"
    request_id = (request_id or "").strip() or None
    if request_id is not None and not _REQUEST_ID.fullmatch(request_id):
        errors["request_id"] = "a request id: 1-128 of A-Z a-z 0-9 . _ -"
    text = (text or "").strip() or None
    if text is not None and _bad_text(text):
        errors["q"] = f"at most {MAX_TEXT} characters, without control characters"
    position = None
    if cursor:
        try:
            position = decode_cursor(cursor, Position)
        except ValueError:
            errors["cursor"] = "is not a cursor this list gave (pass `next_cursor` as it is)"
    if errors:
        raise InvalidQuery(errors)
    return AuditQuery(
        actions=tuple(exact),
        prefixes=tuple(dict.fromkeys(prefixes)),
        actor_id=actor_id,
        actor_name=actor_name,
        target_type=target_type,
        target_id=target_id,
        since=moments["since"],
        until=moments["until"],
        request_id=request_id,
        text=text,
        involving=involving,
        after=position,
    )


class _Shape(NamedTuple):
    """What a statement depends on (bind parameters carry the rest): one cached statement per shape."""

    actions: bool
    prefixes: int
    actor_id: bool
    actor_name: bool
    target_type: bool
    target_id: bool
    since: bool
    until: bool
    request_id: bool
    text: bool
    involving: bool
    after: bool


def _shape(query: AuditQuery) -> _Shape:
    return _Shape(
        actions=bool(query.actions),
        prefixes=len(query.prefixes),
        actor_id=query.actor_id is not None,
        actor_name=query.actor_name is not None,
        target_type=query.target_type is not None,
        target_id=query.target_id is not None,
        since=query.since is not None,
        until=query.until is not None,
        request_id=query.request_id is not None,
        text=query.text is not None,
        involving=query.involving is not None,
        after=query.after is not None,
    )


COLUMNS = (
    _TABLE.c.id,
    _TABLE.c.at,
    _TABLE.c.action,
    _TABLE.c.actor_id,
    _TABLE.c.actor_name,
    _TABLE.c.target_type,
    _TABLE.c.target_id,
    _TABLE.c.target_name,
    _TABLE.c.request_id,
    _TABLE.c.ip,
    _TABLE.c.detail,
)


def _filters(shape: _Shape) -> list[ColumnElement[bool]]:
    c = _TABLE.c
    at_type = c.at.type
    where: list[ColumnElement[bool]] = []
    if shape.actions or shape.prefixes:
        matches: list[ColumnElement[bool]] = []
        if shape.actions:
            matches.append(c.action.in_(bindparam("actions", expanding=True)))
        matches += [c.action.like(bindparam(f"prefix_{i}", type_=String), escape="\\") for i in range(shape.prefixes)]
        where.append(or_(*matches))
    if shape.actor_id:
        where.append(c.actor_id == bindparam("actor_id", type_=c.actor_id.type))
    if shape.actor_name:
        where.append(func.lower(c.actor_name) == bindparam("actor_name", type_=String))
    if shape.target_type:
        where.append(c.target_type == bindparam("target_type", type_=String))
    if shape.target_id:
        where.append(c.target_id == bindparam("target_id", type_=String))
    if shape.since:
        where.append(c.at >= bindparam("since", type_=at_type))
    if shape.until:
        where.append(c.at < bindparam("until", type_=at_type))
    if shape.request_id:
        where.append(c.request_id == bindparam("request_id", type_=String))
    if shape.text:
        pattern = bindparam("pattern", type_=String)
        where.append(
            or_(
                c.actor_name.ilike(pattern, escape="\\"),
                c.target_name.ilike(pattern, escape="\\"),
                c.target_id.ilike(pattern, escape="\\"),
            )
        )
    if shape.involving:
        where.append(
            or_(
                c.actor_id == bindparam("involving", type_=c.actor_id.type),
                and_(c.target_type == USER, c.target_id == bindparam("involving_text", type_=String)),
            )
        )
    if shape.after:
        position = tuple_(bindparam("cursor_at", type_=at_type), bindparam("cursor_id", type_=c.id.type))
        where.append(tuple_(c.at, c.id) < position)
    return where


@lru_cache(maxsize=256)
def _statement(shape: _Shape) -> Select[tuple[Any, ...]]:
    return (
        select(*COLUMNS)
        .where(*_filters(shape))
        .order_by(_TABLE.c.at.desc(), _TABLE.c.id.desc())
        .limit(bindparam("limit", type_=Integer))
    )


def _out(row: Any) -> AuditEntryOut:
    return AuditEntryOut(
        id=row[0],
        at=row[1],
        action=row[2],
        actor_id=row[3],
        actor_name=row[4],
        target_type=row[5],
        target_id=row[6],
        target_name=row[7],
        request_id=row[8],
        ip=row[9],
        detail=dict(row[10] or {}),
    )


async def list_audit(engine: AsyncEngine, query: AuditQuery, *, limit: int) -> AuditPage:
    """A page of the log, newest first, in one read."""
    parameters: dict[str, Any] = {
        "actions": list(query.actions),
        "actor_id": query.actor_id,
        "actor_name": query.actor_name,
        "target_type": query.target_type,
        "target_id": query.target_id,
        "since": query.since,
        "until": query.until,
        "request_id": query.request_id,
        "pattern": like_pattern(query.text) if query.text is not None else None,
        "involving": query.involving,
        "involving_text": str(query.involving) if query.involving is not None else None,
        "cursor_at": query.after.at if query.after is not None else None,
        "cursor_id": query.after.id if query.after is not None else None,
        "limit": limit + 1,
    }
    for i, prefix in enumerate(query.prefixes):
        parameters[f"prefix_{i}"] = like_pattern(prefix, prefix=True)
    rows = await read(engine, _statement(_shape(query)), parameters)
    items = [_out(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(Position(at=items[-1].at, id=items[-1].id))
    return AuditPage(items=items, limit=limit, next_cursor=next_cursor)
