"""Who is calling: bearer access tokens (API clients), session cookies (browsers), external OIDC tokens.

The middleware refuses by itself only a personal access token used beyond its scopes (a 403
naming the scope it lacks): otherwise it sets `request.user` (or None), and the
`requires_user` / `requires_superuser` guards refuse. Bearer tokens are accepted
everywhere; the session cookie only for pages and the live-event stream (the rest of
the API is for bearer clients, so it needs no CSRF protection).

Personal access tokens (`pat_...`, app.domain.accounts.access_tokens) are looked up by
hash once per process (app.web.http.access_tokens) and then checked like any credential.

Access tokens are short-lived JWTs (Litestar's `Token`) carrying the user's
`credentials_version` and their refresh family. Whether a token or session may still act
(user active, version current, family not revoked) is asked of the process's
CredentialCache (app.web.http.credentials): no database round trip while it remembers the
user, and forgotten on every process the moment a revocation is announced. Each request
gets its own detached User (handlers may `merge(user, load=False)` it into their session).

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

from app.config import Settings
from app.domain.accounts.access_tokens import looks_like_access_token
from app.domain.accounts.models import User
from app.domain.accounts.revocation import Credential
from app.domain.clock import utcnow
from app.web.http.access_tokens import TokenIndex, required_scope
from app.web.http.credentials import CREDENTIAL_SCOPE_KEY, CredentialCache, credential_of
from app.web.http.sign_ins import SignInUses

ALGORITHM = "HS256"
ISSUER = "app"
AUDIENCE = "app-api"
SESSION_USER = "user_id"
SESSION_VERSION = "ver"
#: The browser session's sign-in (app.domain.accounts.sign_ins): listed, and ended, by its id.
SESSION_SIGN_IN = "sid"
_ROTATE = "_rotate"
SESSION_PATHS = ("/api/v1/events",)
SESSION_COOKIE = "session"


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

    def read(self, encoded: str) -> tuple[uuid.UUID, int, uuid.UUID | None]:
        """(user id, credentials version, refresh family) of a valid token; NotAuthorizedException otherwise.

        A token's claims depend on its text only, so the claims of valid tokens are kept
        (checking a signature and converting claims is a good part of a small request's
        cost); the expiry is checked again on every use. Whether the user may still use
        it is not kept: the caller reads the user every time.
        """
        user_id, version, family, expires = self._claims(encoded)
        if expires <= time.time():
            raise NotAuthorizedException()
        return user_id, version, family

    def _decode_claims(self, encoded: str) -> tuple[uuid.UUID, int, uuid.UUID | None, float]:
        token = self.decode(encoded)
        try:
            family = token.extras.get("fam")
            return (
                uuid.UUID(token.sub),
                int(token.extras.get("ver", 0)),
                uuid.UUID(str(family)) if family else None,
                token.exp.timestamp(),
            )
        except (TypeError, ValueError) as exc:
            raise NotAuthorizedException() from exc


class ExternalIdentities(Protocol):
    """Bearer tokens signed by an external identity provider (OIDC_ISSUER), see app.web.api.oidc."""

    def looks_external(self, token: str) -> bool: ...

    async def user_for(self, token: str) -> User | None:
        """The local user the token's identity is linked to; None when the token is not valid.

        A valid token that cannot sign in raises the domain's ExternalSignInRefused (a 401
        whose detail says what to do: its email is another account's, or unverified)."""
        ...


