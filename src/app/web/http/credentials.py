"""Who may still act, remembered per process and forgotten the moment any process revokes.

Every authenticated request needs its user's credential state (app.domain.accounts.
revocation): active, current credentials version, recently revoked refresh families.
Reading it from the database on every request was a round trip per request; here a
process keeps each user's state and drops it when a revocation is announced on
REVOCATION_CHANNEL (Redis pub/sub in services mode, so every web process hears it; in
memory embedded). Any commit that changes a user announces it (see app.domain.accounts.
revocation.on_users_changed), and the committing process drops its own copy at once,
before its response goes out.

What keeps that safe:
- A state read from the database before a revocation was heard is never stored after it
  (`_epoch`): a slow read cannot put back what the revocation removed.
- The cache is trusted only while the process listens: before its subscription is made,
  and while Redis is out of reach (announcements would be missed), every request reads
  the database. When Redis is back, the channels backend wakes every channel and the
  whole cache is dropped.
- Embedded, the web process's channels are in its memory, out of the CLI's reach: the CLI
  touches a file under var/ (`touch_changed_file`), and the cache, which looks at the file's
  time on each use (a stat, about a microsecond), forgets everyone when it moved.
- An entry lives at most AUTH_CACHE_SECONDS: a revocation whose announcement was lost still
  takes effect within that time.

The users with open streams would each need their state read again every AUTH_CACHE_SECONDS
(at a heartbeat after it ran out: two statements per user, 33 a second for 1,000 users,
in bursts when their entries had been loaded together). Instead the cache renews them
itself (`_renew_streams`): once a second it looks for such entries past three quarters of
their life, and renews them, with every other one past half of its life, in two
statements per RENEW_USERS users; renewals thus come in a few groups per
AUTH_CACHE_SECONDS, and a heartbeat's check is served from memory.

Open event streams register a `StreamWatch`; an announcement re-checks the streams of
the users it names, and a stream whose credential no longer holds ends at once. A
browser's stream also ends when its session is gone from the session store (signed out).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.plugins import InitPlugin
from litestar.stores.base import Store
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.domain.accounts.revocation import (
    REVOCATION_CHANNEL,
    Credential,
    CredentialState,
    Lifetimes,
    decode_revoked,
    encode_revoked,
    load_credentials,
    load_many_credentials,
    on_users_changed,
)
from app.web.http.channels import hears_every_message
from app.web.http.draining import end_stream

log = structlog.get_logger(__name__)

#: Users remembered at most; the least recently loaded go first.
MAX_USERS = 50_000
#: Where the authentication middleware leaves the request's credential (see `credential_of`).
CREDENTIAL_SCOPE_KEY = "credential"
#: How often the entries of users with open streams are looked at for renewal (seconds).
RENEW_TICK = 1.0
#: Users renewed by one pair of statements.
RENEW_USERS = 500


def changed_file(settings: Settings) -> Path:
    """Embedded mode: the file another process (the CLI) touches after changing users."""
    return settings.var_path / "credentials-changed"


def touch_changed_file(settings: Settings) -> None:
    path = changed_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(time.time_ns()))


def _mtime(path: str | None) -> int:
    """The file's modification time (os.stat on a str: a pathlib stat costs several times more per request)."""
    try:
        return os.stat(path).st_mtime_ns if path is not None else 0
    except FileNotFoundError:
        return 0


def credential_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Credential | None:
    """What the request was let in with (set by the authentication middleware)."""
    credential: Credential | None = connection.scope.get(CREDENTIAL_SCOPE_KEY)  # type: ignore[assignment]
    return credential


class StreamWatch:
    """An open stream's credential, and the stream's end: a future set done when the credential no longer holds."""

    __slots__ = ("credential", "ended")

    def __init__(self, credential: Credential, ended: asyncio.Future[None]) -> None:
        self.credential = credential
        self.ended = ended  # the stream's own (it ends for other reasons too): a future, not a task per stream


