"""Verify bearer tokens issued by an external OpenID Connect provider.

`OIDCVerifier` reads the provider's discovery document and signing keys (JWKS) over
HTTP, caches both, and checks a token's signature and claims locally. Every failure,
of the token or of the provider, surfaces as one `ExternalTokenRejected` whose reason
is safe to show a client.

The provider is an integration point, so its fetches are retried with exponential
backoff (tenacity) inside a circuit breaker (purgatory): while the provider is down,
verification that needs a fetch fails fast instead of piling up waiting requests.

Which user a verified token is, and how a user links a provider account, are the
domain's rules (app.domain.accounts.identities): `OIDCIdentities` and
`IdentitiesController` are its doors for the auth middleware and the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, cast
from uuid import UUID

import httpx
import jwt
import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from app.domain.accounts.identities import (
    LINK_PATH,
    Identities,
    IdentityLink,
    IdentityOut,
    ProviderIdentity,
    identity_out,
)
from app.domain.accounts.models import User
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.errors import InvalidInput
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, Page
from app.web.api.accounts import AUTH_ERRORS, BEARER
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user
from app.web.http.errors import BreaksARule, Conflicting, problem

log = structlog.get_logger(__name__)

UNAVAILABLE = "identity provider unavailable"
#: OIDC Core 2: a subject is at most 255 ASCII characters (and the column holds no more).
MAX_SUBJECT = 255
#: Tries at binding a first sign-in: a concurrent first sign-in of the same identity can win the first.
SIGN_IN_ATTEMPTS = 2
_BREAKER = "oidc-provider"


class ExternalTokenRejected(Exception):
    """The token is not accepted; `reason` says why in words fit for a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ProviderError(Exception):
    """The provider answered, but not with what OIDC discovery promises."""


def _transient(exc: BaseException) -> bool:
    """Worth another try: the network failed, or the provider said it is overloaded or broken."""
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return status >= 500 or status == 429
    return False


