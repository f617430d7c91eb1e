"""GET /api/v1/events: the live stream of a reader's events as server-sent events.

The table is the truth and channel messages are only wake-ups. The stream subscribes
first, then replays from the table after Last-Event-ID, then for each wake-up (and on
every heartbeat) reads the table again after the last id it sent. Ids are handed out
in commit order (see app.domain.notifications.events), so reading "after the last id
sent" can neither skip an event nor send one twice; a publish that was lost only
makes its event wait for the next wake-up or heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import FIRST_COMPLETED
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, get
from litestar.channels import ChannelsPlugin
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException, ValidationException
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.accounts.models import User
from app.domain.notifications.events import EventLog, EventRecord, channels_for_reader
from app.web.auth import requires_user
from app.web.draining import Draining
from app.web.errors import database_unavailable
from app.web.metrics import SSE_CONNECTIONS, SSE_SLOW_CLIENTS

log = structlog.get_logger(__name__)

#: How many events one read of the table sends at most; a longer backlog takes several reads.
BATCH = 500

#: Open streams per user in this process (counted while the stream's generator runs).
_open_streams: Counter[UUID] = Counter()


def _message(record: EventRecord) -> ServerSentEventMessage:
    return ServerSentEventMessage(id=record.id, event=record.type, data=msgspec.json.encode(record.data).decode())


async def _read_after(
    sessions: async_sessionmaker[AsyncSession], after_id: int, user_id: UUID | None
) -> Sequence[EventRecord] | None:
    """The next events after `after_id`; None when the database cannot be reached.

    The stream then ends cleanly instead of breaking off with a traceback: the client
    comes back after `retry` with its Last-Event-ID, and misses nothing.
    """
    try:
        async with sessions() as session:
            return await EventLog(session).after(after_id, user_id=user_id, limit=BATCH)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        log.warning("events.database_unavailable", error=str(exc))
        return None


async def event_stream(
    *,
    channels: ChannelsPlugin,
    sessions: async_sessionmaker[AsyncSession],
    user_id: UUID | None,
    last_id: int,
    heartbeat: float,
    draining: Draining,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    subscriber = await channels.subscribe(channels_for_reader(user_id))
    wakeups = subscriber.iter_events()
    next_wakeup: asyncio.Task[bytes] | None = None
    stopping = asyncio.ensure_future(draining.wait())
    SSE_CONNECTIONS.inc()
    if user_id is not None:
        _open_streams[user_id] += 1
    try:
        yield ServerSentEventMessage(comment="connected", data=None, retry=2000)
        while True:
            batch = await _read_after(sessions, last_id, user_id)
            if batch is None:
                return
            for record in batch:
                yield _message(record)
                last_id = record.id
            if len(batch) == BATCH:
                continue  # more backlog: read on at once
            if next_wakeup is None:
                next_wakeup = asyncio.ensure_future(anext(wakeups))
            done, _ = await asyncio.wait({next_wakeup, stopping}, timeout=heartbeat, return_when=FIRST_COMPLETED)
            if stopping in done:
                return  # the process is stopping: the client reconnects (to another process) and replays
            if done:
                next_wakeup.result()
                next_wakeup = None
            else:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
    finally:
        stopping.cancel()
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


#: Where the handler leaves its stream for SlowClientCutoff (in the request's scope state).
STREAM_STATE_KEY = "event_stream"


class SlowClient(Exception):
    """A message could not be handed to the client in time."""


class SlowClientCutoff:
    """Close a stream whose client does not take a message within SSE_SLOW_CLIENT_SECONDS.

    The server applies backpressure: a client that stops reading blocks only its own
    stream's send (nothing piles up in memory and no other stream waits). This puts a
    limit on that wait, so a stalled client does not hold its stream forever; it
    reconnects with Last-Event-ID and replays from the table.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: Settings = scope["app"].state.settings
        timeout = settings.sse_slow_client_seconds

        async def send_in_time(message: Message) -> None:
            # Not asyncio.wait_for: it waits for the cancelled send to end, and the server's
            # send does not end while the client is not reading.
            sending = asyncio.ensure_future(send(message))
            done, _ = await asyncio.wait({sending}, timeout=timeout)
            if not done:
                sending.add_done_callback(_consume_outcome)
                raise SlowClient
            sending.result()

        try:
            await self.app(scope, receive, send_in_time)
        except Exception as exc:
            # Litestar's handler-level exception middleware wraps it once the response has started.
            if not _caused_by(exc, SlowClient):
                raise
            SSE_SLOW_CLIENTS.inc()
            log.info("sse.slow_client_closed", timeout=timeout)
            # Its generator is parked at the yield whose send was abandoned: close it now (frees the
            # subscription and the stream count) rather than whenever the garbage collector gets to it.
            stream: AsyncGenerator[Any, None] | None = scope.get("state", {}).get(STREAM_STATE_KEY)
            if stream is not None:
                await stream.aclose()


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """True when `kind` is `exc`, its cause or context, or inside an exception group among them."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def _consume_outcome(future: asyncio.Future[None]) -> None:
    """Retrieve the end of an abandoned send (usually "connection closed"), so asyncio does not report it."""
    if not future.cancelled():
        future.exception()


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
        guards=[requires_user],
        security=[{"BearerToken": []}],
        raises=[NotAuthorizedException, ValidationException, TooManyRequestsException],
        middleware=[SlowClientCutoff],
    )
    async def stream(
        self,
        request: Request[User, Any, Any],
        channels: NamedDependency[ChannelsPlugin],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        draining: NamedDependency[Draining],
        last_event_id_header: Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False)] = None,
        last_event_id: Annotated[int | None, QueryParameter(ge=0, required=False)] = None,
    ) -> ServerSentEvent:
        if _open_streams[request.user.id] >= settings.sse_max_streams_per_user:
            raise TooManyRequestsException(
                detail=f"You have {settings.sse_max_streams_per_user} live streams open already; close one first.",
                headers={"Retry-After": "5"},
            )
        after = _last_event_id(last_event_id_header, last_event_id)
        stream = event_stream(
            channels=channels,
            sessions=sessions,
            user_id=request.user.id,
            last_id=after,
            heartbeat=settings.sse_heartbeat_seconds,
            draining=draining,
        )
        request.state[STREAM_STATE_KEY] = stream
        return ServerSentEvent(stream, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
