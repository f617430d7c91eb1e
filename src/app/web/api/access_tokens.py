"""/api/v1/users/me/tokens: the signed-in user's personal access tokens (app.domain.accounts.access_tokens)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.access_tokens import (
    AccessTokenOut,
    AccessTokens,
    CreatedAccessToken,
    NewAccessToken,
    token_out,
)
from app.domain.accounts.models import User
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.audit.schemas import AuditContext
from app.web.api.accounts import AUTH_ERRORS, BEARER
from app.web.http.access_tokens import TokenIndex
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user
from app.web.http.errors import BreaksARule, TooMany

TOKENS_PATH = "/api/v1/users/me/tokens"


def record_token_created(session: AsyncSession, context: AuditContext, created: CreatedAccessToken) -> None:
    """A token made: its name, scopes, prefix and expiry (never the token)."""
    record(
        session,
        context,
        audit.TOKEN_CREATED,
        target_type=audit.TOKEN,
        target_id=created.id,
        target_name=created.name,
        detail={"scopes": created.scopes, "prefix": created.prefix, "expires_at": created.expires_at.isoformat()},
    )


class AccessTokensController(Controller):
    path = TOKENS_PATH
    tags = ["users"]
    # A personal access token never gets here: app.web.http.auth answers 403 for these paths (required_scope).
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listMyAccessTokens",
        summary="My personal access tokens",
        description=(
            "The caller's tokens that still work, newest first: name, scopes, the first characters of the token, "
            "when it expires and when it was last used (to the minute). The token itself is never shown again."
        ),
        raises=AUTH_ERRORS,
    )
    async def list_tokens(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        access_tokens: NamedDependency[TokenIndex],
    ) -> list[AccessTokenOut]:
        rows = await AccessTokens(db_session).active(request.user)
        return [access_tokens.with_last_use(token_out(row)) for row in rows]

    @post(
        operation_id="createAccessToken",
        summary="Make a personal access token",
        description=(
            "A named token for scripts, sent as `Authorization: Bearer pat_...`. Scopes: `read` (tasks, "
            "notifications, task kinds, my user, the event stream), `write` (start, cancel, retry and delete "
            "tasks; mark notifications read), `admin` (the admin API; administrators only). It works until it "
            "expires (1 to 365 days, 30 by default), is revoked, or the password changes. The answer holds "
            "the token: the only time it is shown. At most 50 active tokens per user."
        ),
        status_code=HTTP_201_CREATED,
        raises=[*AUTH_ERRORS, ValidationException, BreaksARule, TooMany],
    )
    async def create_token(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[NewAccessToken],
        db_session: NamedDependency[AsyncSession],
    ) -> CreatedAccessToken:
        user = await db_session.merge(request.user, load=False)
        created = await AccessTokens(db_session).create(user, data)
        record_token_created(db_session, audit_context(request), created)
        return created

    @delete(
        "/{token_id:uuid}",
        operation_id="revokeAccessToken",
        summary="Revoke a personal access token",
        description="The token stops working at once on every process, and event streams opened with it end.",
        status_code=HTTP_204_NO_CONTENT,
        raises=[*AUTH_ERRORS, NotFoundException],
    )
    async def revoke_token(
        self, request: Request[User, Any, Any], token_id: FromPath[UUID], db_session: NamedDependency[AsyncSession]
    ) -> None:
        await AccessTokens(db_session).revoke(request.user, token_id)
        record(
            db_session,
            audit_context(request),
            audit.TOKEN_REVOKED,
            target_type=audit.TOKEN,
            target_id=token_id,
            detail={"owner": request.user.username},
        )