class OIDCVerifier:
    """Verifies tokens of one issuer for one audience; share one instance per process."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        http: httpx.AsyncClient | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256"),
        leeway_seconds: float = 30.0,
        timeout_seconds: float = 5.0,
        discovery_ttl_seconds: float = 24 * 3600.0,
        jwks_ttl_seconds: float = 600.0,
        unknown_kid_refetch_seconds: float = 30.0,
        retry_attempts: int = 3,
        backoff_initial_seconds: float = 0.2,
        backoff_max_seconds: float = 2.0,
        breaker_threshold: int = 5,
        breaker_reset_seconds: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.leeway = leeway_seconds
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout_seconds)
        self._discovery_ttl = discovery_ttl_seconds
        self._jwks_ttl = jwks_ttl_seconds
        self._refetch_interval = unknown_kid_refetch_seconds
        self._retry_attempts = retry_attempts
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        # One breaker per verifier: its state lives in this factory's in-memory store.
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=breaker_threshold, default_ttl=breaker_reset_seconds
        )
        # Serialises fetches so concurrent requests on a cold or stale cache share one fetch.
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._discovery_at = float("-inf")
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at: float | None = None
        self._last_unknown_kid_refetch = float("-inf")

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier made it."""
        if self._owns_http:
            await self._http.aclose()

    def looks_external(self, token: str) -> bool:
        """True when the token claims (unverified) to come from this issuer: route it to `verify`."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.issuer

    async def verify(self, token: str) -> ProviderIdentity:
        """The identity in a valid token, or ExternalTokenRejected."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ExternalTokenRejected("malformed token") from None
        if not self.looks_external(token):  # not ours: no reason to ask the provider anything
            raise ExternalTokenRejected("wrong issuer")
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise ExternalTokenRejected("unsupported algorithm")
        if not isinstance(kid, str) or not kid:
            raise ExternalTokenRejected("unknown signing key")
        key = await self._key(kid)
        claims = self._decode(token, key)
        return self._identity(claims)

    # --- checking the token --------------------------------------------------------------

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            reason = "token expired"
        except jwt.ImmatureSignatureError:
            reason = "token not yet valid"
        except jwt.InvalidAudienceError:
            reason = "wrong audience"
        except jwt.InvalidIssuerError:
            reason = "wrong issuer"
        except jwt.InvalidSignatureError:
            reason = "bad signature"
        except jwt.InvalidAlgorithmError:
            reason = "unsupported algorithm"
        except jwt.MissingRequiredClaimError:
            reason = "missing claim"
        except jwt.PyJWTError:
            reason = "invalid token"
        raise ExternalTokenRejected(reason)

    def _identity(self, claims: Mapping[str, Any]) -> ProviderIdentity:
        """Issuer and subject name the holder; the email is only a claim (the domain decides what it is worth)."""
        subject, email = claims.get("sub"), claims.get("email")
        if not isinstance(subject, str) or not subject:
            raise ExternalTokenRejected("missing claim")
        if len(subject) > MAX_SUBJECT:
            raise ExternalTokenRejected("subject too long")
        return ProviderIdentity(
            issuer=self.issuer,
            subject=subject,
            email=email if isinstance(email, str) else None,
            email_verified=claims.get("email_verified") is True,
        )

    # --- keys ----------------------------------------------------------------------------

    async def _key(self, kid: str) -> jwt.PyJWK:
        keys = await self._current_keys()
        if kid not in keys:
            keys = await self._refetch_for_unknown_kid(kid)
        if kid not in keys:
            raise ExternalTokenRejected("unknown signing key")
        return keys[kid]

    async def _current_keys(self) -> dict[str, jwt.PyJWK]:
        """The cached keys, refreshed when older than the JWKS TTL.

        A refresh that fails keeps the keys we have (a provider outage should not stop
        tokens signed by keys we already trust); with no keys at all it is fatal.
        """
        async with self._lock:
            if self._keys_at is not None and time.monotonic() - self._keys_at < self._jwks_ttl:
                return self._keys
            try:
                await self._fetch_keys()
            except ExternalTokenRejected:
                if self._keys_at is None:
                    raise
            return self._keys

    async def _refetch_for_unknown_kid(self, kid: str) -> dict[str, jwt.PyJWK]:
        """Refetch once for a key the provider may just have rotated in.

        Anyone can send tokens with made-up kids, so these refetches are rate limited:
        at most one per `unknown_kid_refetch_seconds`, whatever the kids are.
        """
        async with self._lock:
            if kid in self._keys:  # another request refreshed while we waited
                return self._keys
            now = time.monotonic()
            if now - self._last_unknown_kid_refetch < self._refetch_interval:
                return self._keys
            self._last_unknown_kid_refetch = now
            await self._fetch_keys()
            return self._keys

    async def _fetch_keys(self) -> None:
        """Fetch discovery (when stale) and the JWKS through the breaker; the lock is held."""
        try:
            async with await self._breakers.get_breaker(_BREAKER):
                if self._jwks_uri is None or time.monotonic() - self._discovery_at >= self._discovery_ttl:
                    self._jwks_uri = await self._jwks_uri_from_discovery()
                    self._discovery_at = time.monotonic()
                self._keys = self._parse_jwks(await self._get_json(self._jwks_uri))
                self._keys_at = time.monotonic()
        except OpenedState:
            raise ExternalTokenRejected(UNAVAILABLE) from None
        except (httpx.HTTPError, ValueError, _ProviderError) as exc:  # ValueError: a body that is not JSON
            log.warning("oidc.provider_unavailable", issuer=self.issuer, error=type(exc).__name__)
            raise ExternalTokenRejected(UNAVAILABLE) from None

    async def _jwks_uri_from_discovery(self) -> str:
        document = await self._get_json(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        # OIDC Discovery 4.3: the document must name the very issuer we asked, or it is not ours.
        if document.get("issuer") != self.issuer:
            raise _ProviderError("discovery issuer mismatch")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _ProviderError("discovery without jwks_uri")
        return jwks_uri

    def _parse_jwks(self, document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
        """Signing keys by kid; keys we cannot or must not use (no kid, encryption, HS*) are skipped."""
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _ProviderError("JWKS without keys")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in self.algorithms:
                keys[kid] = key
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        """GET a JSON object, retrying transient failures with exponential backoff and jitter."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry_attempts),
            wait=wait_exponential_jitter(
                multiplier=self._backoff_initial, max=self._backoff_max, jitter=self._backoff_initial
            ),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        response: httpx.Response = await retrying(self._get, url)
        body = response.json()
        if not isinstance(body, dict):
            raise _ProviderError("not a JSON object")
        return cast(dict[str, Any], body)

    async def _get(self, url: str) -> httpx.Response:
        response = await self._http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response


class OIDCIdentities:
    """The auth middleware's door to the external provider: the user a verified token is bound to."""

    def __init__(self, verifier: OIDCVerifier, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.verifier = verifier
        self.sessions = sessions

    def looks_external(self, token: str) -> bool:
        return self.verifier.looks_external(token)

    async def user_for(self, token: str) -> User | None:
        """The token's user (made on its first sign-in), None for a token that is not valid.

        A valid token that cannot sign in (its email is another account's, or unverified)
        raises the domain's ExternalSignInRefused: a 401 whose detail says what to do.
        """
        try:
            identity = await self.verifier.verify(token)
        except ExternalTokenRejected:
            return None
        for attempt in range(1, SIGN_IN_ATTEMPTS + 1):
            try:
                async with self.sessions() as session:
                    user = await Identities(session).user_for(identity)
                    await session.commit()
                    return user
            except IntegrityError:
                if attempt == SIGN_IN_ATTEMPTS:
                    raise
        return None  # not reached: the last attempt returns or raises

    async def identity_in(self, id_token: str) -> ProviderIdentity:
        """The identity in a token presented for linking; a 422 naming why not, or a 503."""
        try:
            return await self.verifier.verify(id_token)
        except ExternalTokenRejected as exc:
            if exc.reason == UNAVAILABLE:
                raise problem(
                    503, "The identity provider is not answering; try again shortly.", headers={"Retry-After": "30"}
                ) from None
            raise InvalidInput({"id_token": exc.reason}) from None


class IdentitiesController(Controller):
    """The signed-in user's accounts at the identity provider (OIDC_ISSUER), bound by issuer and subject."""

    path = LINK_PATH
    tags = ["users"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listMyIdentities",
        description=(
            "The identity provider accounts (issuer and subject) bound to the caller, whose bearer tokens sign in "
            "as them."
        ),
        summary="Identity provider accounts linked to me",
        raises=AUTH_ERRORS,
    )
    async def list_identities(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Page[IdentityOut]:
        rows, total = await Identities(db_session).of(request.user, limit=limit, offset=offset)
        return Page(items=[identity_out(row) for row in rows], total=total, limit=limit, offset=offset)

    @post(
        operation_id="linkIdentity",
        summary="Link an identity provider account to me",
        description="Send an ID token of the provider whose email the provider verified (`email_verified: true`) "
        "and which is this account's own, verified, email. 201 when linked now, 200 when it already was.",
        status_code=HTTP_201_CREATED,
        raises=[*AUTH_ERRORS, ValidationException, BreaksARule, Conflicting, NotFoundException],
        responses={HTTP_200_OK: ResponseSpec(IdentityOut, description="Already linked to this account")},
    )
    async def link(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[IdentityLink],
        db_session: NamedDependency[AsyncSession],
        external_identities: NamedDependency[OIDCIdentities | None],
    ) -> Response[IdentityOut]:
        if external_identities is None:
            raise NotFoundException(detail="No identity provider is configured here (OIDC_ISSUER).")
        identity = await external_identities.identity_in(data.id_token)
        user = await db_session.merge(request.user, load=False)
        binding, created = await Identities(db_session).link(user, identity)
        if created:
            record(
                db_session,
                audit_context(request),
                audit.OIDC_LINKED,
                target_type=audit.IDENTITY,
                target_id=binding.id,
                target_name=user.username,
                detail={"issuer": binding.issuer, "subject": binding.subject},
            )
        return Response(identity_out(binding), status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @delete(
        "/{identity_id:uuid}",
        operation_id="unlinkIdentity",
        description=(
            "Unbinds one of the caller's identity provider accounts; 409 when it is the only way the account can "
            "sign in."
        ),
        summary="Unlink an identity provider account from me",
        status_code=HTTP_204_NO_CONTENT,
        raises=[*AUTH_ERRORS, NotFoundException, Conflicting],
    )
    async def unlink(
        self, request: Request[User, Any, Any], identity_id: FromPath[UUID], db_session: NamedDependency[AsyncSession]
    ) -> None:
        user = await db_session.merge(request.user, load=False)
        await Identities(db_session).unlink(user, identity_id)
        record(
            db_session,
            audit_context(request),
            audit.OIDC_UNLINKED,
            target_type=audit.IDENTITY,
            target_id=identity_id,
            target_name=user.username,
        )
