"""A small, real OpenID Connect provider for tests.

It serves a discovery document and a JWKS over HTTP on 127.0.0.1 (a stdlib server in a
thread), signs tokens with keys it generates, rotates keys, counts what it is asked for,
and can be told to fail with HTTP 500 or to stop answering at all.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks"
Algorithm = Literal["RS256", "ES256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: Algorithm
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        exporter = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        jwk: dict[str, Any] = exporter.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


#: RSA keys are slow to make (50-200 ms of CPU each, and the OIDC tests ask for one or more per test): a
#: process makes RSA_KEYS of them and hands them out in turn, each time under a new kid. A test that asks
#: for up to RSA_KEYS keys (a provider's, a rotation's, a stranger's) gets different ones.
RSA_KEYS = 8
_rsa_keys: list[rsa.RSAPrivateKey] = []
_rsa_turns = itertools.count()


def _rsa_key() -> rsa.RSAPrivateKey:
    turn = next(_rsa_turns) % RSA_KEYS
    if turn == len(_rsa_keys):
        _rsa_keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _rsa_keys[turn]


def new_key(algorithm: Algorithm = "RS256", kid: str | None = None) -> SigningKey:
    private: PrivateKey = _rsa_key() if algorithm == "RS256" else ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid=kid or uuid.uuid4().hex[:12], algorithm=algorithm, private=private)


class OIDCProvider:
    """Use as a context manager; `issuer` is its base URL."""

    def __init__(self, audience: str = "jobs-app") -> None:
        self.audience = audience
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._fail_next = 0
        self.failing = False
        self._keys: list[SigningKey] = [new_key()]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # --- life ----------------------------------------------------------------------------

    def start(self) -> OIDCProvider:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-provider", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: the port closes and connections are refused."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OIDCProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- keys and tokens -----------------------------------------------------------------

    @property
    def current_key(self) -> SigningKey:
        """The key new tokens are signed with (the last one added)."""
        return self._keys[-1]

    def rotate(self, algorithm: Algorithm = "RS256", *, keep_old: bool = True) -> SigningKey:
        """Publish a new key under a new kid and sign with it from now on."""
        key = new_key(algorithm)
        with self._lock:
            self._keys = [*self._keys, key] if keep_old else [key]
        return key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-123",
            "email": "Ada@Example.com",
            "email_verified": True,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}  # None drops a claim

    def token(self, *, key: SigningKey | None = None, kid: str | None = None, **claims: Any) -> str:
        """A token with default claims plus `claims`; signed by `key` (default: the current one).

        `kid` overrides the header's key id, e.g. to claim a published kid with an unpublished key.
        """
        key = key or self.current_key
        headers = {"kid": kid or key.kid}
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.algorithm, headers=headers)

    # --- faults and counts ---------------------------------------------------------------

    def fail_next(self, count: int) -> None:
        """Answer the next `count` requests with HTTP 500."""
        with self._lock:
            self._fail_next = count

    @property
    def jwks_fetches(self) -> int:
        return self.requests[JWKS_PATH]

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @contextmanager
    def down(self) -> Iterator[None]:
        """Answer every request with HTTP 500 inside the block."""
        self.failing = True
        try:
            yield
        finally:
            self.failing = False

    # --- HTTP ----------------------------------------------------------------------------

    def _respond(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests[path] += 1
            if self.failing or self._fail_next > 0:
                self._fail_next = max(0, self._fail_next - 1)
                return 500, {"error": "server_error"}
            keys = list(self._keys)
        if path == DISCOVERY_PATH:
            return 200, {
                "issuer": self.issuer,
                "jwks_uri": self.issuer + JWKS_PATH,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
            }
        if path == JWKS_PATH:
            return 200, {"keys": [key.public_jwk() for key in keys]}
        return 404, {"error": "not_found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = provider._respond(self.path.split("?", 1)[0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
