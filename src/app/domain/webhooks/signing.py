"""The signature a receiver checks: `v1=` + hex HMAC-SHA256 of the secret over `f"{timestamp}.{body}"`."""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCHEME = "v1"


def new_secret() -> str:
    """`whsec_` and 32 random bytes, URL-safe base64."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Webhook-Signature` header of `body` sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(secret: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when `header` is the signature of `body` at `timestamp` (constant time)."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)
