"""Errors: problem details (RFC 9457) under /api, HTML error pages elsewhere.

A page that needs a signed-in user sends a browser without one to /login (a 303, or
HX-Redirect for htmx); any other error of a page is an HTML page, or for an htmx
request a toast swapped into `#toasts`.

Every problem has `type`, `title`, `status` and `detail`; validation problems add
`errors: [{field, message}]`. Unexpected exceptions become a 500 whose detail says
nothing about internals (the log has the traceback and the request id).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import structlog
from asyncpg.exceptions import AdminShutdownError, CannotConnectNowError, CrashShutdownError, PostgresConnectionError
from litestar import MediaType, Request, Response
from litestar.exceptions import ClientException, HTTPException, TooManyRequestsException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError

from app.domain.accounts.errors import AlreadyTaken, InvalidCredentials, InvalidToken
from app.domain.errors import Conflict, DomainError, InvalidInput, InvalidQuery, LimitReached, NotFound

E = TypeVar("E", bound=Exception)

log = structlog.get_logger(__name__)
API_PREFIX = "/api"


class Conflicting(ClientException):
    """For the API document: the request does not fit the resource's state."""

    status_code = HTTP_409_CONFLICT
    detail = "The request conflicts with the current state of the resource."


class BreaksARule(ClientException):
    """For the API document: a field breaks a rule; `errors` names each one."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY
    detail = "A field breaks a rule; `errors` names each one."


class TooMany(TooManyRequestsException):
    """For the API document: a limit is reached; Retry-After says when to try again."""

    detail = "A limit is reached; try again after Retry-After seconds."


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _field_errors(extra: Any) -> list[dict[str, str]]:
    """Litestar's validation extras (`[{message, key, source}]`) as `[{field, message}]`."""
    if not isinstance(extra, list):
        return []
    errors = []
    for item in extra:
        if isinstance(item, dict):
            field = item.get("key") or item.get("source") or "body"
            errors.append({"field": str(field), "message": str(item.get("message", "is invalid"))})
    return errors


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemDetailsException:
    extra: dict[str, Any] = {"errors": errors} if errors else {}
    return ProblemDetailsException(
        status_code=status,
        title=title or _title(status),
        detail=detail,
        type_=type_,
        extra=extra or None,
        headers=headers,
    )


def from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    if isinstance(exc, ProblemDetailsException):
        return exc
    status = exc.status_code
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc.extra)
        return problem(status, exc.detail or "The request is not valid.", title="Invalid request", errors=errors)
    detail = exc.detail if exc.detail and exc.detail != _title(status) else _title(status)
    return problem(status, detail, headers=exc.headers)


def from_conflict(exc: SQLIntegrityError) -> ProblemDetailsException:
    """A constraint the database enforces (a unique key taken by a concurrent request): the request's fault."""
    log.warning("request.integrity_error", error=str(getattr(exc, "orig", None) or exc))
    return problem(409, "The request conflicts with the current state of the resource.")


def from_domain_error(exc: DomainError) -> ProblemDetailsException:
    """The domain's refusals: the class says the status, the exception says the detail."""
    if isinstance(exc, InvalidQuery):
        errors = [{"field": field, "message": message} for field, message in exc.errors.items()]
        return problem(400, "The request is not valid: " + exc.detail, errors=errors)
    if isinstance(exc, InvalidInput):
        errors = [{"field": field, "message": message} for field, message in exc.errors.items()]
        return problem(422, "The request is not valid: " + exc.detail, title="Invalid request", errors=errors)
    if isinstance(exc, AlreadyTaken):
        return problem(409, exc.detail, errors=[{"field": exc.field or "", "message": "is already registered"}])
    if isinstance(exc, Conflict):
        return problem(409, exc.detail)
    if isinstance(exc, NotFound):
        return problem(404, exc.detail)
    if isinstance(exc, LimitReached):
        return problem(429, exc.detail, headers={"Retry-After": "60"})
    if isinstance(exc, InvalidCredentials):
        return problem(401, exc.detail, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, InvalidToken):
        return problem(400, exc.detail, errors=[{"field": "token", "message": "is invalid, expired or used"}])
    return problem(400, exc.detail)


