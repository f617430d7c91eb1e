"""Where a webhook may point: https (http when WEBHOOK_ALLOW_HTTP), no credentials, never a private address.

Checked twice. At submission, the URL as written (`url_problem`): a host that is literally
a private, loopback, link-local, multicast, reserved or unspecified address, in any spelling
an address parser or resolver accepts (`127.1`, `2130706433`, `0x7f.0.0.1`, `[::ffff:127.0.0.1]`),
is refused without a DNS lookup. At delivery, the connection itself (`GuardedBackend`): the
name is resolved, every address it resolves to is checked, and the socket connects to the
checked address, so a name that resolves elsewhere between a check and the connect (DNS
rebinding) cannot reach what the check refused. Hosts named in WEBHOOK_ALLOWED_HOSTS (exactly
as written in the URL) skip the address rule, for receivers on a private network or in tests.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore

from app.config import Settings

MAX_URL_LENGTH = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """A webhook's host is, or resolves to, an address it may not reach."""


def allowed_hosts(settings: Settings) -> frozenset[str]:
    return frozenset(h.strip().lower().strip("[]") for h in settings.webhook_allowed_hosts.split(",") if h.strip())


def literal_address(host: str) -> IPAddress | None:
    """The address a host names by itself, in any form a resolver reads as one; None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        pass
    try:  # inet_aton's forms: 127.1, 2130706433, 0x7f.0.0.1, 0177.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def public(address: IPAddress) -> bool:
    """False for what a webhook must never reach: private, loopback, link-local, multicast, reserved, unspecified."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not public(embedded):
            return False
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def url_problem(url: str, settings: Settings) -> str | None:
    """Why `url` cannot be a webhook (None: it can); no DNS lookup."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    schemes = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in schemes:
        return "must be an https:// URL" if not settings.webhook_allow_http else "must be an http(s):// URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry credentials"
    host = (parts.hostname or "").lower()
    if not host:
        return "must name a host"
    if port == 0:
        return "must not use port 0"
    if host in allowed_hosts(settings):
        return None
    address = literal_address(host)
    if address is not None and not public(address):
        return "must not point to a private, loopback or otherwise internal address"
    return None


def check_addresses(host: str, addresses: list[str], settings: Settings) -> None:
    """AddressRefused unless every address `host` resolved to may be reached (or the host is allowed)."""
    if host.lower().strip("[]") in allowed_hosts(settings):
        return
    for raw in addresses:
        if not public(ipaddress.ip_address(raw.split("%", 1)[0])):
            raise AddressRefused(f"{host} resolves to {raw}, an internal address: not contacted")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that resolves, checks and connects to the checked address itself.

    TLS (SNI, the certificate's name) and the Host header still use the URL's name: only the
    TCP connection is made to the address the check passed.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        with anyio.fail_after(timeout):
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise AddressRefused(f"{host} does not resolve")
        check_addresses(host, addresses, self._settings)
        return await self._inner.connect_tcp(
            addresses[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not webhooks")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
