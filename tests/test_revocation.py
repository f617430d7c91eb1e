"""Revocation takes effect at once: logout, password change, password reset and deactivation end
the access tokens, refresh families, sessions and event streams they name, on every web process,
while what they do not name goes on. And knowing who may act costs no database read per request.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from app.config import get_settings
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.services import RESET, AccountService
from app.web.app import create_app
from tests.accounts import PASSWORD, new_identity
from tests.processes import ROOT, eventually, redis_server, stack
from tests.servers import BIN, LiveServer, free_port, spawn_web
from tests.test_accounts_sessions import csrf_token, sign_in

TIMEOUT = httpx.Timeout(20.0)
NEW_PASSWORD = "a brand new passphrase"


class SignIn(msgspec.Struct):
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


async def register(client: httpx.AsyncClient) -> dict[str, str]:
    identity = new_identity()
    assert (await client.post("/api/v1/auth/register", json=identity)).status_code == 201
    return identity


async def sign_in_api(client: httpx.AsyncClient, identity: dict[str, str], password: str = PASSWORD) -> SignIn:
    response = await client.post("/api/v1/auth/login", json={"username": identity["username"], "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    return SignIn(access=body["access_token"], refresh=body["refresh_token"])


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """An open event stream (its first line read): yields its remaining lines."""
    async with client.stream("GET", "/api/v1/events", headers=headers) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith(":")  # connected
        yield lines


async def ends(lines: AsyncIterator[str], within: float = 15) -> float:
    """Read until the stream ends; how long that took. `within` only stops a broken test from hanging."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        async for _ in lines:
            pass
    return time.monotonic() - started


async def still_open(lines: AsyncIterator[str], seconds: float = 2.5) -> None:
    """The stream goes on (heartbeats arrive every second in tests) for `seconds`."""

    async def read_to_the_end() -> None:
        async for _ in lines:
            pass

    with pytest.raises(TimeoutError):  # an ended stream would end the loop before the timeout
        await asyncio.wait_for(read_to_the_end(), seconds)


async def me(client: httpx.AsyncClient, sign: SignIn) -> int:
    return (await client.get("/api/v1/users/me", headers=sign.headers)).status_code


async def refresh(client: httpx.AsyncClient, token: str) -> int:
    return (await client.post("/api/v1/auth/refresh", json={"refresh_token": token})).status_code


