"""GET /api/v1/events: the live stream of a reader's events as server-sent events.

The table is the truth and channel messages are only wake-ups. The stream subscribes
first, then replays from the table after Last-Event-ID, then for each wake-up (and on
every heartbeat) reads the table again after the last id it sent. Ids are handed out
in commit order (see app.domain.notifications.events), so reading "after the last id
sent" can neither skip an event nor send one twice; a publish that was lost only
makes its event wait for the next wake-up or heartbeat.

The streams of a process share their reads (`EventFeed`): the readers waiting at one
moment are served by one query for up to FEED_USERS users, and a heartbeat's re-check
waits up to FEED_TICK seconds to join others; while the newest event id stays where it
was, a re-check whose last read found nothing is answered without a read (see EventFeed).
A stream holds no database connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from asyncio import FIRST_COMPLETED
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, get
from litestar.channels import ChannelsPlugin, Subscriber
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException, ValidationException
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send
from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.accounts.revocation import Credential
from app.domain.database import read
from app.domain.notifications.events import EventLog, EventRecord, channels_for_reader
from app.domain.notifications.models import Event
from app.web.api.openapi import EVENT_STREAM
from app.web.http.auth import requires_user
from app.web.http.credentials import CredentialCache, credential_of
from app.web.http.draining import Draining, end_stream
from app.web.http.errors import database_down, database_unavailable
from app.web.http.metrics import SSE_CONNECTIONS, SSE_SLOW_CLIENTS

log = structlog.get_logger(__name__)

#: How many events one read of the table sends at most; a longer backlog takes several reads.
BATCH = 500
#: Users served by one shared read (each is one bind parameter).
FEED_USERS = 500
#: Rows one shared read takes at most; a read that reaches it is done again reader by reader.
FEED_ROWS = 2_000
#: How long a heartbeat's re-check of the table may wait to share a read with others (seconds).
FEED_TICK = 1.0
#: How long a re-check may go without a read while the newest event id does not move (seconds).
FEED_QUIET_SECONDS = 30.0
#: The probe of a tick's re-checks: the newest event id (the primary key's last entry).
_NEWEST = select(func.max(Event.id))

_FEED_COLUMNS = (Event.id, Event.type, Event.payload, Event.created_at, Event.user_id)
#: A shared read: every event above the floor of the readers' users or for everyone, oldest first.
_FEED_READ = (
    select(*_FEED_COLUMNS)
    .where(
        Event.id > bindparam("floor"),
        or_(Event.user_id.in_(bindparam("users", expanding=True)), Event.user_id.is_(None)),
    )
    .order_by(Event.id)
    .limit(FEED_ROWS)
)
#: The same for readers without a user (only events for everyone).
_EVERYONE_READ = (
    select(*_FEED_COLUMNS)
    .where(Event.id > bindparam("floor"), Event.user_id.is_(None))
    .order_by(Event.id)
    .limit(FEED_ROWS)
)

#: Open streams per user in this process (counted while the stream's generator runs).
_open_streams: Counter[UUID] = Counter()

#: What a reader gets: the events after its id, and whether to read again at once (more backlog);
#: None when the stream must end (the database cannot be reached).
Read = tuple[Sequence[EventRecord], bool] | None
#: A probe of the newest event id: that id and when it was made (time.monotonic()); None: not made.
Probe = tuple[int, float] | None


#: The stream's first message: a comment saying it is open, and the browser's reconnect delay (ms).
_CONNECTED = ServerSentEventMessage(comment="connected", data=None, retry=2000).encode()
_KEEP_ALIVE = ServerSentEventMessage(comment="keep-alive", data=None).encode()


def _message(record: EventRecord) -> bytes:
    """The event as Litestar's ServerSentEventMessage writes it (`id:`, `event:`, `data:` lines), without its
    scan of every line: the id is a number and msgspec's JSON has no line break. A type with one (none of
    ours) goes through Litestar's encoder, which drops it."""
    if "\n" in record.type or "\r" in record.type:
        data = msgspec.json.encode(record.data).decode()
        return ServerSentEventMessage(id=record.id, event=record.type, data=data).encode()
    return b"id: %d\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
        record.id,
        record.type.encode(),
        msgspec.json.encode(record.data),
    )


