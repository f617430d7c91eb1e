"""/api/v1/users/me: changing the email address, asking for the verification link again, exporting and deleting
the account (app.domain.accounts.services, app.domain.accounts.deletion)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.deletion import AccountExport, delete_account, export_account
from app.domain.accounts.emails import (
    email_change_email,
    email_change_notice,
    verification_email,
    verification_link,
)
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.services import AccountService
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.audit.schemas import AuditContext
from app.domain.clock import utcnow
from app.domain.tasks.artifacts import ArtifactStore
from app.web.api.accounts import AUTH_ERRORS, BEARER, AlreadyRegistered
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user
from app.web.http.blocking import in_thread
from app.web.http.errors import BreaksARule, Conflicting, TooMany
from app.web.http.limits import Limiter
from app.workers.actors.mail import enqueue_email


class EmailChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    new_email: str
    current_password: str


class EmailChangeAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The address a change now waits for: it becomes the account's when the link sent to it is opened."""

    pending_email: str


class PasswordConfirmation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    current_password: str


async def request_email_change(
    service: AccountService,
    user: User,
    new_email: str,
    current_password: str,
    limiter: Limiter,
    context: AuditContext,
) -> str:
    """Ask for the change (committed), then send the link to the new address and a notice to the old one."""
    old_email, username = user.email, user.username
    async with limiter.password_confirmation(user.id):
        email, raw = await service.request_email_change(user, new_email, current_password)
    record(
        service.session,
        context,
        audit.EMAIL_CHANGE_REQUESTED,
        target_type=audit.USER,
        target_id=user.id,
        target_name=username,
        detail={"from": old_email, "to": email},
    )
    await service.session.commit()  # the link works before it is sent
    settings = service.settings
    link = verification_link(settings.base_url, raw)
    for message in (
        email_change_email(email, username, link, valid_hours=settings.verification_token_hours),
        email_change_notice(old_email, username, email),
    ):
        await in_thread(enqueue_email, message)  # the broker client blocks
    return email


async def resend_verification(service: AccountService, user: User, limiter: Limiter) -> None:
    """A new verification link for the account's address (Conflict when verified; a 429 past the limit)."""
    raw = await service.verification_token(user)
    await limiter.verification_email(user.id)
    await service.session.commit()
    settings = service.settings
    link = verification_link(settings.base_url, raw)
    email = verification_email(user.email, user.username, link, valid_hours=settings.verification_token_hours)
    await in_thread(enqueue_email, email)


async def close_account(
    service: AccountService,
    user: User,
    current_password: str,
    limiter: Limiter,
    artifacts: ArtifactStore,
    context: AuditContext,
) -> None:
    """Delete the account after checking its password (committed), then its files."""
    async with limiter.password_confirmation(user.id):
        await service.confirm_password(user, current_password)
    user_id, username, email = user.id, user.username, user.email
    await delete_account(service.session, user)
    record(
        service.session,
        context,
        audit.ACCOUNT_DELETED,
        target_type=audit.USER,
        target_id=user_id,
        target_name=username,
        detail={"email": email},
    )
    await service.session.commit()  # every session, token and stream of the user ends (announced)
    await artifacts.delete_owner(user.id)


def export_filename(user: User) -> str:
    return f"account-{user.username}-{utcnow():%Y%m%d}.json"


def record_export(session: AsyncSession, context: AuditContext, user: User) -> None:
    record(
        session, context, audit.ACCOUNT_EXPORTED, target_type=audit.USER, target_id=user.id, target_name=user.username
    )


def export_response(document: AccountExport, user: User) -> Response[AccountExport]:
    """The export as a download."""
    disposition = f'attachment; filename="{export_filename(user)}"'
    return Response(document, headers={"Content-Disposition": disposition, "Cache-Control": "no-store"})


class AccountController(Controller):
    path = "/api/v1/users/me"
    tags = ["users"]
    # A personal access token never gets here: app.web.http.auth answers 403 for these paths (required_scope).
    guards = [requires_user]
    security = BEARER

    @post(
        "/email",
        operation_id="changeMyEmail",
        summary="Change the email address (confirmed by a link sent to it)",
        description=(
            "Needs the current password (401 if wrong; wrong ones count as failed sign-ins, 429 past the "
            "limit). A link is sent to the new address and a notice to the current one; the account's email "
            "changes, verified, only when the link is opened (`POST /api/v1/auth/verify-email` with its "
            "token, or the page it opens). The link works once, for `VERIFICATION_TOKEN_HOURS`; a newer request "
            "replaces it, and a password change or reset cancels it. 409 when the address is another account's "
            "(checked again when the link is opened); 422 for an invalid address or the current one."
        ),
        status_code=HTTP_202_ACCEPTED,
        raises=[*AUTH_ERRORS, ValidationException, BreaksARule, AlreadyRegistered, TooMany],
    )
    async def change_email(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[EmailChange],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> EmailChangeAccepted:
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        email = await request_email_change(
            service, user, data.new_email, data.current_password, limiter, audit_context(request)
        )
        return EmailChangeAccepted(pending_email=email)

    @post(
        "/verification",
        operation_id="resendVerificationEmail",
        summary="Send the email-verification link again",
        description=(
            "Sends a new link to the account's address (the one sent before stops working). 409 when the address "
            "is already verified; 429 after `VERIFICATION_EMAILS_PER_HOUR` (5) in an hour."
        ),
        status_code=HTTP_202_ACCEPTED,
        raises=[*AUTH_ERRORS, Conflicting, TooMany],
    )
    async def resend_verification(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> None:
        user = await db_session.merge(request.user, load=False)
        await resend_verification(AccountService(db_session, passwords, settings), user, limiter)

    @get(
        "/export",
        operation_id="exportMyAccount",
        summary="Download everything the account holds",
        description=(
            "One JSON document, as a download: the user, every task, notification, active session, personal "
            "access token (never the token itself) and linked identity, as the API shows each."
        ),
        response_headers=[
            ResponseHeader(
                name="Content-Disposition",
                value='attachment; filename="account-ann-20261122.json"',
                description="A download named after the user and the day.",
                documentation_only=True,
            )
        ],
        raises=AUTH_ERRORS,
    )
    async def export(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[AccountExport]:
        document = await export_account(db_session, settings, request.user)
        record_export(db_session, audit_context(request), request.user)
        return export_response(document, request.user)

    @post(
        "/delete",
        operation_id="deleteMyAccount",
        summary="Delete the account and everything it holds",
        description=(
            "Needs the current password (401 if wrong; counted as failed sign-ins, 429 past the limit). Deletes "
            "the user with every schedule, task (running ones stop), task file, notification, event, token and "
            "session; "
            "every session, token and event stream of the user ends at once on every process. Download "
            "`/users/me/export` first. 409 for the only active administrator. A POST with a body, since bodies "
            "on DELETE are dropped by some proxies and clients."
        ),
        status_code=HTTP_204_NO_CONTENT,
        raises=[*AUTH_ERRORS, ValidationException, Conflicting, TooMany],
    )
    async def delete_me(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[PasswordConfirmation],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
        artifacts: NamedDependency[ArtifactStore],
    ) -> None:
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        await close_account(service, user, data.current_password, limiter, artifacts, audit_context(request))
