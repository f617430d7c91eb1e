"""Deleting credentials that can no longer be used, so the token tables do not grow for ever.

A refresh token is deleted a week after it expired or was revoked, an email token a week
after it expired or was used (the week keeps them for looking into an incident). A
refresh token that was only rotated (`replaced_at`) stays until it expires: presenting it
again is how a stolen token is noticed, and that revokes its whole family.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from sqlalchemy import delete, or_
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import EmailToken, RefreshToken
from app.domain.clock import utcnow

#: How long a spent token is kept after it stopped working.
KEEP_SPENT = timedelta(days=7)


class Purged(msgspec.Struct, frozen=True):
    refresh_tokens: int
    email_tokens: int


async def purge_spent_tokens(session: AsyncSession, now: datetime | None = None) -> Purged:
    """Delete refresh tokens expired or revoked, and email tokens expired or used, more than KEEP_SPENT ago."""
    cutoff = (now or utcnow()) - KEEP_SPENT
    refresh = await session.execute(
        delete(RefreshToken).where(or_(RefreshToken.expires_at < cutoff, RefreshToken.revoked_at < cutoff))
    )
    email = await session.execute(
        delete(EmailToken).where(or_(EmailToken.expires_at < cutoff, EmailToken.used_at < cutoff))
    )
    return Purged(
        refresh_tokens=int(getattr(refresh, "rowcount", 0) or 0),
        email_tokens=int(getattr(email, "rowcount", 0) or 0),
    )
