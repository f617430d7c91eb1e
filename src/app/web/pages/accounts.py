"""Account pages: the start page, sign-up, sign-in and out, email links (verify, reset) and /account."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.access_tokens import SCOPES, AccessTokens, NewAccessToken, token_out
from app.domain.accounts.deletion import export_account
from app.domain.accounts.emails import RESET_PATH, VERIFY_PATH, verification_email, verification_link
from app.domain.accounts.errors import InvalidCredentials, InvalidToken
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.schemas import ProfileChange, Registration
from app.domain.accounts.services import VERIFY, AccountService, pending_email
from app.domain.accounts.sign_ins import BROWSER, SignIns, session_out
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.errors import Conflict, DomainError, InvalidInput
from app.domain.tasks.artifacts import ArtifactStore
from app.web.api.access_tokens import record_token_created
from app.web.api.account_lifecycle import (
    close_account,
    export_response,
    record_export,
    request_email_change,
    resend_verification,
)
from app.web.api.accounts import caller_family, client_address, record_email_confirmed
from app.web.http.access_tokens import TokenIndex
from app.web.http.audit import audit_context, record_login_failure
from app.web.http.auth import sign_in_browser, sign_out_browser
from app.web.http.blocking import in_thread
from app.web.http.credentials import CredentialCache, credential_of
from app.web.http.limits import Limiter
from app.web.http.sign_ins import SignInUses
from app.web.pages.rendering import (
    current_user,
    field_errors,
    form_data,
    fragment,
    go,
    is_htmx,
    page,
    requires_signed_in,
    safe_next,
)
from app.workers.actors.mail import enqueue_email, enqueue_password_reset


class SignInPages(Controller):
    """Pages for visitors: what this is, sign-up, sign-in, and the links sent by email."""

    include_in_schema = False

    @get("/", name="home")
    async def home(self, request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession]) -> Response[Any]:
        if current_user(request) is not None:
            return Redirect(path="/dashboard", status_code=303)
        return await page(request, db_session, "index.html")

    @get("/register")
    async def register_page(
        self, request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession]
    ) -> Response[Any]:
        return await page(request, db_session, "register.html", {"form": {}, "errors": {}})

    @post("/register")
    async def register(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        await limiter.registration(client_address(request))
        service = AccountService(db_session, passwords, settings)
        registration = Registration(
            email=form.get("email", ""),
            username=form.get("username", ""),
            password=form.get("password", ""),
            full_name=form.get("full_name") or None,
        )
        try:
            user = await service.register(registration)
        except DomainError as exc:
            errors, error = field_errors(exc)
            context = {"form": form, "errors": errors, "error": error}
            status = 422 if isinstance(exc, InvalidInput) else 409
            if is_htmx(request):
                return fragment("partials/register_form.html", context)
            return await page(request, db_session, "register.html", context, status)
        raw = await service.email_token(user, VERIFY)
        sign_in = await _browser_sign_in(request, db_session, settings, user)
        record(
            db_session,
            audit_context(request, user),
            audit.USER_REGISTERED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
        )
        await db_session.commit()  # the account exists before its email is sent
        email = verification_email(user.email, user.username, verification_link(settings.base_url, raw))
        await in_thread(enqueue_email, email)  # the broker client blocks
        sign_in_browser(request, user, sign_in)
        return go(request, "/dashboard", f"Welcome, {user.username}! We sent a link to {user.email} to confirm it.")

    @get("/login", name="login")
    async def login_page(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        next_path: Annotated[str | None, QueryParameter(name="next", required=False)] = None,
    ) -> Response[Any]:
        return await page(request, db_session, "login.html", {"form": {}, "next": safe_next(next_path)})

    @post("/login")
    async def login(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        username = form.get("username", "")
        service = AccountService(db_session, passwords, settings)
        try:
            user = await limiter.sign_in(service, username, form.get("password", ""), client_address(request))
        except InvalidCredentials:
            await record_login_failure(request, service, username, kind=BROWSER)
            context = {"form": {"username": username}, "error": "Wrong username or password.", "next": form.get("next")}
            if is_htmx(request):
                return fragment("partials/login_form.html", context)
            return await page(request, db_session, "login.html", context, 401)
        sign_in = await _browser_sign_in(request, db_session, settings, user)
        record(
            db_session,
            audit_context(request, user),
            audit.LOGIN,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
            detail={"kind": BROWSER, "session_id": str(sign_in)},
        )
        await db_session.commit()  # the sign-in, and a password hash redone with new parameters
        sign_in_browser(request, user, sign_in)
        return go(request, safe_next(form.get("next")))

    @post("/logout")
    async def logout(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        credentials: NamedDependency[CredentialCache],
    ) -> Response[Any]:
        await _sign_out(request, db_session, settings, credentials)  # this browser's session and its streams end
        return go(request, "/")

    @get("/forgot-password")
    async def forgot_page(self, request: Request[Any, Any, Any], db_session: NamedDependency[AsyncSession]) -> Template:
        return await page(request, db_session, "forgot_password.html", {"form": {}, "errors": {}})

    @post("/forgot-password")
    async def forgot(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        limiter: NamedDependency[Limiter],
    ) -> Response[Any]:
        form = await form_data(request)
        email_address = form.get("email", "").strip()
        if not email_address:
            context = {"form": form, "errors": {"email": "Enter the email address of your account."}}
            if is_htmx(request):
                return fragment("partials/forgot_form.html", context)
            return await page(request, db_session, "forgot_password.html", context, 422)
        await limiter.reset_request(client_address(request))
        # Only queued, the same work for any address: the worker looks it up (no timing tells).
        await in_thread(enqueue_password_reset, email_address)
        sent = "If an account has this address, we have sent it a link to set a new password."
        if is_htmx(request):
            return fragment("partials/forgot_form.html", {"form": {}, "errors": {}, "sent": sent})
        return go(request, "/forgot-password", sent)

    # The emailed link has its token in the path; older emails' `?token=` links still work. Either way
    # app.config.redaction keeps it out of the logs, and the form hands it on in its POST body.
    @get([f"{RESET_PATH}/{{token:str}}", RESET_PATH])
    async def reset_page(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        token: Annotated[str, QueryParameter(required=False)] = "",
    ) -> Template:
        return await page(request, db_session, "reset_password.html", {"token": token, "errors": {}})

    @post("/reset-password")
    async def reset(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        token = form.get("token", "")
        try:
            async with limiter.token_use(client_address(request)):
                service = AccountService(db_session, passwords, settings)
                user = await service.reset_password(token, form.get("password", ""))
                record(
                    db_session,
                    audit_context(request, user),
                    audit.PASSWORD_RESET,
                    target_type=audit.USER,
                    target_id=user.id,
                    target_name=user.username,
                )
        except (InvalidInput, InvalidToken) as exc:
            await db_session.rollback()  # a bad new password must not use up the link
            errors, error = field_errors(exc)
            context = {"token": token, "errors": errors, "error": error}
            status = 422 if isinstance(exc, InvalidInput) else 400
            if is_htmx(request):
                return fragment("partials/reset_form.html", context)
            return await page(request, db_session, "reset_password.html", context, status)
        await db_session.commit()  # every session of that user ends (its credentials version changed)
        return go(request, "/login", "Your password is set. Sign in with it.")

    # The emailed link has its token in the path; older emails' `?token=` links still work. Either way
    # app.config.redaction keeps it out of the logs.
    @get([f"{VERIFY_PATH}/{{token:str}}", VERIFY_PATH])
    async def verify_email(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
        token: Annotated[str, QueryParameter(required=False)] = "",
    ) -> Template:
        try:
            async with limiter.token_use(client_address(request)):
                user, old_email = await AccountService(db_session, passwords, settings).confirm_email(token)
                record_email_confirmed(db_session, audit_context(request, user), user, old_email)
        except InvalidToken as exc:
            return await page(request, db_session, "verify_email.html", {"verified": None, "error": exc.detail}, 400)
        await db_session.commit()
        return await page(request, db_session, "verify_email.html", {"verified": user.email})


class AccountPages(Controller):
    """/account: profile, email preference and password of the signed-in user."""

    path = "/account"
    include_in_schema = False
    guards = [requires_signed_in]

    @get()
    async def account(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
    ) -> Template:
        return await _account_page(request, db_session, {})

    @post("/email")
    async def change_email(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        """Send the link to the new address (the email changes when it is opened) and a notice to the old one."""
        form = await form_data(request)
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        new_email = form.get("new_email", "")
        try:
            email = await request_email_change(
                service, user, new_email, form.get("current_password", ""), limiter, audit_context(request)
            )
        except (DomainError, InvalidCredentials) as exc:
            await db_session.rollback()
            errors, status = _password_form_errors(exc, {"email": "new_email"})
            context = {"email": {"errors": errors, "new_email": new_email}}
            return await _account_page(request, db_session, context, status)
        return go(request, "/account", f"We sent a link to {email}: open it to make it your email address.")

    @post("/verification")
    async def resend_verification(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        """Send the verification link again (a 409 page when verified, 429 past the limit)."""
        user = await db_session.merge(request.user, load=False)
        await resend_verification(AccountService(db_session, passwords, settings), user, limiter)
        return go(request, "/account", f"We sent a new link to {user.email}.")

    @post("/sessions/{session_id:uuid}/revoke")
    async def revoke_session(
        self,
        request: Request[User, Any, Any],
        session_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
        credentials: NamedDependency[CredentialCache],
        sign_in_uses: NamedDependency[SignInUses],
    ) -> Response[Any]:
        """Sign out one session (NotFound: a 404 page or toast); this browser's own is a sign-out."""
        if session_id == caller_family(request):
            await _sign_out(request, db_session, settings, credentials)
            return go(request, "/login")
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
        await db_session.commit()
        if is_htmx(request):
            sessions = await _sessions_context(db_session, settings, request, sign_in_uses)
            return fragment("partials/sessions.html", {"sessions": {**sessions, "saved": "Session signed out."}})
        return go(request, "/account", "Session signed out.")

    @get("/export")
    async def export(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        """The account's data as a JSON download (the same document as GET /api/v1/users/me/export)."""
        document = await export_account(db_session, settings, request.user)
        record_export(db_session, audit_context(request), request.user)
        await db_session.commit()
        return export_response(document, request.user)

    @post("/delete")
    async def delete_account(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
        artifacts: NamedDependency[ArtifactStore],
    ) -> Response[Any]:
        """Delete the account after its password, then leave this browser signed out on the start page."""
        form = await form_data(request)
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        try:
            await close_account(
                service, user, form.get("current_password", ""), limiter, artifacts, audit_context(request)
            )
        except (Conflict, InvalidCredentials) as exc:
            await db_session.rollback()
            errors, status = _password_form_errors(exc, {})
            context = {"deletion": {"errors": errors, "error": None if errors else exc.detail}}
            return await _account_page(request, db_session, context, status)
        request.clear_session()  # the user is gone: this browser's session with them (no flash: no session)
        return go(request, "/")

    @post("/tokens")
    async def create_token(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        access_tokens: NamedDependency[TokenIndex],
    ) -> Response[Any]:
        """Make a personal access token and show it, once: on this answer only, never stored in a flash."""
        form = await request.form()
        scopes = [value for value in form.getall("scopes") if isinstance(value, str)] if "scopes" in form else []
        name = form.get("name") if isinstance(form.get("name"), str) else ""
        days_text = form.get("expires_in_days") if isinstance(form.get("expires_in_days"), str) else ""
        user = await db_session.merge(request.user, load=False)
        tokens: dict[str, Any] = {"name": name, "scopes": scopes, "days": days_text}
        status = 200
        try:
            days = int(str(days_text).strip())
        except ValueError:
            tokens["errors"], status = {"expires_in_days": "Enter a whole number of days."}, 422
        else:
            request_ = NewAccessToken(name=str(name), scopes=[s for s in scopes if s in SCOPES], expires_in_days=days)
            try:
                created = await AccessTokens(db_session).create(user, request_)
                record_token_created(db_session, audit_context(request), created)
            except DomainError as exc:
                await db_session.rollback()
                errors, message = field_errors(exc)
                tokens["errors"], status = errors or {"name": message or exc.detail}, 422 if errors else 429
            else:
                await db_session.commit()
                tokens = {"created": created}
        tokens = {**tokens, **await _tokens_context(db_session, request.user, access_tokens)}
        if is_htmx(request):
            return fragment("partials/access_tokens.html", {"user": request.user, "tokens": tokens})
        context = {"profile": {}, "password": {}, "tokens": tokens}
        return await page(request, db_session, "account.html", context, status)

    @post("/tokens/{token_id:uuid}/revoke")
    async def revoke_token(
        self,
        request: Request[User, Any, Any],
        token_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        access_tokens: NamedDependency[TokenIndex],
    ) -> Response[Any]:
        await AccessTokens(db_session).revoke(request.user, token_id)  # NotFound: a 404 page or toast
        record(
            db_session,
            audit_context(request),
            audit.TOKEN_REVOKED,
            target_type=audit.TOKEN,
            target_id=token_id,
            detail={"owner": request.user.username},
        )
        await db_session.commit()
        if is_htmx(request):
            tokens = {"saved": "Token revoked.", **await _tokens_context(db_session, request.user, access_tokens)}
            return fragment("partials/access_tokens.html", {"user": request.user, "tokens": tokens})
        return go(request, "/account", "Token revoked.")

    @post("/profile")
    async def profile(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        user = await db_session.merge(request.user, load=False)
        change = ProfileChange(full_name=form.get("full_name", ""), email_notifications="email_notifications" in form)
        try:
            await AccountService(db_session, passwords, settings).update_profile(user, change)
        except InvalidInput as exc:
            errors, _ = field_errors(exc)
            context = {"user": request.user, "profile": {"errors": errors, "full_name": form.get("full_name")}}
            if is_htmx(request):
                return fragment("partials/profile_form.html", context)
            return await page(request, db_session, "account.html", {**context, "password": {}}, 422)
        await db_session.commit()
        if is_htmx(request):
            return fragment("partials/profile_form.html", {"user": user, "profile": {"saved": "Profile saved."}})
        return go(request, "/account", "Profile saved.")

    @post("/password")
    async def password(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        settings: NamedDependency[Settings],
    ) -> Response[Any]:
        form = await form_data(request)
        user = await db_session.merge(request.user, load=False)
        service = AccountService(db_session, passwords, settings)
        sign_in = caller_family(request)
        try:
            await service.change_password(
                user, form.get("current_password", ""), form.get("new_password", ""), keep_family=sign_in
            )
        except (InvalidInput, InvalidCredentials) as exc:
            await db_session.rollback()
            if isinstance(exc, InvalidCredentials):
                errors, status = {"current_password": "The current password is wrong."}, 400
            else:
                errors, status = field_errors(exc)[0], 422
            context = {"user": request.user, "password": {"errors": errors}}
            if is_htmx(request):
                return fragment("partials/password_form.html", context)
            return await page(request, db_session, "account.html", {**context, "profile": {}}, status)
        if sign_in is None:  # a session from before sign-ins were recorded
            sign_in = await _browser_sign_in(request, db_session, settings, user)
        record(
            db_session,
            audit_context(request),
            audit.PASSWORD_CHANGED,
            target_type=audit.USER,
            target_id=user.id,
            target_name=user.username,
        )
        await db_session.commit()
        sign_in_browser(request, user, sign_in)  # this browser stays signed in; every other session and stream ends
        message = "Password changed. Other devices have been signed out."
        if is_htmx(request):
            return fragment("partials/password_form.html", {"user": user, "password": {"saved": message}})
        return go(request, "/account", message)


async def _browser_sign_in(
    request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, user: User
) -> UUID:
    """Record a new browser sign-in (where it came from), for the session to carry."""
    return await SignIns(db_session, settings).start(
        user, BROWSER, user_agent=request.headers.get("user-agent"), address=client_address(request)
    )


async def _sign_out(
    request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, credentials: CredentialCache
) -> None:
    """End this browser's sign-in (no longer listed, refused everywhere) and its session, with its streams."""
    credential = credential_of(request)
    if credential is not None and credential.family is not None:
        await SignIns(db_session, settings).end(credential.user_id, credential.family)
        user = request.scope.get("user")
        record(
            db_session,
            audit_context(request),
            audit.LOGOUT,
            target_type=audit.SESSION,
            target_id=credential.family,
            target_name=user.username if user is not None else None,
        )
        await db_session.commit()
    await sign_out_browser(request, credentials)


async def _sessions_context(
    db_session: AsyncSession, settings: Settings, request: Request[Any, Any, Any], uses: SignInUses | None
) -> dict[str, Any]:
    """The account page's list of where the user is signed in, this browser marked."""
    rows = await SignIns(db_session, settings).active(request.user.id)
    current = caller_family(request)
    return {"rows": [session_out(row, current, uses.last_use(row.id) if uses else None) for row in rows]}


async def _account_page(
    request: Request[User, Any, Any], db_session: AsyncSession, context: dict[str, Any], status: int = 200
) -> Template:
    """/account with `context` (a form's values and errors) and what every rendering of it shows."""
    state = request.app.state
    email = {"pending": await pending_email(db_session, request.user.id), **context.get("email", {})}
    full = {
        "profile": {},
        "password": {},
        **context,
        "tokens": context.get("tokens") or await _tokens_context(db_session, request.user, state["access_tokens"]),
        "email": email,
        "sessions": await _sessions_context(db_session, state["settings"], request, state["sign_in_uses"]),
    }
    return await page(request, db_session, "account.html", full, status)


def _password_form_errors(exc: DomainError, fields: dict[str, str]) -> tuple[dict[str, str], int]:
    """A refusal of a form that asks for the current password: its field errors (the domain's field names
    mapped by `fields`) and the page's status."""
    if isinstance(exc, InvalidCredentials):
        return {"current_password": "The current password is wrong."}, 400
    errors, _ = field_errors(exc)
    mapped = {fields.get(name, name): text for name, text in errors.items()}
    return mapped, 422 if isinstance(exc, InvalidInput) else 409


async def _tokens_context(db_session: AsyncSession, user: User, index: TokenIndex) -> dict[str, Any]:
    """The account page's list of the user's personal access tokens."""
    rows = await AccessTokens(db_session).active(user)
    return {"rows": [index.with_last_use(token_out(row)) for row in rows]}
