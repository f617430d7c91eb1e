"""Accounts API: /api/v1/auth (sign-up, sign-in, tokens, email flows) and /api/v1/users/me."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotAuthorizedException, ValidationException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import JSONBody
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_202_ACCEPTED,
    HTTP_204_NO_CONTENT,
    HTTP_409_CONFLICT,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.emails import verification_email, verification_link
from app.domain.accounts.errors import InvalidCredentials, RefreshTokenReused
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import PasswordChange, ProfileChange, Registration, UserOut, user_out
from app.domain.accounts.services import VERIFY, AccountService, RefreshTokens
from app.domain.accounts.sign_ins import API, SignIns
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.audit.schemas import AuditContext
from app.web.http.audit import audit_context, record_login_failure
from app.web.http.auth import AccessTokens, requires_user, sign_in_browser
from app.web.http.blocking import in_thread
from app.web.http.credentials import credential_of
from app.web.http.errors import BreaksARule, TooMany
from app.web.http.limits import Limiter
from app.workers.actors.mail import enqueue_email, enqueue_password_reset

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
AUTH_ERRORS = [NotAuthorizedException]


# Documentation only: the statuses the accounts domain's refusals become (app.web.http.errors), so that
# the OpenAPI document lists every error an operation can answer with.


class AlreadyRegistered(ClientException):
    status_code = HTTP_409_CONFLICT
    detail = "The email or username is already registered."


LOGIN_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["username", "password"],
    properties={
        "username": Schema(type=OpenAPIType.STRING, description="The username or the email"),
        "password": Schema(type=OpenAPIType.STRING, write_only=True),
    },
    examples=[{"username": "ann", "password": "a long passphrase"}],
)


@dataclass
class LoginOperation(Operation):
    """The login handler reads its body itself (JSON or form), so its request body is described here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(schema=LOGIN_SCHEMA),
                "application/x-www-form-urlencoded": OpenAPIMediaType(schema=LOGIN_SCHEMA),
            },
        )


