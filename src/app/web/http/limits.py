"""Abuse limits: atomic fixed-window counters, and the policy of which counters guard which door.

A request reserves its place in every counter that guards it *before* the work it limits
(a password hash, a token check) starts: one atomic step checks that no counter is full and
counts one in each. So N concurrent requests can never run more than the limit's number of
checks, which a read-then-count around a 140 ms hash allowed. A refused request counts in no
counter, and a window starts at its first count and never grows: whatever an attacker sends,
a counter is empty again at most one window after it filled.

Counters live in Redis in services mode (one Lua script per step, so every web process
shares them; keys under REDIS_NAMESPACE + "_limits:", where the app's `limits` store keeps
its keys) and in this process's memory embedded (one process; a step runs without an await
between its read and its write, so nothing interleaves).

Sign-in is guarded in three layers, all in LOGIN_WINDOW_SECONDS: failures per (account,
client address), per account from every address, and per address across every account. A
success gives its reservation back and clears its (account, address) failures. IPv6
clients count per /64, the block one subscriber usually holds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio
from litestar.exceptions import TooManyRequestsException

from app.config import Settings
from app.domain.accounts.errors import InvalidCredentials, InvalidToken
from app.domain.accounts.models import User
from app.domain.accounts.services import AccountService

HOUR = 3600


@dataclass(frozen=True, slots=True)
class Quota:
    """At most `limit` counts in `key` per window of `window` seconds (from the window's first count)."""

    key: str
    limit: int
    window: int


class Counters(Protocol):
    async def reserve(self, quotas: Sequence[Quota]) -> int:
        """0 after counting one in every quota; else, counting nothing, the seconds until a full one empties."""

    async def release(self, quotas: Sequence[Quota]) -> None:
        """Give back one count of each quota (a counter whose window ended stays gone)."""

    async def clear(self, keys: Sequence[str]) -> None: ...

    async def clear_all(self) -> None: ...


class MemoryCounters:
    """Counters of one process. No method awaits, so each runs as one step on the event loop."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, monotonic time its window ends)
        self._sweep_at = 1024

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._counts.get(key)
        return entry if entry is not None and entry[1] > now else None

    async def reserve(self, quotas: Sequence[Quota]) -> int:
        now = time.monotonic()
        wait = 0.0
        for quota in quotas:
            entry = self._live(quota.key, now)
            count, ends = entry if entry is not None else (0, now + quota.window)
            if count >= quota.limit:
                wait = max(wait, ends - now)
        if wait > 0:
            return max(1, math.ceil(wait))
        for quota in quotas:
            entry = self._live(quota.key, now)
            self._counts[quota.key] = (entry[0] + 1, entry[1]) if entry is not None else (1, now + quota.window)
        self._sweep(now)
        return 0

    def _sweep(self, now: float) -> None:
        """Forget ended windows once the table doubled since the last sweep (bounded by what is live)."""
        if len(self._counts) < self._sweep_at:
            return
        self._counts = {key: entry for key, entry in self._counts.items() if entry[1] > now}
        self._sweep_at = max(1024, 2 * len(self._counts))

    async def release(self, quotas: Sequence[Quota]) -> None:
        now = time.monotonic()
        for quota in quotas:
            entry = self._live(quota.key, now)
            if entry is not None and entry[0] > 0:
                self._counts[quota.key] = (entry[0] - 1, entry[1])

    async def clear(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._counts.pop(key, None)

    async def clear_all(self) -> None:
        self._counts.clear()


# KEYS: the counters; ARGV: their limits, then their windows (seconds). Returns 0, or the seconds to wait.
RESERVE = """
local n = #KEYS
local wait = 0
for i = 1, n do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i]) then
    local ms = redis.call('PTTL', KEYS[i])
    if ms < 0 then ms = tonumber(ARGV[n + i]) * 1000 end
    wait = math.max(wait, math.ceil(ms / 1000), 1)
  end
end
if wait > 0 then return wait end
for i = 1, n do
  if redis.call('INCR', KEYS[i]) == 1 or redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[n + i])
  end
end
return 0
"""

# DECR keeps a key's expiry; a key that expired is not brought back (as -1, for ever).
RELEASE = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""


class RedisCounters:
    """Counters shared by every process through Redis; each step is one Lua script, atomic there."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._reserve = client.register_script(RESERVE)
        self._release = client.register_script(RELEASE)

    def _keys(self, keys: Sequence[str]) -> list[str]:
        return [self.prefix + key for key in keys]

    async def reserve(self, quotas: Sequence[Quota]) -> int:
        args = [q.limit for q in quotas] + [q.window for q in quotas]
        return int(await self._reserve(keys=self._keys([q.key for q in quotas]), args=args))

    async def release(self, quotas: Sequence[Quota]) -> None:
        await self._release(keys=self._keys([q.key for q in quotas]))

    async def clear(self, keys: Sequence[str]) -> None:
        if keys:
            await self.client.delete(*self._keys(keys))

    async def clear_all(self) -> None:
        async for key in self.client.scan_iter(match=f"{self.prefix}*", count=500):
            await self.client.delete(key)

    async def close(self) -> None:
        await self.client.aclose()


