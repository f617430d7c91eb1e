"""Who is calling: bearer access tokens (API clients), session cookies (browsers), external OIDC tokens.

The middleware never refuses a request by itself: it sets `request.user` (or None), and
the `requires_user` / `requires_superuser` guards refuse. Bearer tokens are accepted
everywhere; the session cookie only for pages and the live-event stream (the rest of
the API is for bearer clients, so it needs no CSRF protection).

Access tokens are short-lived JWTs (Litestar's `Token`) carrying the user's
`credentials_version`; each request re-reads the user, so a deactivated user, a
password change or a reset stops every token and session at once. That read is one
round trip: a single SELECT on the read engine (autocommit, no ping; see
app.domain.database), its row made into a detached User as a session would leave it
(handlers may `merge(user, load=False)` it into theirs). The user is not cached: a
cache would have to be cleared in every web process the moment a user is deactivated.

The guards are coroutines: Litestar runs a plain function guard in a worker thread.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from functools import lru_cache
from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.security.jwt import Token
from litestar.types import ASGIApp, Empty, Message, ScopeSession
from litestar.utils.dataclass import extract_dataclass_items
from sqlalchemy import bindparam, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import make_transient_to_detached

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.clock import utcnow
from app.domain.database import read

ALGORITHM = "HS256"
ISSUER = "app"
AUDIENCE = "app-api"
SESSION_USER = "user_id"
SESSION_VERSION = "ver"
_ROTATE = "_rotate"
SESSION_PATHS = ("/api/v1/events",)


#: How many decoded access tokens a process remembers (see AccessTokens.read).
DECODED_TOKENS = 4096


class AccessTokens:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.secret_key
        self.lifetime = timedelta(minutes=settings.access_token_minutes)
        self._claims = lru_cache(maxsize=DECODED_TOKENS)(self._decode_claims)

    def issue(self, user: User, family_id: uuid.UUID | None = None) -> tuple[str, int]:
        """An encoded access token and its lifetime in seconds; `fam` names its refresh family."""
        token = Token(
            sub=str(user.id),
            exp=utcnow() + self.lifetime,
            iss=ISSUER,
            aud=AUDIENCE,
            jti=uuid.uuid4().hex,
            extras={"ver": user.credentials_version, "fam": str(family_id) if family_id else None},
        )
        return token.encode(self.secret, ALGORITHM), int(self.lifetime.total_seconds())

    def decode(self, encoded: str) -> Token:
        return Token.decode(
            encoded, self.secret, ALGORITHM, audience=AUDIENCE, issuer=ISSUER, require_claims=["exp", "sub", "jti"]
        )

    def read(self, encoded: str) -> tuple[uuid.UUID, int]:
        """(user id, credentials version) of a valid token; NotAuthorizedException otherwise.

        A token's claims depend on its text only, so the claims of valid tokens are kept
        (checking a signature and converting claims is a good part of a small request's
        cost); the expiry is checked again on every use. Whether the user may still use
        it is not kept: the caller reads the user every time.
        """
        user_id, version, expires = self._claims(encoded)
        if expires <= time.time():
            raise NotAuthorizedException()
        return user_id, version

    def _decode_claims(self, encoded: str) -> tuple[uuid.UUID, int, float]:
        token = self.decode(encoded)
        try:
            return uuid.UUID(token.sub), int(token.extras.get("ver", 0)), token.exp.timestamp()
        except ValueError as exc:
            raise NotAuthorizedException() from exc


class ExternalIdentities(Protocol):
    """Bearer tokens signed by an external identity provider (OIDC_ISSUER), see app.web.oidc."""

    def looks_external(self, token: str) -> bool: ...

    async def user_for(self, token: str) -> User | None: ...


class AuthMiddleware(AbstractAuthenticationMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        *,
        reads: AsyncEngine,
        tokens: AccessTokens,
        external: ExternalIdentities | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.reads = reads
        self.tokens = tokens
        self.external = external

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return AuthenticationResult(user=await self._bearer_user(credentials.strip()), auth="bearer")
        path = connection.scope["path"]
        if not path.startswith("/api/") or path.startswith(SESSION_PATHS):
            session = connection.scope.get("session")
            if isinstance(session, dict) and SESSION_USER in session:
                user = await self._active(session[SESSION_USER], session.get(SESSION_VERSION))
                return AuthenticationResult(user=user, auth="session" if user else None)
        return AuthenticationResult(user=None, auth=None)

    async def _bearer_user(self, token: str) -> User | None:
        if self.external is not None and self.external.looks_external(token):
            user: User | None = await self.external.user_for(token)
            return user if user is not None and user.is_active else None
        try:
            user_id, version = self.tokens.read(token)
        except NotAuthorizedException:
            return None
        return await self._active(user_id, version)

    async def _active(self, user_id: object, version: object) -> User | None:
        try:
            key = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
        except ValueError:
            return None
        user = await load_user(self.reads, key)
        if user is None or not user.is_active or user.credentials_version != version:
            return None
        return user


#: (attribute, column) of every column a User maps, and the statement that reads them for one user.
_USER_ATTRIBUTES = tuple((prop.key, prop.columns[0]) for prop in inspect(User).column_attrs)
_USER_BY_ID = select(*(column for _, column in _USER_ATTRIBUTES)).where(User.id == bindparam("user_id"))


async def load_user(reads: AsyncEngine, user_id: uuid.UUID) -> User | None:
    """The user with this id, detached (as if loaded by a session that has closed), in one round trip."""
    rows = await read(reads, _USER_BY_ID, {"user_id": user_id})
    if not rows:
        return None
    user = User(**{key: value for (key, _), value in zip(_USER_ATTRIBUTES, rows[0], strict=True)})
    make_transient_to_detached(user)
    return user


async def requires_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if connection.scope.get("user") is None:
        raise NotAuthorizedException(detail="Sign in first.", headers={"WWW-Authenticate": "Bearer"})


async def requires_superuser(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    await requires_user(connection, handler)
    if not connection.scope["user"].is_superuser:
        raise PermissionDeniedException(detail="Only administrators may do this.")


# --- browser sessions ------------------------------------------------------------------------


def sign_in_browser(connection: ASGIConnection[Any, Any, Any, Any], user: User) -> None:
    """Bind the session to `user` under a new session id (no fixation)."""
    connection.scope["session"] = {SESSION_USER: str(user.id), SESSION_VERSION: user.credentials_version, _ROTATE: True}


def sign_out_browser(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    connection.clear_session()


class RotatingSessionBackend(ServerSideSessionBackend):
    """Server-side sessions whose id is replaced when `sign_in_browser` asks for it.

    Only sessions with something in them are stored. Litestar's backend would store an empty
    session (and set a cookie) for every request without one: every health probe, metrics
    scrape and API call would leave an entry behind (a file under var/sessions/ embedded, a
    Redis key for `SESSION_DAYS`), and a made-up session id would be stored as sent.
    """

    async def store_in_message(
        self, scope_session: ScopeSession, message: Message, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> None:
        if scope_session is Empty or not scope_session:
            await self._end(message, connection)
            return
        if isinstance(scope_session, dict) and scope_session.pop(_ROTATE, False):
            store = self.config.get_store_from_app(connection.scope["app"])
            if old := connection.cookies.get(self.config.key):
                await self.delete(old, store=store)
            connection.scope["_new_session_id"] = self.generate_session_id()  # type: ignore[typeddict-unknown-key]
        await super().store_in_message(scope_session, message, connection)

    async def _end(self, message: Message, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        """No session to keep (signed out, or never signed in): forget the id the browser sent, if any.

        The browser is told to drop the cookie with Max-Age=0 (Litestar's own "null" cookie keeps
        the configured Max-Age, which outranks its Expires, so browsers would keep it for days).
        """
        old = connection.cookies.get(self.config.key)
        if old is None:
            return
        await self.delete(old, store=self.config.get_store_from_app(connection.scope["app"]))
        params = dict(extract_dataclass_items(self.config, exclude_none=True, include=Cookie.__dict__.keys()))
        params.update(max_age=0, expires=0)
        cookie = Cookie(key=self.config.key, value="", **params)
        MutableScopeHeaders.from_message(message).add("Set-Cookie", cookie.to_header(header=""))

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        rotated: str | None = connection.scope.get("_new_session_id")  # type: ignore[assignment]
        return rotated or super().get_session_id(connection)


class RotatingSessionConfig(ServerSideSessionConfig):
    _backend_class = RotatingSessionBackend


def session_config(settings: Settings) -> RotatingSessionConfig:
    return RotatingSessionConfig(
        key="session",
        store="sessions",
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=settings.base_url.startswith("https://"),
    )
