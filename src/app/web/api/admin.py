"""Administration API for superusers: /api/v1/admin/users."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get, patch
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import UserFlags, UserOut, user_out
from app.domain.accounts.services import AccountService
from app.domain.audit.admin import record_flag_changes
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, Page
from app.web.http.audit import audit_context
from app.web.http.auth import requires_superuser
from app.web.http.errors import Conflicting

ADMIN_ERRORS = [NotAuthorizedException, PermissionDeniedException]


class AdminUsersController(Controller):
    path = "/api/v1/admin/users"
    tags = ["admin"]
    guards = [requires_superuser]
    security = [{"BearerToken": []}]

    @get(
        operation_id="adminListUsers",
        description=(
            "A page of users, searched by `q` in email, username or name and filtered by `active`. 403 unless the "
            "caller is a superuser."
        ),
        summary="List users (superusers only)",
        raises=ADMIN_ERRORS,
    )
    async def list_users(
        self,
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
        q: Annotated[str | None, QueryParameter(description="Text in email, username or name")] = None,
        active: Annotated[bool | None, QueryParameter(description="Only active (true) or inactive (false)")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Page[UserOut]:
        users, total = await AccountService(db_session, passwords, settings).list_users(
            text=q, active=active, limit=limit, offset=offset
        )
        return Page(items=[user_out(u) for u in users], total=total, limit=limit, offset=offset)

    @patch(
        "/{user_id:uuid}",
        operation_id="adminUpdateUser",
        description=(
            "Sets `is_active` and `is_superuser`; a deactivated user's tokens, sessions and streams end at once. "
            "409 for deactivating or demoting oneself."
        ),
        summary="Activate, deactivate, promote or demote a user (superusers only; not oneself)",
        raises=[*ADMIN_ERRORS, NotFoundException, Conflicting],
    )
    async def update_user(
        self,
        request: Request[User, Any, Any],
        user_id: FromPath[UUID],
        data: JSONBody[UserFlags],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> UserOut:
        service = AccountService(db_session, passwords, settings)
        target = await service.require(user_id)
        before = (target.is_active, target.is_superuser)
        user = await service.set_flags(target, data, by=request.user)
        record_flag_changes(db_session, audit_context(request), user, before)
        await db_session.commit()  # a deactivated user's tokens and streams end now, on every process
        return user_out(user)
