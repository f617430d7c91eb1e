"""Browser sessions over the real server: the sign-in form with its CSRF token, the session cookie,
a new session id at sign-in, the event stream (the one API path a session cookie opens), and the
ways a session ends (a password reset, signing out).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.accounts import PASSWORD, new_identity, token_from_mail
from tests.servers import LiveServer
from tests.smtp import SmtpServer

CSRF_INPUT = re.compile(r"<input\b[^>]*\bname=\"_csrf_token\"[^>]*>")


@pytest.fixture
def browser(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A cookie-keeping client that, like a browser's fetch of a form post, does not follow redirects."""
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as client:
        yield client


@pytest.fixture
def identity(live_server: LiveServer) -> dict[str, str]:
    identity = new_identity()
    response = httpx.post(f"{live_server.url}/api/v1/auth/register", json=identity, timeout=20)
    assert response.status_code == 201, response.text
    return identity


def csrf_token(browser: httpx.Client) -> str:
    """Open the sign-in page (which sets the CSRF cookie) and read the token of its form."""
    page = browser.get("/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    field = CSRF_INPUT.search(page.text)
    assert field, page.text
    assert 'type="hidden"' in field.group(0)
    value = re.search(r'\bvalue="([^"]+)"', field.group(0))
    assert value, field.group(0)
    return value.group(1)


def sign_in(browser: httpx.Client, identity: dict[str, str]) -> httpx.Response:
    form = {"username": identity["username"], "password": PASSWORD, "_csrf_token": csrf_token(browser)}
    response = browser.post("/login", data=form)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    return response


def stream_status(client: httpx.Client) -> int:
    """Open the event stream; on a 200 read its first line, then hang up."""
    with client.stream("GET", "/api/v1/events") as response:
        if response.status_code != 200:
            response.read()
            return response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(lines)
        assert first.startswith((":", "retry:", "id:", "event:", "data:")), first
        return 200


def other_browser(live_server: LiveServer, session_id: str) -> httpx.Client:
    """A second client presenting only `session_id` as its session cookie."""
    client = httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False)
    client.cookies.set("session", session_id, domain=urlsplit(live_server.url).hostname or "")
    return client


def test_sign_in_needs_the_csrf_token_and_sets_a_safe_session_cookie(
    browser: httpx.Client, identity: dict[str, str]
) -> None:
    token = csrf_token(browser)
    form = {"username": identity["username"], "password": PASSWORD}
    assert browser.post("/login", data=form).status_code == 403
    assert browser.post("/login", data={**form, "_csrf_token": token[::-1]}).status_code == 403
    assert "session" not in browser.cookies

    wrong = browser.post("/login", data={**form, "password": "wrong password!", "_csrf_token": token})
    assert wrong.status_code == 401
    assert "Wrong username or password" in wrong.text
    assert "session" not in browser.cookies

    signed_in = browser.post("/login", data={**form, "_csrf_token": token})
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/dashboard"
    (cookie,) = [c for c in signed_in.headers.get_list("set-cookie") if c.startswith("session=")]
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in attributes, cookie
    assert "samesite=lax" in attributes, cookie
    assert "path=/" in attributes, cookie
    assert stream_status(browser) == 200


def test_no_session_is_kept_for_anyone_not_signed_in(browser: httpx.Client, live_server: LiveServer) -> None:
    for path in ("/", "/login", "/health/live", "/api/v1/users/me", "/schema/openapi.json"):
        response = browser.get(path)
        assert not [c for c in response.headers.get_list("set-cookie") if c.startswith("session=")], path
    # A made-up session id is not taken up: the answer tells the browser to drop it.
    with other_browser(live_server, secrets.token_hex(32)) as stranger:
        response = stranger.get("/login")
        (cookie,) = [c for c in response.headers.get_list("set-cookie") if c.startswith("session=")]
        assert "max-age=0" in cookie.lower(), cookie
        assert "session" not in stranger.cookies


def test_signing_in_gives_a_new_session_id(
    browser: httpx.Client, identity: dict[str, str], live_server: LiveServer
) -> None:
    planted = secrets.token_hex(32)  # an id an attacker made up and got the victim's browser to send
    browser.cookies.set("session", planted, domain=urlsplit(live_server.url).hostname or "")
    response = sign_in(browser, identity)
    issued = response.cookies.get("session")
    assert issued
    assert issued != planted
    assert browser.cookies.get("session") == issued
    assert stream_status(browser) == 200
    with other_browser(live_server, planted) as attacker:
        assert stream_status(attacker) == 401


def test_a_session_opens_the_event_stream_but_not_the_rest_of_the_api(
    browser: httpx.Client, identity: dict[str, str]
) -> None:
    assert stream_status(browser) == 401
    sign_in(browser, identity)
    assert stream_status(browser) == 200
    me = browser.get("/api/v1/users/me")
    assert me.status_code == 401
    assert me.headers["content-type"].startswith("application/problem+json")
    assert browser.get("/api/v1/auth/verify").status_code == 401


def test_a_password_reset_ends_the_browser_session(
    browser: httpx.Client, identity: dict[str, str], live_server: LiveServer, smtp: SmtpServer
) -> None:
    sign_in(browser, identity)
    assert stream_status(browser) == 200
    with httpx.Client(base_url=live_server.url + "/api/v1", timeout=20) as api:
        assert api.post("/auth/forgot-password", json={"email": identity["email"]}).status_code == 202
        token = token_from_mail(smtp, identity["email"], "/reset-password")
        reset = api.post("/auth/reset-password", json={"token": token, "password": "a brand new passphrase"})
        assert reset.status_code == 204
    assert stream_status(browser) == 401


def test_signing_out_ends_the_session(browser: httpx.Client, identity: dict[str, str], live_server: LiveServer) -> None:
    sign_in(browser, identity)
    session_id = browser.cookies["session"]
    assert browser.post("/logout").status_code == 403  # no CSRF token: still signed in
    assert stream_status(browser) == 200
    signed_out = browser.post("/logout", data={"_csrf_token": csrf_token(browser)})
    assert signed_out.status_code == 303
    assert "session" not in browser.cookies  # the browser was told to drop it
    assert stream_status(browser) == 401
    with other_browser(live_server, session_id) as replay:  # the old id is dead on the server too
        assert stream_status(replay) == 401
