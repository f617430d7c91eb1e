"""The client's address behind reverse proxies (TRUSTED_PROXIES).

Behind a proxy every connection comes from the proxy, so abuse limits would count every
user as one. When, and only when, the TCP peer is in TRUSTED_PROXIES, this middleware
reads the header the proxies write (TRUSTED_PROXY_HEADER: `X-Forwarded-For`, or RFC 7239
`Forwarded`'s `for=`) and puts the client it names in `scope["client"]`, before anything
else looks at it. Only one header is read: a proxy appends to the header it writes and
passes any other through as the client sent it.

The hops are read from the right, the side the trusted proxies wrote; the first one that
is not a trusted proxy is the client. Whatever is left of it came from the client and is
never believed. A hop that is no IP address (`unknown`, garbage) stops the walk: the
address counted is then the nearest trusted proxy's, never something a client chose.
From an untrusted peer the headers are ignored. Granian's `wrap_asgi_with_proxy_headers`
does the X-Forwarded-For half of this, but trusts any non-IP entry as a literal host
name, does not read `Forwarded`, and rewrites the scheme too; this is small enough to own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_node(text: str) -> IP | None:
    """The address of one hop (`1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]:80`, `"..."`), or None."""
    node = text.strip().strip('"').strip()
    if node.startswith("["):
        node, closed, port = node[1:].partition("]")
        if not closed or (port and not port.startswith(":")):
            return None
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        ip = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def x_forwarded_for_hops(values: Iterable[str]) -> list[str]:
    return [hop for value in values for hop in value.split(",")]


def forwarded_hops(values: Iterable[str]) -> list[str]:
    """The `for=` of each element of `Forwarded` (RFC 7239); an element without one is an empty hop."""
    hops = []
    for element in (element for value in values for element in value.split(",")):
        found = ""
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                found = value
        hops.append(found)
    return hops


class TrustedProxies(ASGIMiddleware):
    """Rewrites `scope["client"]` from the proxies' header when the peer is a trusted proxy."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(self, networks: Sequence[Network], header: str = "x-forwarded-for") -> None:
        self.networks = tuple(networks)
        self.header = header.lower().encode("latin-1")
        self.hops = forwarded_hops if header.lower() == "forwarded" else x_forwarded_for_hops

    def trusts(self, ip: IP | None) -> bool:
        return ip is not None and any(ip in network for network in self.networks)

    def client_of(self, peer: IP, hops: list[str]) -> IP:
        """The rightmost hop that is not a trusted proxy; the nearest trusted one if a hop is malformed."""
        nearest = peer
        for hop in reversed(hops):
            ip = parse_node(hop)
            if ip is None:
                return nearest
            if not self.trusts(ip):
                return ip
            nearest = ip
        return nearest

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        client = scope.get("client")
        peer = parse_node(client[0]) if client and self.networks else None
        if peer is not None and self.trusts(peer):
            values = [value.decode("latin-1") for name, value in scope["headers"] if name == self.header]
            if values:
                scope["client"] = (str(self.client_of(peer, self.hops(values))), 0)
        await next_app(scope, receive, send)
