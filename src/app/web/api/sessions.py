"""/api/v1/users/me/sessions: where the signed-in user is signed in (app.domain.accounts.sign_ins), ended one by one."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, delete, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.status_codes import HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.accounts.sign_ins import SessionOut, SignIns, session_out
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.web.api.accounts import AUTH_ERRORS, BEARER, caller_family
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user
from app.web.http.sign_ins import SignInUses

SESSIONS_PATH = "/api/v1/users/me/sessions"


async def my_sessions(
    db_session: AsyncSession, settings: Settings, user_id: UUID, current: UUID | None, uses: SignInUses
) -> list[SessionOut]:
    """The user's active sign-ins as listed (with this process's unwritten uses), the caller's marked `current`."""
    rows = await SignIns(db_session, settings).active(user_id)
    return [session_out(row, current, uses.last_use(row.id)) for row in rows]


class SessionsController(Controller):
    path = SESSIONS_PATH
    tags = ["users"]
    # A personal access token never gets here: app.web.http.auth answers 403 for these paths (required_scope).
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listMySessions",
        summary="Where I am signed in",
        description=(
            "The caller's active sign-ins, most recently used first: browser sessions (`kind: browser`) and API "
            "sign-ins (`kind: api`, one per login: its refresh tokens and the access tokens issued from them), "
            "each with when it started and was last used (to the minute), the user agent and address it signed "
            "in from, and `current: true` for the one making this request. Personal access tokens are listed "
            "under `/users/me/tokens`."
        ),
        raises=AUTH_ERRORS,
    )
    async def list_sessions(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        sign_in_uses: NamedDependency[SignInUses],
    ) -> list[SessionOut]:
        return await my_sessions(db_session, settings, request.user.id, caller_family(request), sign_in_uses)

    @delete(
        "/{session_id:uuid}",
        operation_id="revokeMySession",
        summary="Sign out one session",
        description=(
            "Ends that sign-in at once on every process: a browser session is signed out; an API sign-in's "
            "refresh token and the access tokens issued from it stop working. Event streams opened with it end. "
            "Ending the caller's own (`current`) is a logout. 404 for an id that is not one of the caller's "
            "active sessions."
        ),
        status_code=HTTP_204_NO_CONTENT,
        raises=[*AUTH_ERRORS, NotFoundException],
    )
    async def revoke_session(
        self,
        request: Request[User, Any, Any],
        session_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> None:
        kind = await SignIns(db_session, settings).revoke(request.user.id, session_id)
        record(
            db_session,
            audit_context(request),
            audit.SESSION_REVOKED,
            target_type=audit.SESSION,
            target_id=session_id,
            target_name=request.user.username,
            detail={"kind": kind},
        )
