"""Personal access tokens: named, scoped, expiring API credentials for scripts.

A user makes one while signed in (never with another token), sees it once, and revokes
it whenever they like. Only its SHA-256 hash is stored, with a short prefix to tell tokens
apart in a list. A token acts for its user as an access token does, limited to its scopes
(`read`, `write`, `admin`), until it expires, is revoked, or the user's credentials move on
(a password change or reset, deactivation): it carries the `credentials_version` it was
made under, like every other credential.

Revocation takes effect at once on every process through the same path as a sign-out:
the token's id is one of the user's revoked "families" (app.domain.accounts.revocation),
and revoking announces the user, so caches drop their copy and streams opened with the
token end.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal, cast
from uuid import UUID

import msgspec
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.domain.accounts.models import PersonalAccessToken, User
from app.domain.accounts.revocation import users_changed
from app.domain.accounts.services import token_hash
from app.domain.clock import utcnow
from app.domain.database import read
from app.domain.errors import InvalidInput, LimitReached, NotFound

#: What a token may be used for; a request needs one of them (app.web.http.auth decides which).
Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
#: Every token starts with this: a bearer credential that is a personal access token, not a JWT.
PREFIX = "pat_"
#: Characters of a token kept in the clear to tell tokens apart in a list (the prefix and 8 more).
SHOWN = len(PREFIX) + 8
#: Longest lifetime, and the default.
MAX_DAYS = 365
DEFAULT_DAYS = 30
#: Unexpired, unrevoked tokens a user may hold at once.
MAX_ACTIVE = 50
MAX_NAME = 100


class NewAccessToken(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a user asks for: a name to recognise it by, its scopes, and how many days it lives."""

    name: str
    scopes: list[Scope]
    expires_in_days: int = DEFAULT_DAYS


class AccessTokenOut(msgspec.Struct, frozen=True, kw_only=True):
    """A token as its owner sees it in a list: never the token itself."""

    id: UUID
    name: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class CreatedAccessToken(AccessTokenOut, frozen=True, kw_only=True):
    """The answer to a creation: the only time the token is shown."""

    token: str


class TokenGrant(msgspec.Struct, frozen=True):
    """What a presented token stands for (kept per process by the web's token index)."""

    token_id: UUID
    user_id: UUID
    version: int
    scopes: frozenset[str]
    expires_at: float


def looks_like_access_token(bearer: str) -> bool:
    return bearer.startswith(PREFIX)


def token_out(token: PersonalAccessToken) -> AccessTokenOut:
    return AccessTokenOut(
        id=token.id,
        name=token.name,
        scopes=token.scopes.split(),
        prefix=token.prefix,
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
    )


def check_new_token(request: NewAccessToken, user: User) -> tuple[str, list[Scope]]:
    """The cleaned name and scopes, or InvalidInput naming each field that breaks a rule."""
    errors: dict[str, str] = {}
    name = " ".join(request.name.split())
    if not name:
        errors["name"] = "must not be empty"
    elif len(name) > MAX_NAME:
        errors["name"] = f"must be at most {MAX_NAME} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        errors["name"] = "must not contain control characters"
    scopes = [scope for scope in SCOPES if scope in request.scopes]
    if not scopes:
        errors["scopes"] = "name at least one of read, write, admin"
    elif "admin" in scopes and not user.is_superuser:
        errors["scopes"] = "admin is for administrators only"
    if not 1 <= request.expires_in_days <= MAX_DAYS:
        errors["expires_in_days"] = f"must be between 1 and {MAX_DAYS}"
    if errors:
        raise InvalidInput(errors)
    return name, scopes


#: Serialises a user's token creations until commit, on both databases: on Postgres a lock on the
#: user's row, on SQLite the database's one write lock, taken before the count (a no-op update).
_USERS = cast(Table, User.__table__)
_LOCK_USER = (
    update(_USERS)
    .where(_USERS.c.id == bindparam("user_id"))
    .values(id=_USERS.c.id, updated_at=_USERS.c.updated_at)  # named, so that no `onupdate` fires
)


