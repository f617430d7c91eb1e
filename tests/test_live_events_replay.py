"""Replay correctness while events are being written concurrently (hypothesis picks the interleavings).

Writers commit events for one user from many transactions at once, each holding its
transaction open for a while after its insert; a reader follows the stream and drops and
resumes it (Last-Event-ID) at chosen points. Whatever the interleaving, the reader must
receive every committed event exactly once, in id order. Ids handed out in insert order
but committed out of order would make it skip one (the reason for the event-order lock).
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import or_, select

from app.config import get_settings
from app.domain.database import create_engine, session_factory
from app.domain.models import Event
from app.domain.notifications.events import EventLog
from tests.accounts import signed_in_headers
from tests.servers import LiveServer
from tests.sse import events

TYPE = "test.concurrent"

#: One list per writer: for each of its transactions, how long (ms) it stays open after its insert, and
#: whether its event is for everyone (user NULL) rather than for the reader's user.
writers = st.lists(
    st.lists(st.tuples(st.integers(0, 40), st.booleans()), min_size=1, max_size=4), min_size=2, max_size=5
)
#: After how many received events the reader drops the stream and resumes it.
cuts = st.lists(st.integers(1, 8), max_size=3)


async def write(sessions: object, user_id: UUID, writer: int, holds: list[tuple[int, bool]]) -> None:
    for n, (hold, for_everyone) in enumerate(holds):
        async with sessions() as session, session.begin():  # type: ignore[operator]
            await EventLog(session).record(TYPE, {"writer": writer, "n": n}, user_id=None if for_everyone else user_id)
            await asyncio.sleep(hold / 1000)


async def read(client: httpx.AsyncClient, expected: int, cuts: list[int]) -> list[int]:
    """Event ids of TYPE received until `expected` arrived, resuming the stream after each cut."""
    received: list[int] = []
    last_id = 0
    pending_cuts = list(cuts)
    while len(received) < expected:
        headers = {"Last-Event-ID": str(last_id)}
        async with client.stream("GET", "/api/v1/events", headers=headers) as response:
            assert response.status_code == 200
            taken = 0
            async for event in events(response):
                last_id = event.id
                if event.event == TYPE:
                    received.append(event.id)
                    taken += 1
                if len(received) >= expected or (pending_cuts and taken >= pending_cuts[0]):
                    break
        if pending_cuts and taken >= pending_cuts[0]:
            pending_cuts.pop(0)
    return received


async def scenario(
    live_server: LiveServer, headers: dict[str, str], holds: list[list[tuple[int, bool]]], cuts: list[int]
) -> None:
    engine = create_engine(get_settings())
    sessions = session_factory(engine)
    try:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30, headers=headers) as client:
            user_id = UUID((await client.get("/api/v1/users/me")).json()["id"])
            async with sessions() as session:
                await session.execute(select(Event).where(Event.user_id == user_id).limit(1))  # warm the pool
                before = set(
                    (
                        await session.scalars(
                            select(Event.id).where(
                                or_(Event.user_id == user_id, Event.user_id.is_(None)), Event.type == TYPE
                            )
                        )
                    ).all()
                )
            expected = len(before) + sum(len(h) for h in holds)
            reader = asyncio.create_task(asyncio.wait_for(read(client, expected, cuts), 60))
            await asyncio.gather(*(write(sessions, user_id, w, h) for w, h in enumerate(holds)))
            received = await reader
        async with sessions() as session:
            written = (
                await session.scalars(
                    select(Event.id)
                    .where(or_(Event.user_id == user_id, Event.user_id.is_(None)), Event.type == TYPE)
                    .order_by(Event.id)
                )
            ).all()
    finally:
        await engine.dispose()
    assert received == sorted(set(received)), "out of order or twice"
    assert received == list(written), "missed or extra events"


def test_replay_misses_nothing_while_events_are_written_concurrently(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        headers = signed_in_headers(client)

    @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(holds=writers, cuts=cuts)
    def check(holds: list[list[tuple[int, bool]]], cuts: list[int]) -> None:
        asyncio.run(scenario(live_server, headers, holds, cuts))

    check()