class EventFeed:
    """The reads of the event table for every stream of a process, shared.

    A reader asks for its events after an id and waits. The readers waiting at that
    moment are served together: one query per FEED_USERS users takes every event above
    the lowest id asked for, of those users or for everyone, and each reader gets those
    after its own id. That is the same set, in the same order, as its own read would
    give (ids are in commit order per reader), so the stream's contract is unchanged.
    A shared read that reaches FEED_ROWS rows (a long backlog somewhere) is complete only
    up to its last id: readers with events up to there take them and come back at once,
    and a reader below it with none there reads on its own, BATCH rows. Heartbeat re-checks (`soon=False`) wait up to
    FEED_TICK seconds for a read to join, so idle streams cost one query per tick, not
    one per stream.

    Idle streams need not read even that: a tick's re-checks first probe the newest event
    id (one statement for every stream of the process). A reader (user, last id) whose
    read found nothing after that id, at a probe that still holds, has nothing new: an
    event committed since then moves the probe, since an id is taken at the insert and a
    later commit with a smaller id (another writer's, still open at the probe) is the one
    case the probe misses. For that case a reader is read again at least every
    FEED_QUIET_SECONDS, so an event whose wake-up was lost reaches an idle stream within
    that time and a heartbeat at the latest, and within a heartbeat when the probe moved.
    Wake-ups always read.
    """

    def __init__(
        self, reads: AsyncEngine, sessions: async_sessionmaker[AsyncSession], *, tick: float = FEED_TICK
    ) -> None:
        self._reads = reads
        self._sessions = sessions
        self._tick = tick
        self._waiting: dict[UUID | None, list[tuple[int, asyncio.Future[Read]]]] = {}
        self._rechecks: set[asyncio.Future[Read]] = set()  # the waiting heartbeat re-checks
        #: (user, last id) a read found nothing new for: the newest id probed just before it, and when.
        self._quiet: dict[tuple[UUID | None, int], tuple[int, float]] = {}
        self._due = False  # a reader that may not wait is waiting (or the tick has come)
        self._running: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Queries run so far, probes of the newest id apart (read by the tests and benchmarks).
        self.queries = 0
        self.probes = 0

    async def after(self, user_id: UUID | None, after_id: int, *, soon: bool = True) -> Read:
        """The reader's events after `after_id` (at most BATCH), and whether there are more."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Read] = loop.create_future()
        self._waiting.setdefault(user_id, []).append((after_id, future))
        if soon:
            self._due = True
            self._start()
        else:
            self._rechecks.add(future)
            future.add_done_callback(self._rechecks.discard)
            if self._timer is None:
                self._timer = loop.call_later(self._tick, self._on_tick)
        return await future

    def hurry(self, _: object = None) -> None:
        """Serve the heartbeat re-checks waiting for the tick now (a wake-up came meanwhile)."""
        if self._timer is not None:
            self._on_tick()

    def _on_tick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = True
        self._start()

    def _start(self) -> None:
        if self._running is None:
            self._running = asyncio.ensure_future(self._serve_all())

    async def _serve_all(self) -> None:
        try:
            # Only while someone may not wait: re-checks that come in meanwhile wait for the tick,
            # else a busy feed would serve them as they come, one small query after another.
            while self._waiting and self._due:
                self._due = False
                if self._timer is not None:  # everything waiting is served now
                    self._timer.cancel()
                    self._timer = None
                waiting, self._waiting = self._waiting, {}
                probed = await self._answer_quiet(waiting)
                readers = [(user_id, asks) for user_id, asks in waiting.items() if asks]
                for start in range(0, len(readers), FEED_USERS):
                    await self._serve(readers[start : start + FEED_USERS], probed)
        finally:
            self._running = None
            if self._waiting:
                loop = asyncio.get_running_loop()
                if self._due:
                    loop.call_soon(self._start)
                elif self._timer is None:
                    self._timer = loop.call_later(self._tick, self._on_tick)

    async def _answer_quiet(self, waiting: dict[UUID | None, list[tuple[int, asyncio.Future[Read]]]]) -> Probe:
        """Answer (and take out of `waiting`) the re-checks that need no read; the probe, None when none was made."""
        if not any(future in self._rechecks for asks in waiting.values() for _, future in asks):
            return None
        probed_at = time.monotonic()
        self.probes += 1
        try:
            newest = int((await read(self._reads, _NEWEST))[0][0] or 0)
        except Exception as exc:  # noqa: BLE001 - the reads that follow meet it too, and answer for it
            log.warning("events.probe_failed", error=str(exc))
            return None
        self._quiet = {
            reader: seen
            for reader, seen in self._quiet.items()
            if seen[0] == newest and probed_at - seen[1] < FEED_QUIET_SECONDS
        }
        for user_id, asks in waiting.items():
            unanswered = []
            for after_id, future in asks:
                if future in self._rechecks and (user_id, after_id) in self._quiet:
                    if not future.done():
                        future.set_result(((), False))
                else:
                    unanswered.append((after_id, future))
            asks[:] = unanswered
        return newest, probed_at

    def _note_quiet(
        self, readers: list[tuple[UUID | None, list[tuple[int, Any]]]], records: list[EventRecord], probed: Probe
    ) -> None:
        """Remember the readers a complete read found nothing new for (at the probe made before it)."""
        if probed is None:
            return
        newest_of: dict[UUID | None, int] = {record.user_id: record.id for record in records}  # ids ascend
        everyone = newest_of.get(None, 0)
        for user_id, asks in readers:
            latest = max(everyone, newest_of.get(user_id, 0) if user_id is not None else 0)
            for after_id, _ in asks:
                if after_id >= latest:
                    self._quiet[(user_id, after_id)] = probed

    async def _serve(
        self, readers: list[tuple[UUID | None, list[tuple[int, asyncio.Future[Read]]]]], probed: Probe = None
    ) -> None:
        futures = [future for _, asks in readers for _, future in asks]
        try:
            records = await self._query(readers)
            if records is None or len(records) < FEED_ROWS:
                self._hand_out(readers, records, None)
                if records is not None:
                    self._note_quiet(readers, records, probed)
                return
            # The read stopped at FEED_ROWS: it is complete only up to its last id. Readers with
            # events up to there take them and come back at once; a reader below that id with
            # none of its own there cannot move on (its last id must be one of its events), so
            # it reads on its own.
            self._hand_out(readers, records, records[-1].id)
            for user_id, asks in readers:
                for after_id, future in asks:
                    if not future.done():
                        future.set_result(await self._one(user_id, after_id))
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc) if isinstance(exc, Exception) else future.cancel()
            if not isinstance(exc, Exception):
                raise

    async def _query(self, readers: list[tuple[UUID | None, Any]]) -> list[EventRecord] | None:
        """The events above the lowest id asked for: one prebuilt statement on the read engine (no ping)."""
        floor = min(after_id for _, asks in readers for after_id, _ in asks)
        users = [user_id for user_id, _ in readers if user_id is not None]
        self.queries += 1
        try:
            if users:
                rows = await read(self._reads, _FEED_READ, {"floor": floor, "users": users})
            else:
                rows = await read(self._reads, _EVERYONE_READ, {"floor": floor})
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("events.database_unavailable", error=str(exc))
            return None
        return [EventRecord(id=r[0], type=r[1], data=r[2], created_at=r[3], user_id=r[4]) for r in rows]

    @staticmethod
    def _hand_out(
        readers: list[tuple[UUID | None, list[tuple[int, asyncio.Future[Read]]]]],
        records: list[EventRecord] | None,
        cut: int | None,
    ) -> None:
        """Give each reader its records after its id; `cut`: the read is complete only up to that id."""
        by_user: defaultdict[UUID | None, list[EventRecord]] = defaultdict(list)
        for record in records or ():
            by_user[record.user_id].append(record)
        everyone = by_user.get(None, [])
        for user_id, asks in readers:
            mine = by_user.get(user_id, []) if user_id is not None else []
            seen = sorted(mine + everyone, key=lambda record: record.id) if mine and everyone else mine or everyone
            for after_id, future in asks:
                if future.done():
                    continue  # its stream has gone
                if records is None:
                    future.set_result(None)
                    continue
                new = [record for record in seen if record.id > after_id]
                if cut is None:
                    future.set_result((new[:BATCH], len(new) > BATCH))
                elif new or after_id >= cut:
                    future.set_result((new[:BATCH], True))

    async def _one(self, user_id: UUID | None, after_id: int) -> Read:
        self.queries += 1
        try:
            async with self._sessions() as session:
                batch = await EventLog(session).after(after_id, user_id=user_id, limit=BATCH)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("events.database_unavailable", error=str(exc))
            return None
        return batch, len(batch) == BATCH


async def _still_allowed(credentials: CredentialCache, credential: Credential) -> bool:
    """The heartbeat's check (remembered state, so rarely a read); a database out of reach ends the stream too."""
    try:
        return await credentials.allows(credential)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("events.database_unavailable", error=str(exc))
        return False