class AccessTokens:
    """A user's personal access tokens. Works inside the caller's session and only flushes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, user: User, request: NewAccessToken) -> CreatedAccessToken:
        """Make a token; at most MAX_ACTIVE at once, counted under a lock on the user's row, so
        that concurrent requests cannot pass the cap together."""
        name, scopes = check_new_token(request, user)
        await self.session.execute(_LOCK_USER, {"user_id": user.id})
        now = utcnow()
        active = await self.session.scalar(
            select(func.count())
            .select_from(PersonalAccessToken)
            .where(
                PersonalAccessToken.user_id == user.id,
                PersonalAccessToken.revoked_at.is_(None),
                PersonalAccessToken.expires_at > now,
            )
        )
        if (active or 0) >= MAX_ACTIVE:
            raise LimitReached(f"You have {MAX_ACTIVE} active access tokens, the most allowed; revoke one first.")
        raw = PREFIX + secrets.token_urlsafe(32)
        token = PersonalAccessToken(
            user_id=user.id,
            name=name,
            scopes=" ".join(scopes),
            prefix=raw[:SHOWN],
            token_hash=token_hash(raw),
            credentials_version=user.credentials_version,
            created_at=now,
            expires_at=now + timedelta(days=request.expires_in_days),
        )
        self.session.add(token)
        await self.session.flush()
        return CreatedAccessToken(**msgspec.structs.asdict(token_out(token)), token=raw)

    async def active(self, user: User) -> Sequence[PersonalAccessToken]:
        """The user's tokens that still work (as far as their own row says), newest first."""
        rows = await self.session.scalars(
            select(PersonalAccessToken)
            .where(
                PersonalAccessToken.user_id == user.id,
                PersonalAccessToken.revoked_at.is_(None),
                PersonalAccessToken.expires_at > utcnow(),
                PersonalAccessToken.credentials_version == user.credentials_version,
            )
            .order_by(PersonalAccessToken.created_at.desc(), PersonalAccessToken.id.desc())
        )
        return rows.all()

    async def revoke(self, user: User, token_id: UUID) -> None:
        """End one of the user's tokens at once (announced on commit: its streams end too)."""
        revoked = await self.session.scalar(
            update(PersonalAccessToken)
            .where(
                PersonalAccessToken.id == token_id,
                PersonalAccessToken.user_id == user.id,
                PersonalAccessToken.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
            .returning(PersonalAccessToken.id)
        )
        if revoked is None:
            raise NotFound("No such access token.")
        users_changed(self.session, [user.id])
        await self.session.flush()

    async def revoke_all(self, user: User) -> int:
        """End every token of the user at once (announced on commit); how many there were."""
        revoked = await self.session.scalars(
            update(PersonalAccessToken)
            .where(PersonalAccessToken.user_id == user.id, PersonalAccessToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .returning(PersonalAccessToken.id)
        )
        count = len(revoked.all())
        if count:
            users_changed(self.session, [user.id])
        await self.session.flush()
        return count


_GRANT_BY_HASH = select(
    PersonalAccessToken.id,
    PersonalAccessToken.user_id,
    PersonalAccessToken.credentials_version,
    PersonalAccessToken.scopes,
    PersonalAccessToken.expires_at,
).where(PersonalAccessToken.token_hash == bindparam("token_hash"), PersonalAccessToken.revoked_at.is_(None))


async def grant_for(reads: AsyncEngine, raw: str) -> TokenGrant | None:
    """What an unrevoked token stands for, in one read; None for a token nobody issued (or one revoked)."""
    rows = await read(reads, _GRANT_BY_HASH, {"token_hash": token_hash(raw)})
    if not rows:
        return None
    token_id, user_id, version, scopes, expires_at = rows[0]
    return TokenGrant(token_id, user_id, version, frozenset(scopes.split()), expires_at.timestamp())


async def record_use(session: AsyncSession, used: Iterable[tuple[UUID, datetime]]) -> None:
    """Set each token's last use (never moving it back); the web app batches uses a minute at a time."""
    for token_id, when in used:
        await session.execute(
            update(PersonalAccessToken)
            .where(
                PersonalAccessToken.id == token_id,
                (PersonalAccessToken.last_used_at.is_(None)) | (PersonalAccessToken.last_used_at < when),
            )
            .values(last_used_at=when)
        )
