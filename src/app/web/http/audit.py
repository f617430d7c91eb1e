"""Who acts in a request, for the audit log (app.domain.audit): the signed-in user, the request's id (the
`X-Request-ID` the client sent, when sane, app.web.http.request_id) and the client's address (behind
TRUSTED_PROXIES, the client's, app.web.http.proxies)."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from app.domain.accounts.models import User
from app.domain.accounts.services import AccountService
from app.domain.audit.recording import record_login_failure as failed_sign_in
from app.domain.audit.schemas import AuditContext

#: A login longer than any username or email names nobody: it is not looked up whole.
MAX_LOGIN_LOOKUP = 320


def audit_context(connection: ASGIConnection[Any, Any, Any, Any], user: User | None = None) -> AuditContext:
    """The request's context; the actor is `user`, else the signed-in user (None for a visitor)."""
    actor = user if user is not None else connection.scope.get("user")
    state = connection.scope.get("state") or {}
    client = connection.scope.get("client")
    return AuditContext(
        actor_id=actor.id if actor is not None else None,
        actor_name=actor.username if actor is not None else None,
        request_id=state.get("request_id"),
        ip=client[0] if client else None,
    )


async def record_login_failure(
    connection: ASGIConnection[Any, Any, Any, Any], service: AccountService, typed: str, *, kind: str
) -> None:
    """Record a failed sign-in (a password checked and refused) in a transaction of its own."""
    named = await service.by_login(typed[:MAX_LOGIN_LOOKUP])
    await failed_sign_in(service.session, audit_context(connection), typed, named.id if named else None, kind=kind)
