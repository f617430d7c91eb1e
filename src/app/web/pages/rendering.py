"""What every page shares: the layout's context, flash messages, form input and field errors, htmx answers.

A page is a Jinja template extending `base.html`; a fragment is a template under
`partials/` that an htmx request swaps in. Every form posts plainly (POST, then a
redirect with a flash message, or the page again with its errors and a 4xx) and, with
htmx, gets the fragment instead (`HX-Request: true`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import UUID

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.flash import flash
from litestar.plugins.htmx import ClientRedirect
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.errors import AlreadyTaken
from app.domain.accounts.models import User
from app.domain.errors import DomainError, InvalidInput
from app.domain.notifications.events import EventLog
from app.domain.notifications.services import NotificationService

Errors = dict[str, str]


def current_user(connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    user: User | None = connection.scope.get("user")
    return user


def requires_signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Pages for signed-in users; the error handler sends a browser without a session to /login."""
    if current_user(connection) is None:
        raise NotAuthorizedException(detail="Sign in first.")


def requires_admin(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    requires_signed_in(connection, handler)
    user = current_user(connection)
    if user is None or not user.is_superuser:
        raise PermissionDeniedException(detail="Only administrators may open this page.")


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


async def layout(request: Request[Any, Any, Any], db_session: AsyncSession) -> dict[str, Any]:
    """The base layout's context: the user, the bell's count, and the event id the live stream starts after.

    The event id is read before the count, so an event between the two reads is sent again rather than
    missed. A page showing more live data reads its own `last_event_id` before that data (see `live_from`).
    """
    user = current_user(request)
    if user is None:
        return {"user": None}
    last_event_id = await live_from(db_session, user.id)
    return {
        "user": user,
        "last_event_id": last_event_id,
        "unread": await NotificationService(db_session).unread_count(user.id),
    }


async def live_from(db_session: AsyncSession, user_id: UUID) -> int:
    """The user's newest event id: read it before what a page shows, and the stream started after it misses nothing."""
    return await EventLog(db_session).last_id(user_id)


async def page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    template: str,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Template:
    return Template(
        template_name=template,
        context={**await layout(request, db_session), **(context or {})},
        status_code=status_code,
    )


def fragment(template: str, context: dict[str, Any] | None = None) -> Template:
    """An htmx answer: a 200, also for a form sent back with its errors (they are in the markup).

    A mistake in a form is expected, not an error of the page: browsers log every 4xx answer to a
    script's request as a console error. The plain form post gets the 4xx with the whole page; what
    is not a form's mistake (CSRF, not found, a limit) keeps its status and shows as a toast.
    """
    return Template(template_name=template, context=context or {}, status_code=200)


def go(request: Request[Any, Any, Any], path: str, message: str | None = None) -> Response[Any]:
    """After a form that worked: a flash message, then the browser opens `path` (a 303, or HX-Redirect)."""
    if message:
        flash(request, message, "success")
    if is_htmx(request):
        return ClientRedirect(path)
    return Redirect(path=path, status_code=303)


def say(request: Request[Any, Any, Any], message: str, category: str = "success") -> None:
    """A message for the next page the browser opens ("success" or "error")."""
    flash(request, message, category)


async def form_data(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The posted form as text fields (a repeated name keeps its last value); files are ignored."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """A local path to go to after signing in; anything else (another site, `//host`) is the default."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return default


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


def sentence(message: str) -> str:
    """A rule's message ("must be ...") as a sentence next to its field."""
    message = message.strip()
    return (message[:1].upper() + message[1:]).rstrip(".") + "."


def field_errors(exc: DomainError) -> tuple[Errors, str | None]:
    """(field -> message, form-wide message) of a refusal from the domain, the same ones the API reports."""
    if isinstance(exc, InvalidInput):
        return {field: sentence(message) for field, message in exc.errors.items()}, None
    if isinstance(exc, AlreadyTaken):
        fields = [f for f in ("email", "username") if f in (exc.field or "")]
        return {f: f"This {f} is already registered." for f in fields}, None if fields else exc.detail
    return {}, exc.detail
