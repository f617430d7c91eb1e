"""The audit log over the API: every row for administrators (GET /api/v1/admin/audit), and a user's own security
history (GET /api/v1/users/me/audit). What the filters mean, and refuse, is app.domain.audit.listing's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, ValidationException
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.accounts.models import User
from app.domain.audit.listing import MAX_TEXT, AuditQuery, audit_query, list_audit
from app.domain.audit.schemas import AuditPage
from app.domain.pagination import DEFAULT_LIMIT, MAX_CURSOR, MAX_LIMIT
from app.web.http.auth import requires_superuser, requires_user

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]

SINCE_HELP = "Only rows recorded at or after this moment (ISO 8601; without an offset: UTC)."
UNTIL_HELP = "Only rows recorded before this moment (ISO 8601; without an offset: UTC)."
CURSOR_HELP = "Continue after the page that gave this `next_cursor`, with the same filters."
ACTION_HELP = (
    "Only these actions: repeat it or separate them with commas; a prefix ending in `.` or `.*` (or a bare "
    "word such as `auth`) matches every action under it (`auth.` = `auth.login`, `auth.login_failed`, ...)."
)


async def provide_audit_query(
    action: Annotated[list[str] | None, QueryParameter(description=ACTION_HELP)] = None,
    actor: Annotated[
        str | None,
        QueryParameter(
            max_length=100,
            description="Only what this actor did: a user id, or the actor's name (a username, `cli:<operator>`).",
        ),
    ] = None,
    target_type: Annotated[
        str | None,
        QueryParameter(
            max_length=32,
            description="Only rows about this kind of target: `user`, `token`, `session`, `task`, `identity`, "
            "`broadcast`.",
        ),
    ] = None,
    target_id: Annotated[
        str | None, QueryParameter(max_length=64, description="Only rows about the target with this id.")
    ] = None,
    since: Annotated[datetime | None, QueryParameter(description=SINCE_HELP)] = None,
    until: Annotated[datetime | None, QueryParameter(description=UNTIL_HELP)] = None,
    request_id: Annotated[
        str | None,
        QueryParameter(max_length=128, description="Only rows recorded by the request with this `X-Request-ID`."),
    ] = None,
    q: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_TEXT,
            description="Only rows whose actor name, target name or target id contains this text (any case).",
        ),
    ] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=MAX_CURSOR, description=CURSOR_HELP)] = None,
) -> AuditQuery:
    return audit_query(
        actions=action or (),
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        since=since,
        until=until,
        request_id=request_id,
        text=q,
        cursor=cursor,
    )


async def provide_my_audit_query(
    action: Annotated[list[str] | None, QueryParameter(description=ACTION_HELP)] = None,
    since: Annotated[datetime | None, QueryParameter(description=SINCE_HELP)] = None,
    until: Annotated[datetime | None, QueryParameter(description=UNTIL_HELP)] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=MAX_CURSOR, description=CURSOR_HELP)] = None,
) -> AuditQuery:
    return audit_query(actions=action or (), since=since, until=until, cursor=cursor)


class AdminAuditController(Controller):
    path = "/api/v1/admin/audit"
    tags = ["admin"]
    guards = [requires_superuser]
    security = BEARER

    @get(
        operation_id="adminListAudit",
        summary="The audit log: admin and security actions, filtered, newest first (superusers only)",
        description=(
            "Who (`actor_id`, `actor_name`: a user, or `cli:<operator>` for the operators' CLI) did which `action` to "
            "what (`target_type`, `target_id`, `target_name`), when (`at`), from where (`ip`) and in which request "
            "(`request_id`, the `X-Request-ID` the client sent or the one the service made), with a small `detail`. "
            "Actions: sign-ins and their failures, logouts, reused refresh tokens, password, email and token "
            "changes, sessions signed out, account exports and deletions, and every administrator's change "
            "(users created, activated, deactivated, promoted or demoted; broadcasts; task retries). Newest first; "
            "pass `next_cursor` as `cursor` (with the same filters) for the next page, null on the last. No `total`: "
            "the log is long. Rows are kept for `AUDIT_RETENTION_DAYS`. 403 for anyone but a superuser (a personal "
            "access token needs the `admin` scope)."
        ),
        dependencies={"audit_query": Provide(provide_audit_query)},
        raises=[NotAuthorizedException, PermissionDeniedException, ValidationException],
    )
    async def list_audit(
        self,
        reads: NamedDependency[AsyncEngine],
        audit_query: NamedDependency[AuditQuery],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    ) -> AuditPage:
        return await list_audit(reads, audit_query, limit=limit)


class MyAuditController(Controller):
    path = "/api/v1/users/me/audit"
    tags = ["users"]
    # A personal access token never gets here: app.web.http.auth answers 403 for these paths (required_scope).
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listMySecurityEvents",
        summary="My security history",
        description=(
            "The audit log's rows about the caller's account, newest first: what they did (sign-ins, password, "
            "email, token and session changes, exports, task retries) and what was done to it (failed sign-ins "
            "naming it, an administrator's changes). Filters and cursor as `GET /api/v1/admin/audit`."
        ),
        dependencies={"audit_query": Provide(provide_my_audit_query)},
        raises=[NotAuthorizedException, ValidationException],
    )
    async def list_mine(
        self,
        request: Request[User, Any, Any],
        reads: NamedDependency[AsyncEngine],
        audit_query: NamedDependency[AuditQuery],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    ) -> AuditPage:
        query = msgspec.structs.replace(audit_query, involving=request.user.id)
        return await list_audit(reads, query, limit=limit)
