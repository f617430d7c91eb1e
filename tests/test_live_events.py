"""The live path end to end, over real HTTP: request -> job on a worker -> event row -> SSE client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import pytest
from sqlalchemy import insert

from app.domain.models import Event
from tests.accounts import PASSWORD, ROOT, new_identity, operator_cli, signed_in_headers
from tests.processes import eventually, redis_server, stack
from tests.servers import BIN, STARTUP_TIMEOUT, LiveServer, free_port, spawn
from tests.sse import Event as StreamEvent
from tests.sse import collect, events

ROUND_TRIP = "diagnostic.round_trip"
TIMEOUT = httpx.Timeout(20.0)


def _auth(live_server: LiveServer) -> dict[str, str]:
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as client:
        return signed_in_headers(client)


def _superuser_auth(live_server: LiveServer) -> dict[str, str]:
    """A superuser's headers (promoted with the operators' CLI): only they may send a diagnostic round trip."""
    identity = new_identity()
    with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as client:
        assert client.post("/api/v1/auth/register", json=identity).status_code == 201
        promoted = operator_cli("users", "promote", identity["username"])
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


async def _round_trip(client: httpx.AsyncClient, request_id: str | None = None) -> str:
    headers = {"x-request-id": request_id} if request_id else {}
    response = await client.post("/api/v1/diagnostics/round-trip", headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["token"])


async def _wait_for(client: httpx.AsyncClient, token: str, after: int = 0) -> StreamEvent:
    """Read the stream from `after` until the round trip carrying `token` arrives (20 s at most)."""
    async with asyncio.timeout(20), client.stream("GET", f"/api/v1/events?last_event_id={after}") as response:
        async for item in events(response):
            if item.event == ROUND_TRIP and item.data["token"] == token:
                return item
    raise AssertionError("stream ended")


async def test_a_job_sent_from_a_request_reaches_an_open_stream(live_server: LiveServer) -> None:
    headers = _superuser_auth(live_server)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=headers) as client:
        # Start from the newest event so that only new ones come live.
        start = await _latest_id(client)
        request_id = uuid.uuid4().hex
        listener = asyncio.create_task(collect(client, f"/api/v1/events?last_event_id={start}", 1, event=ROUND_TRIP))
        await asyncio.sleep(0.3)  # the stream is open and subscribed
        token = await _round_trip(client, request_id)
        (received,) = await asyncio.wait_for(listener, 20)
    assert received.data == {"token": token, "request_id": request_id}
    assert received.id > start


async def test_reconnect_with_last_event_id_misses_nothing(live_server: LiveServer) -> None:
    headers = _superuser_auth(live_server)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=headers) as client:
        start = await _latest_id(client)
        first = await _wait_for(client, await _round_trip(client), start)
        # While "disconnected", three more events happen (worker threads may finish them in any order).
        tokens = {await _round_trip(client) for _ in range(3)}
        for token in tokens:
            await _wait_for(client, token, first.id)
        # Reconnect with the header, then with the query parameter: the same events, in id order, once each.
        by_header = await collect(client, "/api/v1/events", 3, headers={"Last-Event-ID": str(first.id)})
        by_query = await collect(client, f"/api/v1/events?last_event_id={first.id}", 3)
    assert by_header == by_query
    assert {e.data["token"] for e in by_header} == tokens
    ids = [e.id for e in by_header]
    assert ids == sorted(set(ids))
    assert ids[0] > first.id


async def _latest_id(client: httpx.AsyncClient) -> int:
    """The id of the newest event, learned by making one."""
    token = await _round_trip(client)
    return (await _wait_for(client, token)).id


def test_heartbeat_is_a_bare_comment_on_the_wire(live_server: LiveServer) -> None:
    """SSE_HEARTBEAT_SECONDS=1 in tests: within ~2.5 s a comment line arrives with no data field."""
    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        authorization = _auth(live_server)["Authorization"].encode()
        sock.sendall(
            b"GET /api/v1/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n"
            b"Authorization: " + authorization + b"\r\n\r\n"
        )
        received = b""
        deadline = time.monotonic() + 2.5
        # ("connection: keep-alive" in the headers must not count: look after the blank line.)
        while time.monotonic() < deadline and b": keep-alive" not in received.partition(b"\r\n\r\n")[2]:
            received += sock.recv(65536)
    body = received.partition(b"\r\n\r\n")[2]
    assert b": keep-alive\r\n\r\n" in body
    # Comment blocks carry no data line, so the browser fires no message for them.
    for block in re.split(rb"\r\n\r\n", body):
        if block.lstrip(b"0123456789abcdef\r\n").startswith(b":"):
            assert b"data:" not in block, block


@pytest.mark.embedded  # no server: the same in either run
@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("task.updated", {"id": "x", "progress": {"current": 1, "total": 2}}),
        (
            "notification.created",
            {"title": "two\nlines\r\nand\rmore", "emoji": "\u2028\u00e9\U0001f600", "nul": "\x00"},
        ),
        ("test.odd\ntype", {"a": 1}),  # a line break in a type (none of ours has one) is dropped, as Litestar does
    ],
)
def test_an_event_is_written_as_litestar_writes_it(kind: str, data: dict[str, Any]) -> None:
    """The stream writes its messages itself (no scan of each line); the bytes are those of Litestar's encoder."""
    from datetime import UTC, datetime

    import msgspec
    from litestar.response import ServerSentEventMessage

    from app.domain.notifications.events import EventRecord
    from app.web.api.events import _message

    record = EventRecord(id=2**62, type=kind, data=data, created_at=datetime.now(UTC))
    expected = ServerSentEventMessage(id=record.id, event=kind, data=msgspec.json.encode(data).decode()).encode()
    assert _message(record) == expected