class CredentialCache:
    def __init__(
        self, reads: AsyncEngine, settings: Settings, channels: ChannelsPlugin, sessions: Store | None = None
    ) -> None:
        self._reads = reads
        self._channels = channels
        self._sessions = sessions
        # A browser session lives SESSION_DAYS after its last use, and one refused is dropped at once:
        # a day more covers a request that was in flight when its sign-in ended.
        self._lifetimes = Lifetimes(
            access_token=timedelta(minutes=settings.access_token_minutes),
            session=timedelta(days=settings.session_days + 1),
        )
        self._ttl = settings.auth_cache_seconds
        self._changed_file = str(changed_file(settings)) if settings.embedded_workers else None
        self._changed_at = _mtime(self._changed_file)
        self._entries: OrderedDict[uuid.UUID, tuple[CredentialState | None, float]] = OrderedDict()
        self._epoch = 0
        self._listening = False
        self._watches: dict[uuid.UUID, set[StreamWatch]] = {}
        self._checks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        #: Database reads made (read by the tests and benchmarks).
        self.loads = 0

    # --- the state of a user ------------------------------------------------------------

    def _trusted(self) -> bool:
        if self._changed_file is not None and (changed_at := _mtime(self._changed_file)) != self._changed_at:
            self._changed_at = changed_at
            self.forget(None)
            self._recheck(None)
        return self._listening and hears_every_message(self._channels)

    async def state(self, user_id: uuid.UUID) -> CredentialState | None:
        """The user's credential state: remembered, or read from the database (and remembered)."""
        if self._trusted():
            entry = self._entries.get(user_id)
            if entry is not None and entry[1] > time.monotonic():
                return entry[0]
        epoch = self._epoch
        self.loads += 1
        state = await load_credentials(self._reads, user_id, self._lifetimes)
        if self._trusted() and epoch == self._epoch:
            self._remember(user_id, state, time.monotonic() + self._ttl)
        return state

    def _remember(self, user_id: uuid.UUID, state: CredentialState | None, expires: float) -> None:
        self._entries[user_id] = (state, expires)
        self._entries.move_to_end(user_id)
        if len(self._entries) > MAX_USERS:
            self._entries.popitem(last=False)

    def _due_for_renewal(self) -> list[uuid.UUID]:
        """Users with open streams whose entry is missing or past 3/4 of its life, with those past half (else none)."""
        now = time.monotonic()
        half: list[uuid.UUID] = []
        urgent = False
        for user_id in self._watches:
            entry = self._entries.get(user_id)
            left = entry[1] - now if entry is not None else 0.0
            if left < self._ttl / 2:
                half.append(user_id)
                urgent = urgent or left < self._ttl / 4
        return half if urgent else []

    async def _renew(self) -> None:
        """Renew the entries `_due_for_renewal` names: two statements per RENEW_USERS users."""
        if not self._trusted():
            return
        due = self._due_for_renewal()
        for start in range(0, len(due), RENEW_USERS):
            users = due[start : start + RENEW_USERS]
            epoch, began = self._epoch, time.monotonic()
            self.loads += 1
            states = await load_many_credentials(self._reads, users, self._lifetimes)
            if not (self._trusted() and epoch == self._epoch):
                return  # something was revoked meanwhile: the next tick reads again
            for user_id, state in states.items():
                self._remember(user_id, state, began + self._ttl)

    async def _renew_streams(self) -> None:
        while True:
            await asyncio.sleep(RENEW_TICK)
            try:
                await self._renew()
            except Exception as exc:  # noqa: BLE001 - a database out of reach: heartbeats read on their own, as before
                log.warning("credentials.renewal_failed", error=str(exc))

    async def allows(self, credential: Credential, *, check_session: bool = False) -> bool:
        """True while the credential may act; `check_session`: also ask the session store (a round trip)."""
        state = await self.state(credential.user_id)
        if state is None or not state.allows(credential.version, credential.family):
            return False
        if check_session and credential.session_id is not None and self._sessions is not None:
            return await self._sessions.exists(credential.session_id)
        return True

    def forget(self, user_ids: Iterable[uuid.UUID] | None) -> None:
        """Drop what this process remembers of these users (None: of everyone)."""
        self._epoch += 1
        if user_ids is None:
            self._entries.clear()
            return
        for user_id in user_ids:
            self._entries.pop(user_id, None)

    def announce(self, user_ids: Iterable[uuid.UUID]) -> None:
        """These users changed (committed): forget them here at once, and tell every other process."""
        ids = set(user_ids)
        if not ids:
            return
        self.forget(ids)
        self._recheck(ids)
        self._channels.publish(encode_revoked(ids), [REVOCATION_CHANNEL])

    def _committed(self, user_ids: set[uuid.UUID]) -> None:
        """A session committed changes to these users (in this process: maybe in a worker thread)."""
        if self._loop is None or threading.get_ident() == self._thread:
            self.announce(user_ids)
        else:
            self._loop.call_soon_threadsafe(self.announce, user_ids)

    # --- open streams -------------------------------------------------------------------

    def watch(self, credential: Credential, ended: asyncio.Future[None]) -> StreamWatch:
        """Set `ended` done once `credential` no longer holds (revoked, expired, its user deactivated)."""
        watch = StreamWatch(credential, ended)
        self._watches.setdefault(credential.user_id, set()).add(watch)
        return watch

    def unwatch(self, watch: StreamWatch) -> None:
        watches = self._watches.get(watch.credential.user_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.credential.user_id]

    def _recheck(self, user_ids: Iterable[uuid.UUID] | None) -> None:
        users = list(self._watches) if user_ids is None else [u for u in user_ids if u in self._watches]
        for user_id in users:
            task = asyncio.ensure_future(self._check_streams(user_id))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check_streams(self, user_id: uuid.UUID) -> None:
        try:
            for watch in list(self._watches.get(user_id, ())):
                if not watch.ended.done() and not await self.allows(watch.credential, check_session=True):
                    end_stream(watch.ended)
        except Exception as exc:  # noqa: BLE001 - a database or Redis out of reach: the heartbeat checks again
            log.warning("credentials.stream_check_failed", user_id=str(user_id), error=str(exc))

    # --- listening ----------------------------------------------------------------------

    async def _listen(self) -> None:
        subscriber = await self._channels.subscribe([REVOCATION_CHANNEL])
        self.forget(None)  # anything remembered before now was not covered by the subscription
        self._listening = True
        try:
            async for data in subscriber.iter_events():
                ids = decode_revoked(data)
                self.forget(ids)
                self._recheck(ids)
        finally:
            # No unsubscribe here: this ends only when the app stops, and the channels plugin, which stops
            # next, drops every subscription with its connection (waiting on Redis here could hang shutdown).
            self._listening = False

    @asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
        listener = asyncio.ensure_future(self._listen())
        renewer = asyncio.ensure_future(self._renew_streams())
        stop_hearing = on_users_changed(self._committed)
        try:
            yield
        finally:
            stop_hearing()
            renewer.cancel()
            with suppress(asyncio.CancelledError):
                await renewer
            # Cancel until it ends: a cancel that arrives while the subscription is being made (an app
            # stopped within a second of starting) can be swallowed below us, leaving it waiting for ever.
            while not listener.done():
                listener.cancel()
                await asyncio.wait({listener}, timeout=0.5)
            with suppress(asyncio.CancelledError):
                await listener
            for task in list(self._checks):
                task.cancel()


class CredentialsPlugin(InitPlugin):
    """Listens for revocations while the app runs: listed after the channels plugin, whose lifespan it needs."""

    def __init__(self, cache: CredentialCache) -> None:
        self.cache = cache

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self.cache.lifespan)
        return app_config