class Login(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    password: str


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


class RefreshRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    refresh_token: str


class LogoutRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    refresh_token: str | None = None


class TokenValidity(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    valid: bool = True


class EmailTokenRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    token: str


class ForgotPassword(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    email: str


class ResetPassword(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    token: str
    password: str


def client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


async def _login_body(request: Request[Any, Any, Any]) -> Login:
    """The login body, as JSON or as an HTML form (OAuth2 password style)."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return msgspec.convert(dict(form), Login)
        return msgspec.json.decode(await request.body(), type=Login)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationException(
            detail=f"Send username and password: {exc}", extra=[{"key": "body", "message": str(exc)}]
        ) from exc


async def _pair(
    request: Request[Any, Any, Any], db_session: AsyncSession, tokens: AccessTokens, settings: Settings, user: User
) -> TokenPair:
    """A new API sign-in: its refresh family, recorded with where it came from, and its first access token."""
    refresh = await RefreshTokens(db_session, settings).issue(user)
    await SignIns(db_session, settings).start(
        user,
        API,
        user_agent=request.headers.get("user-agent"),
        address=client_address(request),
        sign_in_id=refresh.family_id,
    )
    record(
        db_session,
        audit_context(request, user),
        audit.LOGIN,
        target_type=audit.USER,
        target_id=user.id,
        target_name=user.username,
        detail={"kind": API, "session_id": str(refresh.family_id)},
    )
    access, expires_in = tokens.issue(user, refresh.family_id)
    return TokenPair(access_token=access, refresh_token=refresh.token, expires_in=expires_in)


def caller_family(request: Request[Any, Any, Any]) -> UUID | None:
    """The caller's sign-in: the refresh family of its access token, or its browser session's sign-in."""
    credential = credential_of(request)
    return credential.family if credential is not None else None


def record_email_confirmed(session: AsyncSession, context: AuditContext, user: User, old_email: str | None) -> None:
    """An emailed link opened: the address verified, or (`old_email`) changed to the link's."""
    action, detail = (audit.EMAIL_VERIFIED, {"email": user.email})
    if old_email is not None:
        action, detail = audit.EMAIL_CHANGED, {"from": old_email, "to": user.email}
    record(
        session, context, action, target_type=audit.USER, target_id=user.id, target_name=user.username, detail=detail
    )


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post(
        "/register",
        operation_id="register",
        description=(
            "Makes an account and emails a link to verify its address. The username is 3-32 of `a-z0-9_.-`; the "
            "password at least 10 characters and not the username or email. 409 when the email or username is "
            "taken."
        ),
        summary="Create an account",
        status_code=HTTP_201_CREATED,
        raises=[ValidationException, AlreadyRegistered, BreaksARule, TooMany],
    )
    async def register(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[Registration],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> UserOut:
        await limiter.registration(client_address(request))
        service = AccountService(db_session, passwords, settings)
        user = await service.register(data)
        raw = await service.email_token(user, VERIFY)
        record(
            db_session,
            audit_context(request, user),
            audit.USER_REGISTERED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
        )
        result = user_out(user)
        await db_session.commit()  # the account exists before its email is sent
        email = verification_email(user.email, user.username, verification_link(settings.base_url, raw))
        await in_thread(enqueue_email, email)  # the broker client blocks
        return result

    @post(
        "/login",
        operation_id="login",
        summary="Sign in: get an access and a refresh token",
        status_code=HTTP_200_OK,
        raises=[ValidationException, NotAuthorizedException, TooMany],
        operation_class=LoginOperation,
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        tokens: NamedDependency[AccessTokens],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> TokenPair:
        """The body is JSON or form-encoded: `username` (or the email) and `password`."""
        body = await _login_body(request)
        service = AccountService(db_session, passwords, settings)
        try:
            user = await limiter.sign_in(service, body.username, body.password, client_address(request))
        except InvalidCredentials:
            await record_login_failure(request, service, body.username, kind=API)
            raise
        return await _pair(request, db_session, tokens, settings, user)

    @post(
        "/refresh",
        operation_id="refreshTokens",
        description=(
            "Answers a new access and refresh token; the old refresh token stops working. A refresh token used "
            "twice (already rotated) revokes its whole family."
        ),
        summary="Trade a refresh token for a new pair",
        status_code=HTTP_200_OK,
        raises=[*AUTH_ERRORS, TooMany],
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[RefreshRequest],
        db_session: NamedDependency[AsyncSession],
        tokens: NamedDependency[AccessTokens],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> TokenPair:
        async with limiter.token_use(client_address(request)):
            try:
                user, issued = await RefreshTokens(db_session, settings).rotate(data.refresh_token)
            except InvalidCredentials as exc:
                if isinstance(exc, RefreshTokenReused):
                    owner = await db_session.get(User, exc.user_id)
                    record(
                        db_session,
                        audit_context(request),
                        audit.REFRESH_REUSED,
                        target_type=audit.USER,
                        target_id=exc.user_id,
                        target_name=owner.username if owner else None,
                        detail={"session_id": str(exc.family_id)},
                    )
                await db_session.commit()  # a detected reuse revoked the family (and its tokens and streams): keep that
                raise
        access, expires_in = tokens.issue(user, issued.family_id)
        return TokenPair(access_token=access, refresh_token=issued.token, expires_in=expires_in)

    @post(
        "/logout",
        operation_id="logout",
        summary="End this sign-in (its refresh family)",
        status_code=HTTP_204_NO_CONTENT,
        guards=[requires_user],
        security=BEARER,
        raises=AUTH_ERRORS,
    )
    async def logout(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        data: JSONBody[LogoutRequest | None] = None,
    ) -> None:
        """Ends the caller's sign-in: its refresh family (and the one of `refresh_token`, if sent), the access
        tokens issued from them and the event streams opened with those, on every process at once."""
        refreshes = RefreshTokens(db_session, settings)
        families = {caller_family(request)}
        if data is not None and data.refresh_token:
            families.add(await refreshes.family_of(data.refresh_token, request.user))
        for family in families - {None}:
            if family is not None:
                await refreshes.revoke_family(family, request.user)
                record(
                    db_session,
                    audit_context(request),
                    audit.LOGOUT,
                    target_type=audit.SESSION,
                    target_id=family,
                    target_name=request.user.username,
                )

    @get(
        "/verify",
        operation_id="verifyToken",
        description="200 with the caller's user id while the access token is valid; 401 otherwise.",
        summary="Check an access token",
        guards=[requires_user],
        security=BEARER,
        raises=AUTH_ERRORS,
    )
    async def verify(self, request: Request[User, Any, Any]) -> TokenValidity:
        return TokenValidity(user_id=request.user.id)

    @post(
        "/verify-email",
        operation_id="verifyEmail",
        description=(
            "Marks the address verified with the token from the emailed link; 400 for an invalid, expired or used "
            "token."
        ),
        summary="Confirm an email address with the emailed token",
        status_code=200,
        raises=[ValidationException, TooMany],
    )
    async def verify_email(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[EmailTokenRequest],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> UserOut:
        async with limiter.token_use(client_address(request)):
            user, old_email = await AccountService(db_session, passwords, settings).confirm_email(data.token)
        record_email_confirmed(db_session, audit_context(request, user), user, old_email)
        return user_out(user)

    @post(
        "/forgot-password",
        operation_id="forgotPassword",
        summary="Email a password reset link (always 202)",
        status_code=HTTP_202_ACCEPTED,
        raises=[ValidationException, TooMany],
    )
    async def forgot_password(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ForgotPassword],
        limiter: NamedDependency[Limiter],
    ) -> None:
        """The same work whether or not the address is an account's (a worker looks it up): no timing tells."""
        await limiter.reset_request(client_address(request))
        await in_thread(enqueue_password_reset, data.email)  # the broker client blocks

    @post(
        "/reset-password",
        operation_id="resetPassword",
        summary="Set a new password with the emailed token",
        status_code=HTTP_204_NO_CONTENT,
        raises=[ValidationException, BreaksARule, TooMany],
    )
    async def reset_password(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ResetPassword],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> None:
        """Every session, refresh family, access token and event stream of the user ends."""
        async with limiter.token_use(client_address(request)):
            user = await AccountService(db_session, passwords, settings).reset_password(data.token, data.password)
        record(
            db_session,
            audit_context(request, user),
            audit.PASSWORD_RESET,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
        )


class MeController(Controller):
    path = "/api/v1/users/me"
    tags = ["users"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="getMe",
        description="The caller's account; never a password hash.",
        summary="The signed-in user",
        raises=AUTH_ERRORS,
    )
    async def me(self, request: Request[User, Any, Any]) -> UserOut:
        return user_out(request.user)

    @patch(
        operation_id="updateMe",
        description=(
            "Changes `full_name` and whether a task's end is also emailed (`email_notifications`); fields left out "
            "stay."
        ),
        summary="Change profile and email preferences",
        raises=[*AUTH_ERRORS, ValidationException, BreaksARule],
    )
    async def update(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[ProfileChange],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> UserOut:
        user = await db_session.merge(request.user, load=False)
        return user_out(await AccountService(db_session, passwords, settings).update_profile(user, data))

    @post(
        "/password",
        operation_id="changePassword",
        description=(
            "Needs the current password (401 if wrong). Every other session, refresh family, access token and event "
            "stream of the user is revoked at once."
        ),
        summary="Change the password; other sessions end",
        status_code=HTTP_204_NO_CONTENT,
        raises=[*AUTH_ERRORS, ValidationException, BreaksARule],
    )
    async def change_password(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[PasswordChange],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> None:
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        family = caller_family(request)
        await service.change_password(user, data.current_password, data.new_password, keep_family=family)
        record(
            db_session,
            audit_context(request),
            audit.PASSWORD_CHANGED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
        )
        if request.auth == "session" and family is not None:  # this browser stays signed in
            sign_in_browser(request, user, family)
