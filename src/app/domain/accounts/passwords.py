"""Password hashing with argon2id, always off the event loop, and below it in CPU priority.

Hashing costs tens to hundreds of milliseconds of CPU and memory: it runs in a thread
pool of its own, at most `PASSWORD_HASH_THREADS` at a time, so that a login storm
queues instead of exhausting memory. The pool's threads run at a lower CPU priority
(nice +HASHING_NICE; the threads argon2 starts for its lanes inherit it): while logins
keep every core busy, the event loop thread still gets the CPU the moment it has work,
so other requests are not kept waiting behind the hashes. An unknown user is checked
against a dummy hash so that it costs the same time as a wrong password.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.config import Settings

HASHING_NICE = 10
T = TypeVar("T")


def _lower_priority() -> None:
    """Lower the calling thread's CPU priority (Linux: nice applies per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.password_hash_threads, thread_name_prefix="password-hash", initializer=_lower_priority
        )
        self._dummy: str | None = None

    async def _off_loop(self, work: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    async def hash(self, password: str) -> str:
        return await self._off_loop(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). A missing hash is checked against a dummy one and never matches."""
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password that matches nothing")
            await self._off_loop(self._check, self._dummy, password)
            return False, False
        ok = await self._off_loop(self._check, password_hash, password)
        return ok, ok and self._hasher.check_needs_rehash(password_hash)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
