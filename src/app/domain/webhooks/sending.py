"""One POST of a delivery: through the guarded backend, no redirect followed, a bounded read of the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import httpcore

from app.config import Settings
from app.domain.webhooks.guard import AddressRefused, GuardedBackend
from app.domain.webhooks.signing import signature

USER_AGENT = "app-webhooks/1"
#: At most this much of an answer is read (and its first 200 characters kept as the error).
MAX_ANSWER_BYTES = 4096


@dataclass(frozen=True)
class Answer:
    """How one try went: the receiver's status code (None when none answered) and, unless 2xx, why.

    `final`: trying again cannot help (the address is refused): the delivery fails at once.
    """

    status_code: int | None
    error: str | None
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(url: str, delivery_id: str, body: bytes, secret: str, settings: Settings) -> Answer:
    """POST `body` signed with `secret`; never raises for the receiver's or the network's failures."""
    timestamp = int(time.time())
    headers = [
        (b"Content-Type", b"application/json"),
        (b"User-Agent", USER_AGENT.encode()),
        (b"X-Webhook-Id", delivery_id.encode()),
        (b"X-Webhook-Timestamp", str(timestamp).encode()),
        (b"X-Webhook-Signature", signature(secret, timestamp, body).encode()),
    ]
    connect, total = settings.webhook_connect_timeout_seconds, settings.webhook_timeout_seconds
    timeouts = {"connect": connect, "read": total, "write": total, "pool": connect}
    try:
        async with httpcore.AsyncConnectionPool(network_backend=GuardedBackend(settings), retries=0) as pool:
            with anyio.fail_after(total):
                async with pool.stream(
                    "POST", url, headers=headers, content=body, extensions={"timeout": timeouts}
                ) as response:
                    answer = await _read_some(response)
    except AddressRefused as exc:
        return Answer(None, str(exc), final=True)
    except TimeoutError:
        return Answer(None, f"no answer within {total:g} s")
    except httpcore.TimeoutException as exc:
        return Answer(None, f"timed out: {type(exc).__name__}")
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        return Answer(None, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status < 300:
        return Answer(response.status, None)
    if 300 <= response.status < 400:
        return Answer(response.status, f"HTTP {response.status}: redirects are not followed")
    # Printable only: an answer's NUL or line breaks never reach the database or a page.
    snippet = "".join(c if c.isprintable() else " " for c in answer.decode("utf-8", "replace")[:200])
    return Answer(response.status, f"HTTP {response.status}" + (f": {snippet}" if snippet.strip() else ""))


async def _read_some(response: httpcore.Response) -> bytes:
    """The first MAX_ANSWER_BYTES of the answer; the rest is never read."""
    read = b""
    async for chunk in response.aiter_stream():
        read += chunk
        if len(read) >= MAX_ANSWER_BYTES:
            break
    return read[:MAX_ANSWER_BYTES]