def _digest(value: str) -> str:
    """A short fixed-size stand-in for what a client sent (keys stay small and hold no email address)."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def address_key(address: str) -> str:
    """The client's address as counted: an IPv6 address by its /64, an IPv4 one as is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return _digest(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Limiter:
    """The abuse limits of every door (the API and the pages call the same methods)."""

    def __init__(self, counters: Counters, settings: Settings) -> None:
        self.counters = counters
        self.settings = settings

    @classmethod
    def for_settings(cls, settings: Settings) -> Limiter:
        """Redis counters when REDIS_URL is set (shared by every process), else this process's memory."""
        if settings.redis_url:
            client = redis.asyncio.Redis.from_url(settings.redis_url)
            return cls(RedisCounters(client, f"{settings.redis_namespace}_limits:"), settings)
        return cls(MemoryCounters(), settings)

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """Closes the Redis connections at shutdown."""
        try:
            yield
        finally:
            if isinstance(self.counters, RedisCounters):
                await self.counters.close()

    async def reserve(self, *quotas: Quota) -> None:
        """Count one event in each quota, or none and a 429 with Retry-After when any of them is full."""
        wait = await self.counters.reserve(quotas)
        if wait:
            raise TooManyRequestsException(
                detail="Too many attempts; try again later.", headers={"Retry-After": str(wait)}
            )

    async def release(self, *quotas: Quota) -> None:
        await self.counters.release(quotas)

    async def take(self, key: str, limit: int, window: int) -> None:
        await self.reserve(Quota(key, limit, window))

    async def clear_all(self) -> None:
        """Forget every count (tests; an operator lifting a lock-out)."""
        await self.counters.clear_all()

    # The policy: which counters guard which door.

    async def registration(self, address: str) -> None:
        """One sign-up, counted per client address per hour."""
        await self.take(f"register:{address_key(address)}", self.settings.registrations_per_hour, HOUR)

    async def reset_request(self, address: str) -> None:
        """One password-reset request, counted per client address per hour."""
        await self.take(f"forgot:{address_key(address)}", self.settings.forgot_password_per_hour, HOUR)

    async def verification_email(self, user_id: object) -> None:
        """One more verification email asked for, counted per account per hour (each one goes to a mailbox)."""
        await self.take(f"verify-email:{user_id}", self.settings.verification_emails_per_hour, HOUR)

    @asynccontextmanager
    async def password_confirmation(self, user_id: object) -> AsyncIterator[None]:
        """Around checking a signed-in user's password again (changing the email, deleting the account): wrong
        ones count as failed sign-ins of the account, so a stolen token cannot be used to guess the password."""
        s = self.settings
        quota = Quota(f"login:account:user:{user_id}", s.login_failures_per_account, s.login_window_seconds)
        await self.reserve(quota)
        try:
            yield
        except InvalidCredentials:
            raise
        except BaseException:
            await self.release(quota)
            raise
        await self.release(quota)

    def login_quotas(self, account: str, address: str) -> tuple[Quota, Quota, Quota]:
        """(account, address), account and address failure counters of a sign-in."""
        s, where = self.settings, address_key(address)
        window = s.login_window_seconds
        return (
            Quota(f"login:pair:{account}:{where}", s.login_failures_per_window, window),
            Quota(f"login:account:{account}", s.login_failures_per_account, window),
            Quota(f"login:address:{where}", s.login_failures_per_address, window),
        )

    async def sign_in(self, service: AccountService, login: str, password: str, address: str) -> User:
        """The user whose `login` (username or email) and `password` these are, under the sign-in limits.

        Raises a 429 (the password is not checked) or InvalidCredentials. The account is the
        user the login names, whichever of its names or letter cases it uses; an unknown login
        is counted by its normalised text.
        """
        named = await service.by_login(login)
        account = f"user:{named.id}" if named is not None else f"name:{_digest(login.strip().lower())}"
        pair, *others = self.login_quotas(account, address)
        await self.reserve(pair, *others)
        user = await service.authenticate(login, password)  # a failure stays counted in every layer
        await self.release(*others)
        await self.counters.clear([pair.key])
        return user

    @asynccontextmanager
    async def token_use(self, address: str) -> AsyncIterator[None]:
        """Around the use of an emailed or refresh token: its place is reserved per client address
        and given back unless the token was refused (InvalidToken, InvalidCredentials)."""
        quota = Quota(
            f"token:{address_key(address)}",
            self.settings.token_failures_per_address,
            self.settings.login_window_seconds,
        )
        await self.reserve(quota)
        try:
            yield
        except (InvalidToken, InvalidCredentials):
            raise
        except Exception:
            await self.release(quota)
            raise
        await self.release(quota)
