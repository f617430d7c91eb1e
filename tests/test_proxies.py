"""TRUSTED_PROXIES: which client address a request carries behind reverse proxies.

The middleware is called as the app calls it, with an ASGI scope, and the next app records
the client it was handed. Through the whole app the same rules are exercised by
tests/test_login_limits.py (per-address limits follow `X-Forwarded-For`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from litestar.types import Receive, Scope, Send

from app.config.settings import ConfigurationError, load_settings
from app.web.http.proxies import TrustedProxies

PROXIES = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


async def client_seen(
    middleware: TrustedProxies, peer: str, headers: list[tuple[str, str]], scope_type: str = "http"
) -> Any:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["client"] = scope["client"]

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": scope_type,
        "client": (peer, 5555),
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers],
    }
    await middleware.handle(scope, receive, send, app)  # type: ignore[arg-type]
    return seen["client"][0]


@pytest.mark.parametrize(
    ("peer", "value", "client"),
    [
        # From a trusted proxy: the rightmost hop that is not one of ours.
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the left one is the client's claim
        ("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.1.2.3", "203.0.113.9"),  # through two of our proxies
        ("10.9.9.9", "203.0.113.9:4711", "203.0.113.9"),
        ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
        ("127.0.0.1", "::ffff:203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),  # every hop ours: the farthest
        # Malformed hops: the nearest trusted proxy's address, never something the client chose.
        ("127.0.0.1", "garbage", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9, unknown", "127.0.0.1"),
        ("127.0.0.1", "unknown, 10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "999.1.1.1", "127.0.0.1"),
        # From an untrusted peer the header is ignored.
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),
        ("testclient", "203.0.113.9", "testclient"),
    ],
)
async def test_x_forwarded_for(peer: str, value: str, client: str) -> None:
    assert await client_seen(TrustedProxies(PROXIES), peer, [("X-Forwarded-For", value)]) == client


async def test_every_x_forwarded_for_line_counts_and_forwarded_is_not_read() -> None:
    proxies = TrustedProxies(PROXIES)
    lines = [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.9")]
    assert await client_seen(proxies, "127.0.0.1", lines) == "203.0.113.9"
    assert await client_seen(proxies, "127.0.0.1", [("Forwarded", "for=203.0.113.9")]) == "127.0.0.1"
    assert await client_seen(proxies, "127.0.0.1", [("X-Forwarded-For", "203.0.113.9")], "websocket") == "203.0.113.9"


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("for=203.0.113.9", "203.0.113.9"),
        ('for="203.0.113.9:4711";proto=https;by=10.0.0.1', "203.0.113.9"),
        ('for=198.51.100.1, for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("For=203.0.113.9, for=10.1.2.3", "203.0.113.9"),
        ("for=unknown", "127.0.0.1"),
        ("for=_hidden, for=10.1.2.3", "10.1.2.3"),
        ("proto=https", "127.0.0.1"),
        ('for="[::1', "127.0.0.1"),
    ],
)
async def test_forwarded(value: str, client: str) -> None:
    proxies = TrustedProxies(PROXIES, "forwarded")
    assert await client_seen(proxies, "127.0.0.1", [("Forwarded", value), ("X-Forwarded-For", "192.0.2.66")]) == client


async def test_without_trusted_proxies_nothing_is_rewritten() -> None:
    assert await client_seen(TrustedProxies([]), "127.0.0.1", [("X-Forwarded-For", "203.0.113.9")]) == "127.0.0.1"


@pytest.mark.parametrize("value", ["nonsense", "10.0.0.1/8", "10.0.0.0/33", "127.0.0.1, ::1/200"])
def test_bad_trusted_proxies_refuse_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", value)
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        load_settings(tmp_path / "missing.env")


def test_trusted_proxies_are_read_as_networks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", " 10.0.0.0/8 , 127.0.0.1,fd00::/8 ")
    assert set(load_settings(tmp_path / "missing.env").trusted_proxy_networks) == set(PROXIES)


@pytest.mark.parametrize(
    "name", ["LOGIN_FAILURES_PER_ACCOUNT", "LOGIN_FAILURES_PER_ADDRESS", "TOKEN_FAILURES_PER_ADDRESS"]
)
def test_a_limit_of_zero_refuses_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    monkeypatch.setenv(name, "0")
    with pytest.raises(ConfigurationError, match=name):
        load_settings(tmp_path / "missing.env")