#: Where the app keeps its EventFeed (in its state).
FEED_STATE_KEY = "event_feed"


def event_feed(state: State, reads: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> EventFeed:
    """The process' EventFeed, made on first use."""
    feed: EventFeed | None = state.get(FEED_STATE_KEY)
    if feed is None:
        feed = EventFeed(reads, sessions)
        state[FEED_STATE_KEY] = feed
    return feed


async def open_feed(
    channels: ChannelsPlugin, feed: EventFeed, user_id: UUID | None, last_id: int
) -> tuple[Subscriber, Read]:
    """Subscribe to the reader's wake-ups, then read what is there: nothing published in between is missed.

    The read is None when the database is out of reach (the subscription is dropped again):
    the caller answers 503 before the stream's first byte, as for any request.
    """
    subscriber = await channels.subscribe(channels_for_reader(user_id))
    first = await feed.after(user_id, last_id, soon=True)
    if first is None:
        await channels.unsubscribe(subscriber)
    return subscriber, first


async def event_stream(
    *,
    channels: ChannelsPlugin,
    subscriber: Subscriber,
    first: Read,
    feed: EventFeed,
    user_id: UUID | None,
    last_id: int,
    heartbeat: float,
    end: asyncio.Future[None],
    draining: Draining,
    credentials: CredentialCache,
    credential: Credential | None,
) -> AsyncGenerator[bytes, None]:
    """The reader's events, live, from what `open_feed` returned, until `end` is done: the process is stopping
    (the client reconnects, to another process, and replays), the client has left (`LiveEvents`), or the
    credential no longer holds (signed out, password changed, deactivated: the reconnect is refused). That
    is at once when it is revoked (announced: `watch.ended`), and at a heartbeat after AUTH_CACHE_SECONDS at
    the latest."""
    wakeups = subscriber.iter_events()
    next_wakeup: asyncio.Task[bytes] | None = None
    draining.end_with(end)
    watch = credentials.watch(credential, end) if credential is not None else None
    SSE_CONNECTIONS.inc()
    if user_id is not None:
        _open_streams[user_id] += 1
    try:
        yield _CONNECTED
        soon, read = True, first
        while not end.done():
            if read is None:
                read = await feed.after(user_id, last_id, soon=soon)
            if read is None:
                return
            (batch, more), read = read, None
            for record in batch:
                yield _message(record)
                last_id = record.id
            if more:
                continue  # more backlog: read on at once
            if next_wakeup is None:
                next_wakeup = asyncio.ensure_future(anext(wakeups))
                next_wakeup.add_done_callback(feed.hurry)
            waits: set[asyncio.Future[Any]] = {next_wakeup, end}
            done, _ = await asyncio.wait(waits, timeout=heartbeat, return_when=FIRST_COMPLETED)
            if end.done():
                return
            soon = bool(done)
            if done:
                next_wakeup.result()
                next_wakeup = None
            else:
                if credential is not None and not await _still_allowed(credentials, credential):
                    return
                yield _KEEP_ALIVE
    finally:
        draining.forget(end)
        if watch is not None:
            credentials.unwatch(watch)
        SSE_CONNECTIONS.dec()
        if user_id is not None:
            _open_streams[user_id] -= 1
            if _open_streams[user_id] <= 0:
                del _open_streams[user_id]
        if next_wakeup is not None:
            next_wakeup.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await next_wakeup
        await channels.unsubscribe(subscriber)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _LiveEventsBody(ASGIStreamingResponse):
    """Sends the stream's bytes as they come; sees the client leave; gives up on a client that stops reading.

    Litestar's streaming response sends the body from a task of a task group beside its
    disconnect listener, and its server-sent events hop to a worker thread once at the start
    and keep that step's frames, with the exception that ended it, until the stream ends.
    Here the request's own task sends, and one task listens for the disconnect and sets the
    stream's `end`, which the stream waits on with its wake-ups (with draining and revocation
    also setting it, 10 KiB of the 38 KiB of Python objects an open stream held: see
    docs/benchmarks.md, "Live events").

    The server applies backpressure: a client that stops reading blocks only its own
    stream's send (nothing piles up in memory and no other stream waits). A send that takes
    longer than SSE_SLOW_CLIENT_SECONDS ends the stream, so a stalled client does not hold
    it forever; it reconnects with Last-Event-ID and replays from the table.
    """

    def __init__(
        self, body: AsyncGenerator[bytes, None], end: asyncio.Future[None], slow: float, **kwargs: Any
    ) -> None:
        super().__init__(iterator=body, **kwargs)
        self.body_stream = body  # `iterator` too, typed as what it is: a generator, closed at the end
        self.end = end
        self.slow = slow

    async def send_body(self, send: Send, receive: Receive) -> None:
        listener = asyncio.ensure_future(_until_disconnect(receive))
        listener.add_done_callback(lambda _: end_stream(self.end))
        try:
            async for chunk in self.body_stream:
                try:
                    # The send itself under a deadline: granian's send gives way to a cancel. (A task per
                    # message and asyncio.wait around it took a third of a broadcast's time, 1,000 streams.)
                    async with asyncio.timeout(self.slow):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    SSE_SLOW_CLIENTS.inc()
                    log.info("sse.slow_client_closed", timeout=self.slow)
                    return
            if not listener.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            listener.cancel()
            await self.body_stream.aclose()  # frees the subscription and the stream count now


class LiveEvents(ServerSentEvent):
    """GET /api/v1/events' response: `event_stream`'s bytes, sent by `_LiveEventsBody`."""

    def __init__(
        self, body: AsyncGenerator[bytes, None], *, end: asyncio.Future[None], slow_client_seconds: float
    ) -> None:
        super().__init__(body, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.body_stream = body
        self.end = end
        self.slow = slow_client_seconds

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Any = None,
        encoded_headers: Any = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIResponse:
        return _LiveEventsBody(
            self.body_stream,
            self.end,
            self.slow,
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else [*self.cookies, *cookies],
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            media_type="text/event-stream",
            status_code=self.status_code or status_code,
        )


def _last_event_id(header: str | None, query: int | None) -> int:
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationException(
            detail="Last-Event-ID must be an event id (a whole number).",
            extra=[{"key": "Last-Event-ID", "message": "must be a whole number"}],
        ) from None
    if value < 0:
        raise ValidationException(
            detail="Last-Event-ID must not be negative.", extra=[{"key": "Last-Event-ID", "message": "must be >= 0"}]
        )
    largest = 2**63 - 1  # event ids are 64-bit: a larger one names no event and cannot be bound (was a 500)
    if value > largest:
        raise ValidationException(
            detail=f"Last-Event-ID must be at most {largest}.",
            extra=[{"key": "Last-Event-ID", "message": f"must be <= {largest}"}],
        )
    return value


class EventsController(Controller):
    path = "/api/v1/events"
    tags = ["events"]

    @get(
        operation_id="streamEvents",
        summary="Live events of the signed-in user",
        description=(
            "A text/event-stream. Each message has `id:` (the event id), `event:` and `data:` (JSON). "
            "Reconnect with `Last-Event-ID` (or `?last_event_id=`) to receive every event after that id first."
        ),
        media_type="text/event-stream",
        responses={200: EVENT_STREAM},
        guards=[requires_user],
        security=[{"BearerToken": []}],
        raises=[NotAuthorizedException, ValidationException, TooManyRequestsException],
        # Litestar's logging middleware logs the response again at every body message: for a stream,
        # a line (and its cost) per event. The stream logs its start itself instead.
        opt={"skip_logging": True},
    )
    async def stream(
        self,
        request: Request[User, Any, Any],
        channels: NamedDependency[ChannelsPlugin],
        reads: NamedDependency[AsyncEngine],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        draining: NamedDependency[Draining],
        credentials: NamedDependency[CredentialCache],
        last_event_id_header: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
        last_event_id: Annotated[int | None, QueryParameter(ge=0, required=False)] = None,
    ) -> ServerSentEvent:
        if _open_streams[request.user.id] >= settings.sse_max_streams_per_user:
            raise TooManyRequestsException(
                detail=f"You have {settings.sse_max_streams_per_user} live streams open already; close one first.",
                headers={"Retry-After": "5"},
            )
        after = _last_event_id(last_event_id_header, last_event_id)
        feed = event_feed(request.app.state, reads, sessions)
        subscriber, first = await open_feed(channels, feed, request.user.id, after)
        if first is None:
            raise database_down()  # logged by the feed
        log.info("events.stream_opened", path=request.url.path, last_event_id=after)
        end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream = event_stream(
            channels=channels,
            subscriber=subscriber,
            first=first,
            feed=feed,
            user_id=request.user.id,
            last_id=after,
            heartbeat=settings.sse_heartbeat_seconds,
            end=end,
            draining=draining,
            credentials=credentials,
            credential=credential_of(request),
        )
        return LiveEvents(stream, end=end, slow_client_seconds=settings.sse_slow_client_seconds)