#: What a database that is restarting, failing over or out of reach raises (asyncpg, or the socket below it).
DATABASE_DOWN = (
    ConnectionError,
    PostgresConnectionError,
    CannotConnectNowError,
    AdminShutdownError,
    CrashShutdownError,
)
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc`, or what it was raised from, says the database could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DATABASE_DOWN) or (isinstance(current, DBAPIError) and current.connection_invalidated):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def database_down() -> ProblemDetailsException:
    """The 503 (with Retry-After) of a request that could not reach the database: nothing was written."""
    return problem(
        503,
        "The database is not answering; try again in a few seconds.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def from_unexpected(exc: Exception) -> ProblemDetailsException:
    """A 500 for a bug; a 503 with Retry-After while the database is out of reach (not the request's fault)."""
    if database_unavailable(exc):
        log.warning("request.database_unavailable", error=str(exc))
        return database_down()
    log.error("request.unhandled_exception", exc_info=exc)
    return problem(500, "An unexpected error occurred; it has been logged.")


def _is_api(request: Request[Any, Any, Any]) -> bool:
    return request.url.path.startswith(API_PREFIX)


#: Paths for programs, not people: they answer problem JSON unless the client asks for HTML.
MACHINE_PREFIXES = (API_PREFIX, "/health", "/metrics", "/static", "/schema")
PAGE_HEADINGS = {403: "Forbidden", 404: "Page not found"}


def _wants_page(request: Request[Any, Any, Any]) -> bool:
    if _is_api(request):
        return False
    if request.url.path.startswith(MACHINE_PREFIXES):
        return "text/html" in request.headers.get("accept", "")
    return True


def _heading(status: int) -> str:
    return PAGE_HEADINGS.get(status) or ("Something went wrong" if status >= 500 else _title(status))


def _to_sign_in(request: Request[Any, Any, Any], htmx: bool) -> Response[Any]:
    """Sign in first, then back to the page: the one asked for, or for htmx the one the browser shows."""
    page = urlsplit(request.headers.get("hx-current-url", "")).path if htmx else request.url.path
    if htmx or request.method == "GET":
        target = "/login?next=" + quote(page, safe="/") if page.startswith("/") else "/login"
    else:
        target = "/login"
    if htmx:
        return Response(content="", headers={"HX-Redirect": target})
    return Redirect(path=target, status_code=303)


def render_problem(request: Request[Any, Any, Any], exc: ProblemDetailsException) -> Response[Any]:
    """Problem JSON under /api; for pages, an HTML error page (htmx: a toast), and sign-in for a 401."""
    if not _wants_page(request):
        response = exc.to_response(request)
        response.headers.update(exc.headers or {})
        return response
    status = exc.status_code
    htmx = request.headers.get("hx-request") == "true"
    if status == 401:
        return _to_sign_in(request, htmx)
    context = {
        "status": status,
        "title": exc.title or _title(status),
        "heading": _heading(status),
        "detail": exc.detail,
        "user": request.scope.get("user"),
    }
    if htmx:  # say so in a toast, whatever element asked (htmx-config lets htmx swap error answers)
        headers = {**(exc.headers or {}), "HX-Retarget": "#toasts", "HX-Reswap": "beforeend"}
        return Template(
            template_name="partials/error_toast.html",
            context=context,
            status_code=status,
            media_type=MediaType.HTML,
            headers=headers,
        )
    return Template(
        template_name="error.html",
        context=context,
        status_code=status,
        media_type=MediaType.HTML,
        headers=exc.headers,
    )


def _handler(
    convert: Callable[[E], ProblemDetailsException],
) -> Callable[[Request[Any, Any, Any], E], Response[Any]]:
    def handle(request: Request[Any, Any, Any], exc: E) -> Response[Any]:
        return render_problem(request, convert(exc))

    return handle


def problem_details_config() -> ProblemDetailsConfig:
    """For the ProblemDetailsPlugin: how a raised ProblemDetailsException is rendered."""
    return ProblemDetailsConfig(exception_handler=render_problem)


def exception_handlers() -> ExceptionHandlersMap:
    """Every other exception, converted to a problem and rendered the same way.

    Database errors are mapped once, here: a unique or foreign key the database enforces
    (SQLAlchemy's IntegrityError) is a 409; "not found" is the domain's NotFound, a 404.
    Nothing uses advanced-alchemy's repositories (hot paths are SQLAlchemy Core, the rest
    the ORM session), so its NotFoundError and DuplicateKeyError are never raised and have
    no handler.
    """
    return {
        HTTPException: _handler(from_http_exception),
        SQLIntegrityError: _handler(from_conflict),
        DomainError: _handler(from_domain_error),
        Exception: _handler(from_unexpected),
    }
