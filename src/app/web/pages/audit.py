"""/admin/audit for superusers: the audit log with a filter form (a plain GET form: it works without JavaScript,
and htmx swaps in just the list), newest first, paged with "Older". The filters mean what the API's do
(app.domain.audit.listing); `from` and `to` are days, both included."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.domain.audit.listing import AuditQuery, audit_query, list_audit
from app.domain.audit.schemas import ACTIONS, AuditEntryOut
from app.domain.errors import InvalidQuery
from app.web.pages.rendering import fragment, is_htmx, page, requires_admin

PAGE_SIZE = 50
#: The form's fields, as the query string names them (`cursor` continues a list; it is not in the form).
FIELDS = ("action", "actor", "q", "request_id", "from", "to")
FORM_NAMES = {"since": "from", "until": "to"}
#: The groups of actions the form offers besides each action (`auth.` = every sign-in action).
GROUPS = tuple(dict.fromkeys(action.split(".")[0] + "." for action in ACTIONS))


def _day_after(value: str) -> datetime | str:
    try:
        return datetime.combine(date.fromisoformat(value) + timedelta(days=1), time(), UTC)
    except (ValueError, OverflowError):
        return value


def _query(form: dict[str, str], cursor: str) -> AuditQuery:
    return audit_query(
        actions=[form["action"]],
        actor=form["actor"],
        text=form["q"],
        request_id=form["request_id"],
        since=form["from"],
        until=_day_after(form["to"]) if form["to"] else None,
        cursor=cursor,
    )


def _url(form: dict[str, str], **more: str) -> str:
    pairs = [(name, value) for name, value in {**form, **more}.items() if value]
    return "/admin/audit" + ("?" + urlencode(pairs) if pairs else "")


def _detail(entry: AuditEntryOut) -> str:
    """The detail as `key: value` pairs, for a table cell."""
    parts = []
    for key, value in entry.detail.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else msgspec.json.encode(value).decode()
        parts.append(f"{key}: {shown.strip(chr(34))}")
    return "; ".join(parts)


async def audit_context(reads: AsyncEngine, form: dict[str, str], cursor: str) -> dict[str, Any]:
    """The page's context: a page of rows as the form asks, or the form's errors and no rows."""
    context: dict[str, Any] = {
        "filters": form,
        "filter_errors": {},
        "actions": ACTIONS,
        "groups": GROUPS,
        "entries": [],
        "filtered": any(form.values()),
        "newest_url": _url(form) if cursor else None,
        "older_url": None,
    }
    try:
        found = await list_audit(reads, _query(form, cursor), limit=PAGE_SIZE)
    except InvalidQuery as exc:
        context["filter_errors"] = {FORM_NAMES.get(field, field): message for field, message in exc.errors.items()}
        return context
    context["entries"] = [{"row": entry, "detail": _detail(entry)} for entry in found.items]
    if found.next_cursor:
        context["older_url"] = _url(form, cursor=found.next_cursor)
    return context


class AuditPages(Controller):
    path = "/admin/audit"
    include_in_schema = False
    guards = [requires_admin]

    @get()
    async def audit(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        reads: NamedDependency[AsyncEngine],
    ) -> Template:
        form = {name: request.query_params.get(name, "").strip() for name in FIELDS}
        context = await audit_context(reads, form, request.query_params.get("cursor", "").strip())
        status = 400 if context["filter_errors"] else 200
        if is_htmx(request) and request.headers.get("hx-target") == "audit-list":
            return fragment("partials/audit_list.html", context)
        return await page(request, db_session, "admin_audit.html", context, status)
