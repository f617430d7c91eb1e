"""OIDCVerifier against a real identity provider over HTTP (tests/oidc_provider.py); no mocks.

Provider faults are observed by counting the requests the provider received, not by timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from app.web.oidc import UNAVAILABLE, ExternalIdentity, ExternalTokenRejected, OIDCVerifier
from tests.oidc_provider import DISCOVERY_PATH, OIDCProvider, new_key

MakeVerifier = Callable[..., OIDCVerifier]


@pytest.fixture
def provider() -> Iterator[OIDCProvider]:
    with OIDCProvider() as running:
        yield running


@pytest.fixture
async def make_verifier(provider: OIDCProvider) -> AsyncIterator[MakeVerifier]:
    """Verifiers for the provider with test-sized timeouts and backoff; any setting can be overridden."""
    made: list[OIDCVerifier] = []

    def make(**overrides: Any) -> OIDCVerifier:
        settings: dict[str, Any] = {
            "timeout_seconds": 2.0,
            "retry_attempts": 3,
            "backoff_initial_seconds": 0.001,
            "backoff_max_seconds": 0.005,
            "breaker_threshold": 3,
            "breaker_reset_seconds": 60.0,
        }
        settings.update(overrides)
        issuer = settings.pop("issuer", provider.issuer)
        verifier = OIDCVerifier(issuer, provider.audience, **settings)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


async def rejected(verifier: OIDCVerifier, token: str) -> str:
    with pytest.raises(ExternalTokenRejected) as caught:
        await verifier.verify(token)
    return caught.value.reason


# --- accepted ----------------------------------------------------------------------------


async def test_valid_token_gives_the_identity_and_keys_are_cached(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier()
    identity = await verifier.verify(provider.token())
    assert identity == ExternalIdentity(
        subject="user-123", email="Ada@Example.com", email_verified=True, issuer=provider.issuer
    )
    await verifier.verify(provider.token(sub="user-456"))
    assert provider.requests[DISCOVERY_PATH] == 1
    assert provider.jwks_fetches == 1


async def test_es256_key_and_audience_list_are_accepted(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    provider.rotate("ES256")
    identity = await make_verifier().verify(provider.token(aud=["someone-else", provider.audience]))
    assert identity.email == "Ada@Example.com"


async def test_a_given_http_client_is_used_and_left_open(provider: OIDCProvider) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        verifier = OIDCVerifier(provider.issuer, provider.audience, http=client)
        await verifier.verify(provider.token())
        await verifier.aclose()
        assert not client.is_closed


# --- rejected ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param({"aud": "another-app"}, "wrong audience", id="wrong-audience"),
        pytest.param({"aud": None}, "missing claim", id="no-audience"),
        pytest.param({"iss": "https://evil.example"}, "wrong issuer", id="wrong-issuer"),
        pytest.param({"exp": -120, "iat": -600, "nbf": -600}, "token expired", id="expired"),
        pytest.param({"nbf": 600}, "token not yet valid", id="not-yet-valid"),
        pytest.param({"exp": None}, "missing claim", id="no-expiry"),
        pytest.param({"email_verified": False}, "email not verified", id="unverified-email"),
        pytest.param({"email_verified": "true"}, "email not verified", id="verified-as-string"),
        pytest.param({"email_verified": None}, "email not verified", id="no-email-verified"),
        pytest.param({"email": None}, "email missing", id="no-email"),
    ],
)
async def test_bad_claims_are_rejected(
    provider: OIDCProvider, make_verifier: MakeVerifier, claims: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    relative = {"exp", "iat", "nbf"}  # given as offsets from now
    claims = {name: now + value if name in relative and value is not None else value for name, value in claims.items()}
    assert await rejected(make_verifier(leeway_seconds=30), provider.token(**claims)) == reason


async def test_small_clock_skew_is_tolerated(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    now = int(time.time())
    token = provider.token(iat=now + 10, nbf=now + 10, exp=now - 10)
    assert (await make_verifier(leeway_seconds=30).verify(token)).subject == "user-123"


async def test_bad_signature_is_rejected(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    forged = provider.token(key=new_key(), kid=provider.current_key.kid, sub="admin")
    assert await rejected(make_verifier(), forged) == "bad signature"


async def test_unknown_kid_is_rejected_after_one_refetch(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    await verifier.verify(provider.token())
    assert await rejected(verifier, provider.token(key=new_key())) == "unknown signing key"
    assert provider.jwks_fetches == 2


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param("not-a-jwt", "malformed token", id="garbage"),
        pytest.param("a.b.c", "malformed token", id="bad-segments"),
    ],
)
async def test_malformed_tokens_are_rejected_without_asking_the_provider(
    provider: OIDCProvider, make_verifier: MakeVerifier, token: str, reason: str
) -> None:
    assert await rejected(make_verifier(), token) == reason
    assert provider.total_requests == 0


async def test_symmetric_and_unsigned_tokens_are_rejected_without_asking_the_provider(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier()
    claims = provider.claims()
    hs256 = jwt.encode(claims, "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256", headers={"kid": "x"})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "x"})
    assert await rejected(verifier, hs256) == "unsupported algorithm"
    assert await rejected(verifier, unsigned) == "unsupported algorithm"
    assert provider.total_requests == 0


async def test_a_token_of_another_issuer_never_reaches_the_provider(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    assert await rejected(make_verifier(), provider.token(iss="https://other.example")) == "wrong issuer"
    assert provider.total_requests == 0


async def test_discovery_naming_another_issuer_is_refused(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    issuer = provider.issuer + "/"  # the provider's document names the issuer without the slash
    verifier = make_verifier(issuer=issuer)
    assert await rejected(verifier, provider.token(iss=issuer)) == UNAVAILABLE
    assert provider.jwks_fetches == 0


# --- key rotation and unknown kids -------------------------------------------------------


async def test_rotated_key_causes_exactly_one_refetch(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    old_token = provider.token()
    await verifier.verify(old_token)
    assert provider.jwks_fetches == 1

    provider.rotate()
    await verifier.verify(provider.token())
    assert provider.jwks_fetches == 2
    await verifier.verify(provider.token(sub="another"))
    await verifier.verify(old_token)  # the old key is still published
    assert provider.jwks_fetches == 2
    assert provider.requests[DISCOVERY_PATH] == 1


async def test_a_flood_of_unknown_kids_refetches_at_most_once(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier()
    await verifier.verify(provider.token())
    stranger = new_key()
    flood = [provider.token(key=stranger, kid=f"made-up-{n}") for n in range(40)]

    results = await asyncio.gather(*(verifier.verify(token) for token in flood), return_exceptions=True)
    assert all(isinstance(r, ExternalTokenRejected) and r.reason == "unknown signing key" for r in results)
    for token in flood[:10]:
        assert await rejected(verifier, token) == "unknown signing key"
    assert provider.jwks_fetches == 2  # the first fetch and one refetch


async def test_unknown_kid_refetch_is_allowed_again_after_the_interval(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    # An interval far longer than the steps between the refetch and the check inside it,
    # even on a loaded machine (with 0.2 s, the check once came after the interval).
    interval = 2.0
    verifier = make_verifier(unknown_kid_refetch_seconds=interval)
    await verifier.verify(provider.token())
    assert await rejected(verifier, provider.token(key=new_key())) == "unknown signing key"
    refetched = time.monotonic()
    assert provider.jwks_fetches == 2

    provider.rotate()
    fresh = provider.token()
    assert await rejected(verifier, fresh) == "unknown signing key"  # inside the interval: no refetch
    assert provider.jwks_fetches == 2
    await asyncio.sleep(refetched + interval + 0.1 - time.monotonic())
    await verifier.verify(fresh)
    assert provider.jwks_fetches == 3


async def test_a_cold_flood_shares_one_fetch(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    await asyncio.gather(*(verifier.verify(provider.token(sub=f"user-{n}")) for n in range(20)))
    assert provider.requests[DISCOVERY_PATH] == 1
    assert provider.jwks_fetches == 1


# --- retries and the circuit breaker -----------------------------------------------------


async def test_one_transient_500_is_retried(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    provider.fail_next(1)
    assert (await make_verifier().verify(provider.token())).subject == "user-123"
    assert provider.requests[DISCOVERY_PATH] == 2
    assert provider.jwks_fetches == 1


async def test_retries_stop_after_the_configured_attempts(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    provider.fail_next(3)
    verifier = make_verifier(retry_attempts=3)
    assert await rejected(verifier, provider.token()) == UNAVAILABLE
    assert provider.total_requests == 3
    assert (await verifier.verify(provider.token())).subject == "user-123"  # the provider is back


async def test_a_failing_provider_opens_the_breaker_and_calls_fail_fast(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(retry_attempts=2, breaker_threshold=3)
    token = provider.token()
    with provider.down():
        for _ in range(3):
            assert await rejected(verifier, token) == UNAVAILABLE
        assert provider.total_requests == 3 * 2  # three failed fetches of two attempts each

        for _ in range(20):
            assert await rejected(verifier, token) == UNAVAILABLE
        assert provider.total_requests == 6  # the breaker is open: no request reached the provider

    assert await rejected(verifier, token) == UNAVAILABLE  # still open although the provider is back
    assert provider.total_requests == 6


async def test_the_breaker_closes_again_once_the_provider_recovers(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(retry_attempts=1, breaker_threshold=2, breaker_reset_seconds=0.2)
    token = provider.token()
    with provider.down():
        for _ in range(4):
            assert await rejected(verifier, token) == UNAVAILABLE
    assert provider.total_requests == 2

    await asyncio.sleep(0.3)  # past the breaker's reset time: one trial call goes through
    assert (await verifier.verify(token)).subject == "user-123"
    assert provider.total_requests == 4  # discovery and JWKS


async def test_a_stopped_provider_is_unavailable(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    token = provider.token()
    provider.stop()
    assert await rejected(make_verifier(), token) == UNAVAILABLE


async def test_known_keys_keep_working_while_a_refresh_fails(
    provider: OIDCProvider, make_verifier: MakeVerifier
) -> None:
    verifier = make_verifier(jwks_ttl_seconds=0.0, retry_attempts=1)  # every verify wants a refresh
    token = provider.token()
    await verifier.verify(token)
    with provider.down():
        assert (await verifier.verify(token)).subject == "user-123"
        assert provider.jwks_fetches == 2  # it tried, failed, and used the keys it had
    await verifier.verify(token)
    assert provider.jwks_fetches == 3


# --- routing -----------------------------------------------------------------------------


async def test_looks_external_routes_by_unverified_issuer(provider: OIDCProvider, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    assert verifier.looks_external(provider.token())
    assert verifier.looks_external(provider.token(key=new_key(), email_verified=False))  # routing only, not trust
    assert not verifier.looks_external(provider.token(iss="https://other.example"))
    assert not verifier.looks_external(jwt.encode({"sub": "1"}, "our-own-secret-key-of-32-bytes!!", algorithm="HS256"))
    assert not verifier.looks_external("not-a-jwt")
    assert provider.total_requests == 0
