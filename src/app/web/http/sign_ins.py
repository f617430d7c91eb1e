"""When each sign-in (app.domain.accounts.sign_ins) was last used, kept per process and written a minute at a time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.accounts.sign_ins import record_sign_in_use
from app.web.http.last_uses import LastUses


class SignInUses(LastUses):
    """The last use of each sign-in seen by this process and not written yet."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions, record_sign_in_use, "sign-in")
