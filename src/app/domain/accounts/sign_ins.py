"""Where a user is signed in: browser sessions and API sign-ins (refresh families), listed and ended one by one.

A sign-in row is written when a browser signs in (its id goes into the server-side session)
or an API client logs in (its id is the refresh family's). It holds what the user needs to
recognise it (kind, user agent, address, when it started and was last used) and no secret.

Ending one is a revocation like a logout (app.domain.accounts.revocation): the row is marked
revoked, an API sign-in's refresh family with it, and the user is announced on commit, so
every process stops accepting what it let in (access tokens, the browser session, their event
streams) at once. A browser sign-in's id counts as revoked for SESSION_DAYS after it ended
(a browser session lives at most that long unused, and one refused is dropped at once).

Which sign-ins are active: an API one while its refresh family has a usable token; a browser
one while it is unrevoked and was used within SESSION_DAYS. Sign-ins made before this table
existed (older browser sessions) are not listed; a password change ends them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

import msgspec
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.models import RefreshToken, SignIn, User
from app.domain.accounts.revocation import users_changed
from app.domain.clock import utcnow
from app.domain.errors import NotFound

SignInKind = Literal["browser", "api"]
BROWSER: Literal["browser"] = "browser"
API: Literal["api"] = "api"
MAX_USER_AGENT = 300
MAX_ADDRESS = 64


class SessionOut(msgspec.Struct, frozen=True, kw_only=True):
    """One place the user is signed in, as they see it; `current` is the one asking."""

    id: UUID
    kind: SignInKind
    created_at: datetime
    last_used_at: datetime | None
    user_agent: str | None
    ip_address: str | None
    current: bool = False


def _printable(text: str | None, limit: int) -> str | None:
    """What a client sent, kept for display: control characters dropped, cut to the column's size."""
    if not text:
        return None
    kept = "".join(c for c in text if c.isprintable())[:limit].strip()
    return kept or None


def session_out(row: SignIn, current: UUID | None = None, last_use: datetime | None = None) -> SessionOut:
    """The row as listed; `last_use` is a later use this process has not written yet."""
    last_used = row.last_used_at
    if last_use is not None and (last_used is None or last_used < last_use):
        last_used = last_use
    kind: SignInKind = API if row.kind == API else BROWSER
    return SessionOut(
        id=row.id,
        kind=kind,
        created_at=row.created_at,
        last_used_at=last_used,
        user_agent=row.user_agent,
        ip_address=row.ip_address,
        current=row.id == current,
    )


class SignIns:
    """A user's sign-ins. Works inside the caller's session and only flushes."""

    def __init__(self, session: AsyncSession, settings: Settings) -> None:
        self.session = session
        self.session_lifetime = timedelta(days=settings.session_days)

    async def start(
        self,
        user: User,
        kind: SignInKind,
        *,
        user_agent: str | None = None,
        address: str | None = None,
        sign_in_id: UUID | None = None,
    ) -> UUID:
        """Record a new sign-in (an API one under its refresh family's id); returns its id."""
        row = SignIn(
            user_id=user.id,
            kind=kind,
            user_agent=_printable(user_agent, MAX_USER_AGENT),
            ip_address=_printable(address, MAX_ADDRESS),
            created_at=utcnow(),
        )
        if sign_in_id is not None:
            row.id = sign_in_id
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def active(self, user_id: UUID) -> Sequence[SignIn]:
        """The user's sign-ins that still let someone in, most recently used first."""
        now = utcnow()
        live_family = exists().where(
            RefreshToken.family_id == SignIn.id,
            RefreshToken.revoked_at.is_(None),
            RefreshToken.replaced_at.is_(None),
            RefreshToken.expires_at > now,
        )
        recent = func.coalesce(SignIn.last_used_at, SignIn.created_at)
        rows = await self.session.scalars(
            select(SignIn)
            .where(
                SignIn.user_id == user_id,
                SignIn.revoked_at.is_(None),
                or_(
                    and_(SignIn.kind == API, live_family),
                    and_(SignIn.kind == BROWSER, recent > now - self.session_lifetime),
                ),
            )
            .order_by(recent.desc(), SignIn.id.desc())
        )
        return rows.all()

    async def revoke(self, user_id: UUID, sign_in_id: UUID) -> str:
        """End one of the user's active sign-ins at once (announced on commit); its kind. NotFound otherwise."""
        found = next((row for row in await self.active(user_id) if row.id == sign_in_id), None)
        if found is None:
            raise NotFound("No such session.")
        await self.end(user_id, sign_in_id)
        return found.kind

    async def end(self, user_id: UUID, sign_in_id: UUID) -> None:
        """Mark the sign-in revoked, with its refresh family (if it is an API one); announced on commit."""
        now = utcnow()
        await self.session.execute(
            update(SignIn)
            .where(SignIn.id == sign_in_id, SignIn.user_id == user_id, SignIn.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await self.session.execute(
            update(RefreshToken)
            .where(
                RefreshToken.family_id == sign_in_id,
                RefreshToken.user_id == user_id,
                RefreshToken.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        users_changed(self.session, [user_id])
        await self.session.flush()

    async def revoke_all(self, user_id: UUID) -> int:
        """End every active sign-in of the user (announced on commit); how many there were."""
        rows = await self.active(user_id)
        for row in rows:
            await self.end(user_id, row.id)
        return len(rows)


async def record_sign_in_use(session: AsyncSession, used: Iterable[tuple[UUID, datetime]]) -> None:
    """Set each sign-in's last use (never moving it back); the web app batches uses a minute at a time."""
    for sign_in_id, when in used:
        await session.execute(
            update(SignIn)
            .where(SignIn.id == sign_in_id, or_(SignIn.last_used_at.is_(None), SignIn.last_used_at < when))
            .values(last_used_at=when)
        )
