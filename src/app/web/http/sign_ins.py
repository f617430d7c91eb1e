"""When each sign-in (app.domain.accounts.sign_ins) was last used, kept per process and written a minute at a time.

Every request signed in with a session or an access token names its sign-in; writing its
row on each request would cost more than the request. Uses are kept in memory and written
every USE_FLUSH_SECONDS (and at shutdown); the list a user reads adds this process's
unwritten uses, so their own requests show at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from uuid import UUID

import structlog
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.accounts.sign_ins import record_sign_in_use
from app.domain.clock import utcnow
from app.web.http.background import in_background

log = structlog.get_logger(__name__)

#: How often recorded uses are written.
USE_FLUSH_SECONDS = 60.0


class SignInUses:
    """The last use of each sign-in seen by this process and not written yet."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._used: dict[UUID, datetime] = {}

    def used(self, sign_in_id: UUID) -> None:
        self._used[sign_in_id] = utcnow()

    def last_use(self, sign_in_id: UUID) -> datetime | None:
        return self._used.get(sign_in_id)

    async def flush(self) -> None:
        used, self._used = self._used, {}
        if not used:
            return
        try:
            async with self._sessions() as session:
                await record_sign_in_use(session, sorted(used.items()))
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - a lost "last used" time must not stop the loop; kept for next time
            log.warning("sign_ins.last_use_not_written", sign_ins=len(used), error=type(exc).__name__)
            for sign_in_id, when in used.items():
                self._used.setdefault(sign_in_id, when)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """For Litestar's `lifespan=[...]`: write uses every USE_FLUSH_SECONDS, and once more at shutdown."""

        async def run() -> None:
            while True:
                await asyncio.sleep(USE_FLUSH_SECONDS)
                await self.flush()

        try:
            async with in_background(run(), "sign-in-uses"):
                yield
        finally:
            await self.flush()