class AuthMiddleware(AbstractAuthenticationMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: CredentialCache,
        tokens: AccessTokens,
        personal_tokens: TokenIndex,
        sign_in_uses: SignInUses,
        external: ExternalIdentities | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.credentials = credentials
        self.tokens = tokens
        self.personal_tokens = personal_tokens
        self.sign_in_uses = sign_in_uses
        self.external = external

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return AuthenticationResult(user=await self._bearer_user(connection, credentials.strip()), auth="bearer")
        path = connection.scope["path"]
        if not path.startswith("/api/") or path.startswith(SESSION_PATHS):
            session = connection.scope.get("session")
            if isinstance(session, dict) and SESSION_USER in session:
                user = await self._session_user(connection, session)
                return AuthenticationResult(user=user, auth="session" if user else None)
        return AuthenticationResult(user=None, auth=None)

    async def _bearer_user(self, connection: ASGIConnection[Any, Any, Any, Any], token: str) -> User | None:
        if looks_like_access_token(token):
            return await self._personal_token_user(connection, token)
        if self.external is not None and self.external.looks_external(token):
            user: User | None = await self.external.user_for(token)
            return user if user is not None and user.is_active else None
        try:
            user_id, version, family = self.tokens.read(token)
        except NotAuthorizedException:
            return None
        return await self._let_in(connection, Credential(user_id=user_id, version=version, family=family))

    async def _personal_token_user(self, connection: ASGIConnection[Any, Any, Any, Any], token: str) -> User | None:
        """A personal access token acts as its user within its scopes; beyond them, a 403 that says so."""
        grant = await self.personal_tokens.grant(token)
        if grant is None:
            return None
        needed = required_scope(str(connection.scope.get("method", "GET")), connection.scope["path"])
        credential = Credential(
            user_id=grant.user_id, version=grant.version, family=grant.token_id, scopes=grant.scopes
        )
        user = await self._let_in(connection, credential)
        if user is None:
            return None
        if needed is None:
            raise PermissionDeniedException(detail="A personal access token cannot do this; sign in instead.")
        if needed not in grant.scopes:
            raise PermissionDeniedException(detail=f"This personal access token lacks the {needed!r} scope.")
        self.personal_tokens.used(grant.token_id)
        return user

    async def _session_user(
        self, connection: ASGIConnection[Any, Any, Any, Any], session: dict[str, Any]
    ) -> User | None:
        """The session's user while its credential holds; a session that no longer does is dropped (from the
        store too, when the answer goes out): what ended it (sign-out, a password change, its sign-in ended,
        the account deleted) is for good, and a refused session is not kept alive by being presented."""
        credential = _session_credential(session, connection.cookies.get(SESSION_COOKIE))
        user = await self._let_in(connection, credential) if credential is not None else None
        if user is None:
            connection.scope["session"] = {}
        return user

    async def _let_in(self, connection: ASGIConnection[Any, Any, Any, Any], credential: Credential) -> User | None:
        state = await self.credentials.state(credential.user_id)
        if state is None or not state.allows(credential.version, credential.family):
            return None
        connection.scope[CREDENTIAL_SCOPE_KEY] = credential  # type: ignore[literal-required]
        if credential.family is not None and credential.scopes is None:  # a sign-in (not a personal access token)
            self.sign_in_uses.used(credential.family)
        return state.user()


def _session_credential(session: dict[str, Any], session_id: str | None) -> Credential | None:
    """What a browser session stands for (its sign-in as the family); None for a malformed one."""
    try:
        user_id = uuid.UUID(str(session[SESSION_USER]))
        version = int(session.get(SESSION_VERSION, -1))
        sign_in = uuid.UUID(str(session[SESSION_SIGN_IN])) if SESSION_SIGN_IN in session else None
    except (TypeError, ValueError):
        return None
    return Credential(user_id=user_id, version=version, family=sign_in, session_id=session_id)


async def requires_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if connection.scope.get("user") is None:
        raise NotAuthorizedException(detail="Sign in first.", headers={"WWW-Authenticate": "Bearer"})


async def requires_superuser(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    await requires_user(connection, handler)
    if not connection.scope["user"].is_superuser:
        raise PermissionDeniedException(detail="Only administrators may do this.")


# --- browser sessions ------------------------------------------------------------------------


def sign_in_browser(connection: ASGIConnection[Any, Any, Any, Any], user: User, sign_in: uuid.UUID) -> None:
    """Bind the session to `user` and its sign-in (app.domain.accounts.sign_ins) under a new session id (no
    fixation)."""
    connection.scope["session"] = {
        SESSION_USER: str(user.id),
        SESSION_VERSION: user.credentials_version,
        SESSION_SIGN_IN: str(sign_in),
        _ROTATE: True,
    }


async def sign_out_browser(connection: ASGIConnection[Any, Any, Any, Any], credentials: CredentialCache) -> None:
    """End this browser's session now: gone from the store first, so its open streams find it gone."""
    credential = credential_of(connection)
    if session_id := connection.cookies.get(SESSION_COOKIE):
        await connection.app.stores.get("sessions").delete(session_id)
    connection.clear_session()
    if credential is not None:
        credentials.announce([credential.user_id])


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
        key=SESSION_COOKIE,
        store="sessions",
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=settings.base_url.startswith("https://"),
    )
