"""The dashboard's list of the user's tasks: its filter form (a plain GET form), its pages and its context.

The form's query string drives the list, so it works without JavaScript, a filtered list
can be bookmarked, and the live refresh and the "Older" link keep the filters. What the
fields mean and refuse is app.domain.tasks.listing's, as in the API; only the form's own
shape is here: `task_kind` (on the dashboard, `kind` is the start form's), and `from` and
`to` as days, both included.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.errors import InvalidQuery
from app.domain.tasks.kinds import KINDS
from app.domain.tasks.listing import TaskQuery, list_tasks, task_query
from app.domain.tasks.models import STATUSES

PAGE_SIZE = 20
#: The form's fields, as the query string names them (`cursor` continues a list; it is not in the form).
FIELDS = ("status", "task_kind", "q", "from", "to")
#: The domain's field names for the form's (the errors of a refused query name those).
FORM_NAMES = {"kind": "task_kind", "created_after": "from", "created_before": "to"}


def filter_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The filter form's values from the query string, as typed (the form shows them again)."""
    return {name: request.query_params.get(name, "").strip() for name in FIELDS}


def _day_after(value: str) -> datetime | str:
    """The moment a day given as `to` ends (its next midnight, UTC); anything else as it is, for the domain to judge."""
    try:
        return datetime.combine(date.fromisoformat(value) + timedelta(days=1), time(), UTC)
    except (ValueError, OverflowError):
        return value


def _query(form: dict[str, str], cursor: str) -> TaskQuery:
    return task_query(
        statuses=[form["status"]],
        kinds=[form["task_kind"]],
        text=form["q"],
        created_after=form["from"],
        created_before=_day_after(form["to"]) if form["to"] else None,
        cursor=cursor,
    )


def _url(path: str, form: dict[str, str], **more: str | int) -> str:
    pairs = [(name, value) for name, value in {**form, **more}.items() if value not in ("", 0)]
    return path + ("?" + urlencode(pairs) if pairs else "")


async def task_list(
    reads: AsyncEngine, user_id: UUID, form: dict[str, str] | None = None, cursor: str = "", offset: int = 0
) -> dict[str, Any]:
    """The list's context: a page of the user's tasks as the form asks, or the form's errors and no tasks.

    The caller reads the user's newest event id first (the tasks read here are at least that new).
    """
    form = form or dict.fromkeys(FIELDS, "")
    context: dict[str, Any] = {
        "filters": form,
        "filter_errors": {},
        "statuses": STATUSES,
        "kinds": list(KINDS.values()),
        "tasks": [],
        "cancelling": set(),
        "total": 0,
        "filtered": any(form.values()),
        "list_url": _url("/dashboard/tasks", form, cursor=cursor, offset=offset),
        "page_url": _url("/dashboard", form, cursor=cursor, offset=offset),
        "newest_url": _url("/dashboard", form) if cursor or offset else None,
        "older_url": None,
    }
    try:
        listing = await list_tasks(reads, user_id, _query(form, cursor), limit=PAGE_SIZE, offset=offset)
    except InvalidQuery as exc:
        context["filter_errors"] = {FORM_NAMES.get(field, field): message for field, message in exc.errors.items()}
        return context
    page = listing.page
    context |= {"tasks": page.items, "cancelling": listing.cancelling, "total": page.total}
    if page.next_cursor:
        context["older_url"] = _url("/dashboard", form, cursor=page.next_cursor)
    return context
