"""Abuse limits: fixed-window counters in a Litestar store (Redis in services mode, so they hold
across processes; memory embedded). Over the limit is a 429 with Retry-After.

Increments are read-then-write, so concurrent requests may undercount by a few; the
limits are a brake on guessing, not an exact quota.
"""

from __future__ import annotations

from litestar.exceptions import TooManyRequestsException
from litestar.stores.base import Store


class Limiter:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _count(self, key: str) -> int:
        raw = await self.store.get(key)
        return int(raw) if raw else 0

    async def _retry_after(self, key: str, window: int) -> int:
        remaining = await self.store.expires_in(key)
        return max(1, remaining if remaining is not None and remaining > 0 else window)

    async def refuse_if_over(self, key: str, limit: int, window: int) -> None:
        """429 when `key` already counted `limit` events in this window."""
        if await self._count(key) >= limit:
            raise TooManyRequestsException(
                detail="Too many attempts; try again later.",
                headers={"Retry-After": str(await self._retry_after(key, window))},
            )

    async def count(self, key: str, window: int) -> None:
        """Count one event in `key`'s window (the window starts at its first event)."""
        current = await self._count(key)
        remaining = await self.store.expires_in(key) if current else None
        await self.store.set(key, str(current + 1), expires_in=remaining if remaining and remaining > 0 else window)

    async def take(self, key: str, limit: int, window: int) -> None:
        """Count one event, refusing it with a 429 when the window is already full."""
        await self.refuse_if_over(key, limit, window)
        await self.count(key, window)

    async def clear(self, key: str) -> None:
        await self.store.delete(key)