async def test_logout_ends_that_sign_in_and_its_stream_but_no_other(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        phone, laptop = await sign_in_api(client, identity), await sign_in_api(client, identity)
        assert await me(client, phone) == 200  # remembered by the process now
        async with open_stream(client, phone.headers) as phone_stream, open_stream(client, laptop.headers) as other:
            assert (await client.post("/api/v1/auth/logout", headers=phone.headers)).status_code == 204
            assert await me(client, phone) == 401  # at once, although the token has not expired
            await ends(phone_stream)
            await still_open(other)
        assert await refresh(client, phone.refresh) == 401
        assert await me(client, laptop) == 200
        assert await refresh(client, laptop.refresh) == 200


async def test_a_password_change_ends_every_other_sign_in_and_stream(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        mine, other = await sign_in_api(client, identity), await sign_in_api(client, identity)
        assert await me(client, other) == 200
        async with open_stream(client, other.headers) as other_stream:
            changed = await client.post(
                "/api/v1/users/me/password",
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                headers=mine.headers,
            )
            assert changed.status_code == 204, changed.text
            assert await me(client, other) == 401
            await ends(other_stream)
        assert await refresh(client, other.refresh) == 401
        assert await refresh(client, mine.refresh) == 200  # the caller's own sign-in goes on


async def test_a_password_reset_ends_every_sign_in_and_stream(live_server: LiveServer, db_session: Any) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        assert await me(client, signed) == 200
        settings = get_settings()
        service = AccountService(db_session, Passwords(settings), settings)
        user = await service.by_login(identity["username"])
        assert user is not None
        token = await service.email_token(user, RESET)
        await db_session.commit()
        async with open_stream(client, signed.headers) as stream:
            reset = await client.post("/api/v1/auth/reset-password", json={"token": token, "password": NEW_PASSWORD})
            assert reset.status_code == 204, reset.text
            assert await me(client, signed) == 401
            await ends(stream)
        assert await refresh(client, signed.refresh) == 401
        assert (await client.get("/api/v1/events", headers=signed.headers)).status_code == 401


async def test_signing_out_a_browser_ends_its_stream_but_not_another_browsers(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as api:
        identity = await register(api)
    with (
        httpx.Client(base_url=live_server.url, timeout=TIMEOUT, follow_redirects=False) as first,
        httpx.Client(base_url=live_server.url, timeout=TIMEOUT, follow_redirects=False) as second,
    ):
        sign_in(first, identity)
        sign_in(second, identity)
        form = {"_csrf_token": csrf_token(first)}
        async with (
            httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, cookies=first.cookies) as first_async,
            httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, cookies=second.cookies) as second_async,
            open_stream(first_async) as first_stream,
            open_stream(second_async) as second_stream,
        ):
            signed_out = await asyncio.to_thread(first.post, "/logout", data=form)
            assert signed_out.status_code == 303
            await ends(first_stream)
            await still_open(second_stream)


def test_who_may_act_is_read_once_not_per_request(migrated: None) -> None:
    app = create_app(get_settings())
    with TestClient(app) as client:
        identity = new_identity()
        assert client.post("/api/v1/auth/register", json=identity).status_code == 201
        tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        headers = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        credentials = app.state["credentials"]

        def twenty_requests_read_nothing() -> bool:
            """20 requests and no read of who may act. Until the revocation listener has subscribed (and for a
            moment after Redis was slow to answer it: messages may have been missed) the app trusts nothing it
            remembers and reads again, so a loaded machine may need another try; a read per request never passes."""
            loads = credentials.loads
            for _ in range(20):
                assert client.get("/api/v1/tasks", headers=headers).status_code == 200
            return credentials.loads == loads

        eventually(twenty_requests_read_nothing, timeout=60, what="20 requests without a credential read")
        before = credentials.loads
        # A revocation announced by this process is heard at once: the next request reads again and is refused.
        assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
        assert client.get("/api/v1/tasks", headers=headers).status_code == 401
        assert credentials.loads > before


@pytest.mark.services
async def test_revocations_reach_every_web_process_at_once(migrated: None) -> None:
    """Two web processes on one Redis; heartbeats 10 minutes apart and a 10-minute cache, so only the
    announcement can end what is revoked on the other process."""
    quiet = {"SSE_HEARTBEAT_SECONDS": "600", "AUTH_CACHE_SECONDS": "600"}
    with redis_server() as broker, stack(broker.url, worker=False, settings=quiet) as first:
        port = free_port()
        web2 = spawn_web("web-2", port, ROOT, first.env)
        second_url = f"http://127.0.0.1:{port}"
        try:

            def live() -> bool:
                assert web2.popen.poll() is None, web2.output()
                try:
                    return httpx.get(second_url + "/health/live", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(live, timeout=150, what="the second web process", interval=0.2)
            async with (
                httpx.AsyncClient(base_url=first.url, timeout=TIMEOUT) as one,
                httpx.AsyncClient(base_url=second_url, timeout=TIMEOUT) as two,
            ):
                identity = await register(one)
                changer, other = await sign_in_api(one, identity), await sign_in_api(one, identity)
                assert await me(two, other) == 200  # the second process remembers the user now
                async with open_stream(two, other.headers) as stream:
                    await asyncio.sleep(0.5)  # subscribed
                    changed = await one.post(
                        "/api/v1/users/me/password",
                        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
                        headers=changer.headers,
                    )
                    assert changed.status_code == 204
                    took = await ends(stream, within=30)
                print(f"stream on the other process ended {took * 1000:.0f} ms after the password change")
                assert await me(two, other) == 401

                fresh = await sign_in_api(one, identity, NEW_PASSWORD)
                assert await me(two, fresh) == 200
                assert (await one.post("/api/v1/auth/logout", headers=fresh.headers)).status_code == 204
                refused = await eventually_async(lambda: me(two, fresh), 401)
                print(f"token refused on the other process {refused * 1000:.0f} ms after logout")

                last = await sign_in_api(one, identity, NEW_PASSWORD)
                async with open_stream(two, last.headers) as stream:
                    off = await asyncio.to_thread(cli, first.env, "users", "deactivate", identity["username"])
                    assert off.returncode == 0, off.stderr
                    await ends(stream, within=15)
                assert await me(two, last) == 401
        finally:
            web2.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The operators' CLI against the stack's own Redis."""
    return subprocess.run(
        [str(BIN / "litestar"), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def eventually_async(check: Any, expected: int, timeout: float = 10) -> float:
    """How long until `check()` answers `expected` (it should at once; the loop covers Redis' delivery)."""
    started = time.monotonic()
    while (answer := await check()) != expected:
        assert time.monotonic() - started < timeout, f"still {answer} after {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started
