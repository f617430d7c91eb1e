"""Password hashing with argon2id, always off the event loop.

Hashing costs tens to hundreds of milliseconds of CPU and memory: it runs in worker
threads, at most `PASSWORD_HASH_THREADS` at a time so that a login storm queues
instead of exhausting memory. An unknown user is checked against a dummy hash so
that it costs the same time as a wrong password.
"""

from __future__ import annotations

import anyio
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.config import Settings


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._limiter = anyio.CapacityLimiter(settings.password_hash_threads)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). A missing hash is checked against a dummy one and never matches."""
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password that matches nothing")
            await anyio.to_thread.run_sync(self._check, self._dummy, password, limiter=self._limiter)
            return False, False
        ok = await anyio.to_thread.run_sync(self._check, password_hash, password, limiter=self._limiter)
        return ok, ok and self._hasher.check_needs_rehash(password_hash)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
