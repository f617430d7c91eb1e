"""When each credential (a personal access token, a sign-in) was last used, kept per process and written in batches.

Every request names the credential it came with; writing its row on each request would
cost more than the request. Uses are kept in memory and written every USE_FLUSH_SECONDS
(and at shutdown) by the domain's `write` for that kind of credential; a list a user
reads adds this process's unwritten uses, so their own requests show at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from uuid import UUID

import structlog
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.clock import utcnow
from app.web.http.background import in_background

log = structlog.get_logger(__name__)

#: How often recorded uses are written.
USE_FLUSH_SECONDS = 60.0

#: Writes the last uses it is given (never moving one back), without committing.
WriteUses = Callable[[AsyncSession, Iterable[tuple[UUID, datetime]]], Awaitable[None]]


class LastUses:
    """The last use of each credential of one kind seen by this process and not written yet."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], write: WriteUses, name: str) -> None:
        self._sessions = sessions
        self._write = write
        self._name = name
        self._used: dict[UUID, datetime] = {}

    def used(self, key: UUID) -> None:
        self._used[key] = utcnow()

    def last_use(self, key: UUID) -> datetime | None:
        """This process's use that is not written yet."""
        return self._used.get(key)

    async def flush(self) -> None:
        used, self._used = self._used, {}
        if not used:
            return
        try:
            async with self._sessions() as session:
                await self._write(session, sorted(used.items()))
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - a lost "last used" time must not stop the loop; kept for next time
            log.warning("last_use_not_written", credentials=self._name, count=len(used), error=type(exc).__name__)
            for key, when in used.items():
                self._used.setdefault(key, when)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """For Litestar's `lifespan=[...]`: write uses every USE_FLUSH_SECONDS, and once more at shutdown."""

        async def run() -> None:
            while True:
                await asyncio.sleep(USE_FLUSH_SECONDS)
                await self.flush()

        try:
            async with in_background(run(), f"{self._name}-uses"):
                yield
        finally:
            await self.flush()