async def _open_streams(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(r"^app_sse_connections(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def _until_open_streams(client: httpx.AsyncClient, expected: float, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (current := await _open_streams(client)) != expected:
        assert time.monotonic() < deadline, f"{current} open streams, expected {expected}"
        await asyncio.sleep(0.1)


async def test_a_client_that_goes_away_is_freed(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=_auth(live_server)) as client:
        # Streams of earlier tests end when the server next writes to them (a heartbeat): wait for that.
        await _until_open_streams(client, 0)
        async with client.stream("GET", "/api/v1/events") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()  # keep a reference: a dropped iterator closes the response
            await anext(lines)
            await _until_open_streams(client, 1)
        await _until_open_streams(client, 0)


async def test_a_deactivated_users_open_stream_ends_and_stays_shut(live_server: LiveServer) -> None:
    admin = new_identity()
    made = operator_cli(
        "users", "create", "--email", admin["email"], "--username", admin["username"], "--password", PASSWORD,
        "--superuser",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        signed_in = await client.post("/api/v1/auth/login", json={"username": admin["username"], "password": PASSWORD})
        admin_headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        member = _auth(live_server)
        me = (await client.get("/api/v1/users/me", headers=member)).json()
        async with client.stream("GET", "/api/v1/events", headers=member) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(":")  # connected
            off = await client.patch(
                f"/api/v1/admin/users/{me['id']}", json={"is_active": False}, headers=admin_headers
            )
            assert off.status_code == 200, off.text
            async with asyncio.timeout(15):  # the stream ends: no more lines, not a wait for the test's timeout
                async for _ in lines:
                    pass
        refused = await client.get("/api/v1/events", headers=member)
        assert refused.status_code == 401


async def test_the_stream_needs_a_signed_in_user(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        response = await client.get("/api/v1/events")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("value", ["soon", "-1"])
async def test_a_bad_last_event_id_is_refused(live_server: LiveServer, value: str) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=_auth(live_server)) as client:
        response = await client.get("/api/v1/events", headers={"Last-Event-ID": value})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_user_may_hold_a_limited_number_of_streams(live_server: LiveServer) -> None:
    """SSE_MAX_STREAMS_PER_USER (10 by default): one more is a 429 until one closes."""
    headers = _auth(live_server)
    async with (
        contextlib.AsyncExitStack() as streams,
        httpx.AsyncClient(
            base_url=live_server.url, timeout=TIMEOUT, headers=headers, limits=httpx.Limits(max_connections=20)
        ) as client,
    ):
        opened = []
        for _ in range(10):
            response = await streams.enter_async_context(client.stream("GET", "/api/v1/events"))
            assert response.status_code == 200
            lines = response.aiter_lines()
            await anext(lines)  # the stream's generator runs: it is counted
            opened.append((response, lines))
        refused = await client.get("/api/v1/events")
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert refused.headers["content-type"].startswith("application/problem+json")
        await opened[0][0].aclose()
        deadline = time.monotonic() + 10
        while True:  # the server frees the closed stream at its next write (a heartbeat)
            async with client.stream("GET", "/api/v1/events") as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream was never freed"
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("serve", ["litestar run", "python -m app.web.serve"])
def test_open_streams_end_when_the_server_stops(migrated: None, serve: str) -> None:
    """SIGTERM ends every stream at once (clients reconnect elsewhere), so the server stops cleanly.

    The heartbeat is far longer than the test's patience: without draining, granian waits
    for the streams and kills its worker after its own timeout. Both ways of serving: `litestar
    run` (`make run` embedded) and `python -m app.web.serve` (the Procfile and the image).

    `litestar run` gets a kill timeout far beyond the test's patience, so a stream that is not
    ended by draining is a read timeout here. Its log cannot tell: granian's multiprocess server
    waits for its worker in two threads at once, and the one that loses the race sees a worker
    that already exited as alive and logs "Killing worker-1 after it refused to gracefully stop"
    (seen in CI 175 ms after "Stopping", a clean stop).
    """
    port = free_port()
    if serve == "litestar run":
        command = [str(BIN / "litestar"), "run", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers-kill-timeout", "600"]
    else:
        command = [str(BIN / "python"), "-m", "app.web.serve"]
    web = spawn("web-draining", command, ROOT, {"SSE_HEARTBEAT_SECONDS": "600", "HOST": "127.0.0.1", "PORT": str(port)})
    server = LiveServer(url=f"http://127.0.0.1:{port}", processes=[web])
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            eventually(
                lambda: _answers(client, "/health/live"), timeout=STARTUP_TIMEOUT, what="the web process", interval=0.2
            )
            headers = signed_in_headers(client)
            with client.stream("GET", "/api/v1/events", headers=headers) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(lines) == ": connected"
                os.killpg(web.popen.pid, signal.SIGTERM)
                rest = list(lines)  # returns when the server ends the stream
        assert web.popen.wait(timeout=30) == 0, server.logs()
    finally:
        web.stop()
    assert not [line for line in rest if line.startswith("data:")]
    if serve != "litestar run":  # one asyncio task, no race: its timeout is WORKERS_KILL_TIMEOUT_S
        assert "refused to gracefully stop" not in web.output(), web.output()


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_a_stalled_reader_neither_delays_others_nor_stays_open(live_server: LiveServer, db_session: Any) -> None:
    """A client that stops reading blocks only its own stream, which closes after SSE_SLOW_CLIENT_SECONDS (2 s here)."""
    headers = _auth(live_server)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers=headers) as client:
        user_id = UUID((await client.get("/api/v1/users/me")).json()["id"])
        closed_before = await _metric(client, "app_sse_slow_clients_total")
        # The stalled reader: a tiny receive buffer, the response headers read, then nothing.
        url = urlsplit(live_server.url)
        stalled = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = f"GET /api/v1/events HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: {headers['Authorization']}\r\n"
        stalled.sendall(request.encode() + b"\r\n")
        assert stalled.recv(12) == b"HTTP/1.1 200"
        # Far more than any socket buffer holds: 2,000 events of 4 KB for this user.
        count = 2000
        await db_session.execute(
            insert(Event),
            [{"user_id": user_id, "type": "test.bulk", "payload": {"i": i, "pad": "x" * 4096}} for i in range(count)],
        )
        await db_session.commit()
        # Meanwhile another reader of the same user receives every one of them.
        received = await collect(client, "/api/v1/events?last_event_id=0", count, event="test.bulk")
        assert [event.data["i"] for event in received] == list(range(count))
        # The server gives up on the stalled stream (it is counted) and frees it. (Its socket
        # ends too, behind the megabytes still queued for it: too slow to read through here.)
        deadline = time.monotonic() + 20
        while await _metric(client, "app_sse_slow_clients_total") <= closed_before:
            assert time.monotonic() < deadline, "the stalled stream was not closed"
            await asyncio.sleep(0.2)
        await _until_open_streams(client, 0)
        stalled.close()


@pytest.mark.services
async def test_live_events_keep_coming_after_redis_restarts(migrated: None) -> None:
    """Found by tests/test_chaos.py: after a Redis restart a web process's channels stopped for good.

    Its listening task died with the connection (no wake-ups for any stream again), its
    publishing task died at the first failed publish, and a stream opened while Redis
    was away never got its subscription. The heartbeat here is longer than the test, so
    every event below arrives through a wake-up.
    """
    settings = {"SSE_HEARTBEAT_SECONDS": "600"}
    demo = {"kind": "demo", "params": {"steps": 1}}
    with redis_server() as broker, stack(broker.url, worker=False, settings=settings, graceful=True) as services:
        headers = _auth(LiveServer(url=services.url))
        async with (
            httpx.AsyncClient(base_url=services.url, timeout=TIMEOUT, headers=headers) as client,
            client.stream("GET", "/api/v1/events") as before,
        ):
            assert before.status_code == 200
            broker.stop()
            during_outage = await client.post("/api/v1/tasks", json=demo)  # its publish fails
            assert during_outage.status_code == 202, during_outage.text
            async with client.stream("GET", "/api/v1/events?last_event_id=0") as opened_meanwhile:
                assert opened_meanwhile.status_code == 200, await opened_meanwhile.aread()
                broker.start()
                after = await client.post("/api/v1/tasks", json=demo)
                assert after.status_code == 202, after.text
                wanted = {during_outage.json()["id"], after.json()["id"]}
                for stream in (before, opened_meanwhile):
                    seen: set[str] = set()
                    async with asyncio.timeout(20):
                        async for item in events(stream):
                            if item.event == "task.updated":
                                seen.add(item.data["id"])
                            if seen >= wanted:
                                break
    assert services.web.popen.returncode != -signal.SIGKILL, f"the web process did not stop\n{services.logs()}"


async def test_a_shared_read_cut_short_by_a_long_backlog_misses_no_reader(live_server: LiveServer) -> None:
    """EventFeed: one reader's backlog fills the shared read; another, with nothing up to its end, reads on its own."""
    from app.config import get_settings
    from app.domain.database import create_engine, create_read_engine, session_factory
    from app.web.api.events import BATCH, FEED_ROWS, EventFeed

    users = []
    for _ in range(2):
        with httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as client:
            client.headers.update(signed_in_headers(client))
            users.append(UUID(client.get("/api/v1/users/me").json()["id"]))
    behind, quiet = users
    engine, reads = create_engine(get_settings()), create_read_engine(get_settings())
    try:
        sessions = session_factory(engine)
        async with sessions() as session:
            rows = [{"user_id": behind, "type": "test.backlog", "payload": {"i": i}} for i in range(FEED_ROWS + 10)]
            await session.execute(insert(Event), rows)
            await session.execute(insert(Event), [{"user_id": quiet, "type": "test.mine", "payload": {}}])
            await session.commit()
        feed = EventFeed(reads, sessions)

        async def read_all(user: UUID) -> list[Any]:
            last, got = 0, []
            while True:
                read = await feed.after(user, last)
                assert read is not None
                batch, more = read
                assert len(batch) <= BATCH
                got += batch
                last = batch[-1].id if batch else last
                if not more:
                    return got

        mine, theirs = await asyncio.gather(read_all(behind), read_all(quiet))
        assert [r.data["i"] for r in mine if r.type == "test.backlog"] == list(range(FEED_ROWS + 10))
        assert [r.type for r in theirs if r.user_id == quiet] == ["test.mine"]
        for got in (mine, theirs):
            ids = [r.id for r in got]
            assert ids == sorted(set(ids))  # in order, none twice
    finally:
        await engine.dispose()
        await reads.dispose()
