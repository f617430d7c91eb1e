"""OIDC against a real identity provider over HTTP (tests/oidc_provider.py); no mocks.

The verifier: provider faults are observed by counting the requests the provider received,
not by timing. The service: provider tokens sign in by (issuer, subject), never by email
alone, and signed-in users link provider accounts explicitly (/api/v1/users/me/identities).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import get_settings
from app.domain.accounts.identities import ProviderIdentity
from app.web.api.oidc import UNAVAILABLE, ExternalTokenRejected, OIDCVerifier
from app.web.app import create_app
from tests.accounts import PASSWORD, new_identity, operator_cli
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
    assert identity == ProviderIdentity(
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
        pytest.param({"sub": None}, "missing claim", id="no-subject"),
        pytest.param({"sub": ""}, "missing claim", id="empty-subject"),
        pytest.param({"sub": "s" * 256}, "subject too long", id="long-subject"),
    ],
)
async def test_bad_claims_are_rejected(
    provider: OIDCProvider, make_verifier: MakeVerifier, claims: dict[str, Any], reason: str
) -> None:
    now = int(time.time())
    relative = {"exp", "iat", "nbf"}  # given as offsets from now
    claims = {name: now + value if name in relative and value is not None else value for name, value in claims.items()}
    assert await rejected(make_verifier(leeway_seconds=30), provider.token(**claims)) == reason


@pytest.mark.parametrize(
    ("claims", "email", "verified"),
    [
        pytest.param({"email_verified": False}, "Ada@Example.com", False, id="unverified-email"),
        pytest.param({"email_verified": "true"}, "Ada@Example.com", False, id="verified-as-string"),
        pytest.param({"email_verified": None}, "Ada@Example.com", False, id="no-email-verified"),
        pytest.param({"email": None}, None, True, id="no-email"),
        pytest.param({"email": 42}, None, True, id="email-not-a-string"),
        pytest.param({"sub": "s" * 255}, "Ada@Example.com", True, id="longest-subject"),
    ],
)
async def test_the_email_is_passed_on_as_claimed_not_trusted(
    provider: OIDCProvider, make_verifier: MakeVerifier, claims: dict[str, Any], email: str | None, verified: bool
) -> None:
    """A token names its holder by subject; what its email is worth is the domain's call, so it is not refused here."""
    identity = await make_verifier().verify(provider.token(**claims))
    assert (identity.email, identity.email_verified) == (email, verified)


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


# --- the service: signing in by (issuer, subject), linking explicitly -------------------

IDENTITIES = "/api/v1/users/me/identities"
ME = "/api/v1/users/me"


@pytest.fixture
def oidc_client(migrated: None, provider: OIDCProvider) -> Iterator[TestClient[Litestar]]:
    settings = msgspec.structs.replace(get_settings(), oidc_issuer=provider.issuer, oidc_audience=provider.audience)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fresh(provider: OIDCProvider, **claims: Any) -> str:
    """A provider token for a subject and email nobody has used, with `claims` on top."""
    name = f"ext{uuid.uuid4().hex[:10]}"
    return provider.token(**{"sub": f"sub-{name}", "email": f"{name}@example.com", **claims})


def registered(client: TestClient[Litestar]) -> dict[str, str]:
    """A user who signed up through the API (email not verified) and their bearer headers."""
    identity = new_identity()
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
    return {**identity, **signed_in(client, identity["username"])}


def verified(client: TestClient[Litestar]) -> dict[str, str]:
    """A user with a verified email, made by the operators' CLI, and their bearer headers."""
    identity = new_identity()
    result = operator_cli(
        "users", "create", "--email", identity["email"], "--username", identity["username"], "--password", PASSWORD
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {**identity, **signed_in(client, identity["username"])}


def signed_in(client: TestClient[Litestar], username: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


def auth(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": user["Authorization"]}


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body.keys() >= {"type", "title", "status", "detail"}, body
    assert body["status"] == status, body
    return body


def linked(client: TestClient[Litestar], headers: dict[str, str]) -> list[tuple[str, str]]:
    response = client.get(IDENTITIES, headers=headers)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == len(page["items"])
    return [(item["subject"], item["email_at_link"]) for item in page["items"]]


def test_a_provider_token_with_an_existing_accounts_email_is_refused_and_links_nothing(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    """The takeover: anyone can be `victim@...` at a provider that lets users set their email."""
    victim = registered(oidc_client)
    token = provider.token(sub=f"attacker-{uuid.uuid4().hex}", email=victim["email"].upper(), email_verified=True)
    for path in (ME, IDENTITIES, "/api/v1/tasks"):
        refused = problem(oidc_client.get(path, headers=bearer(token)), 401)
        assert IDENTITIES in refused["detail"], refused
    assert oidc_client.get(ME, headers=bearer(token)).headers["www-authenticate"].lower().startswith("bearer")

    assert linked(oidc_client, auth(victim)) == []
    me = oidc_client.get(ME, headers=auth(victim)).json()
    assert me["is_verified"] is False  # the provider's word did not verify the victim's address either
    assert problem(oidc_client.get(ME, headers=bearer(token)), 401)  # still no access


def test_a_first_sign_in_makes_an_account_bound_to_the_subject_which_outlives_email_changes(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    subject = f"sub-{uuid.uuid4().hex}"
    first_email = f"first.{uuid.uuid4().hex[:8]}@example.com"
    first = oidc_client.get(ME, headers=bearer(provider.token(sub=subject, email=first_email)))
    assert first.status_code == 200, first.text
    user = first.json()
    assert (user["email"], user["is_verified"]) == (first_email, True)

    other = registered(oidc_client)
    for claims in (
        {"email": f"changed.{uuid.uuid4().hex[:8]}@example.com"},  # the user changed it at the provider
        {"email": other["email"], "email_verified": True},  # ... to another account's address
        {"email": "not verified", "email_verified": False},
        {"email": None, "email_verified": None},  # no email scope at all
    ):
        again = oidc_client.get(ME, headers=bearer(provider.token(sub=subject, **claims)))
        assert again.status_code == 200, (claims, again.text)
        assert (again.json()["id"], again.json()["email"]) == (user["id"], first_email), claims

    assert linked(oidc_client, bearer(provider.token(sub=subject))) == [(subject, first_email)]
    assert linked(oidc_client, auth(other)) == []


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"email_verified": False}, id="unverified-email"),
        pytest.param({"email_verified": None}, id="no-email-verified"),
        pytest.param({"email": None}, id="no-email"),
        pytest.param({"email": "not-an-address"}, id="unusable-email"),
    ],
)
def test_an_unknown_subject_without_a_usable_verified_email_makes_no_account(
    oidc_client: TestClient[Litestar], provider: OIDCProvider, claims: dict[str, Any]
) -> None:
    subject = f"sub-{uuid.uuid4().hex}"
    refused = problem(oidc_client.get(ME, headers=bearer(fresh(provider, sub=subject, **claims))), 401)
    assert "verified" in refused["detail"], refused
    # Nothing was made: the same subject with a verified email is a brand-new account now.
    made = oidc_client.get(ME, headers=bearer(fresh(provider, sub=subject)))
    assert made.status_code == 200, made.text
    assert linked(oidc_client, bearer(fresh(provider, sub=subject)))[0][0] == subject


def test_linking_needs_a_signed_in_caller(oidc_client: TestClient[Litestar], provider: OIDCProvider) -> None:
    token = provider.token(sub=f"sub-{uuid.uuid4().hex}")
    problem(oidc_client.post(IDENTITIES, json={"id_token": token}), 401)
    problem(oidc_client.post(IDENTITIES, json={"id_token": token}, headers=bearer("not-a-token")), 401)
    problem(oidc_client.get(IDENTITIES), 401)
    problem(oidc_client.delete(f"{IDENTITIES}/{uuid.uuid4()}"), 401)


def test_a_signed_in_user_links_a_provider_account_with_their_verified_email(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    user = verified(oidc_client)
    subject = f"sub-{uuid.uuid4().hex}"

    def link(**claims: Any) -> Any:
        token = provider.token(**{"sub": subject, "email": user["email"].upper(), **claims})
        return oidc_client.post(IDENTITIES, json={"id_token": token}, headers=auth(user))

    refusals = [
        link(email_verified=False),  # the provider does not vouch for the address
        link(email_verified=None),
        link(email=None),
        link(email=f"someone.else.{uuid.uuid4().hex[:6]}@example.com"),  # not this account's address
        link(aud="another-app"),  # not a token for us
    ]
    for response in refusals:
        body = problem(response, 422)
        assert [e["field"] for e in body["errors"]] == ["id_token"], body
    forged = provider.token(key=new_key(), kid=provider.current_key.kid, sub=subject, email=user["email"])
    problem(oidc_client.post(IDENTITIES, json={"id_token": forged}, headers=auth(user)), 422)
    assert problem(oidc_client.get(ME, headers=bearer(provider.token(sub=subject, email=user["email"]))), 401)
    assert linked(oidc_client, auth(user)) == []

    made = link()
    assert made.status_code == 201, made.text
    assert (made.json()["issuer"], made.json()["subject"]) == (provider.issuer, subject)
    again = link()
    assert (again.status_code, again.json()["id"]) == (200, made.json()["id"])
    assert linked(oidc_client, auth(user)) == [(subject, user["email"])]

    me = oidc_client.get(ME, headers=bearer(provider.token(sub=subject, email="renamed@example.com")))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == user["username"]


def test_an_account_with_an_unverified_email_cannot_link(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    """Else whoever registered someone else's address first could bind that person's provider account to it."""
    user = registered(oidc_client)
    token = provider.token(sub=f"sub-{uuid.uuid4().hex}", email=user["email"])
    body = problem(oidc_client.post(IDENTITIES, json={"id_token": token}, headers=auth(user)), 422)
    assert [e["field"] for e in body["errors"]] == ["email"], body
    assert linked(oidc_client, auth(user)) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"id_token": ""}, id="empty-token"),
        pytest.param({"id_token": 42}, id="not-a-string"),
        pytest.param({"id_token": "x" * 20_000}, id="too-long"),
        pytest.param({"id_token": "x", "extra": 1}, id="unknown-field"),
        pytest.param({"id_token": "not-a-jwt"}, id="garbage"),
    ],
)
def test_a_bad_link_body_is_a_problem_and_writes_nothing(
    oidc_client: TestClient[Litestar], provider: OIDCProvider, body: dict[str, Any]
) -> None:
    user = verified(oidc_client) if body.get("id_token") == "not-a-jwt" else registered(oidc_client)
    response = oidc_client.post(IDENTITIES, json=body, headers=auth(user))
    assert response.status_code in (400, 422), response.text
    problem(response, response.status_code)
    assert linked(oidc_client, auth(user)) == []


def test_a_subject_bound_to_another_account_cannot_be_linked(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    subject = f"sub-{uuid.uuid4().hex}"
    owner = oidc_client.get(ME, headers=bearer(fresh(provider, sub=subject))).json()
    claimant = verified(oidc_client)
    # The provider now says the subject has the claimant's (verified) address: still the owner's.
    token = provider.token(sub=subject, email=claimant["email"])
    refused = problem(oidc_client.post(IDENTITIES, json={"id_token": token}, headers=auth(claimant)), 409)
    assert "another account" in refused["detail"], refused
    assert linked(oidc_client, auth(claimant)) == []
    assert oidc_client.get(ME, headers=bearer(token)).json()["id"] == owner["id"]


def test_unlinking_ends_the_provider_sign_in_but_never_the_last_way_in(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    user = verified(oidc_client)
    subject = f"sub-{uuid.uuid4().hex}"
    token = provider.token(sub=subject, email=user["email"])
    made = oidc_client.post(IDENTITIES, json={"id_token": token}, headers=auth(user))
    assert made.status_code == 201, made.text
    stranger = verified(oidc_client)
    problem(oidc_client.delete(f"{IDENTITIES}/{made.json()['id']}", headers=auth(stranger)), 404)
    problem(oidc_client.delete(f"{IDENTITIES}/{uuid.uuid4()}", headers=auth(user)), 404)
    problem(oidc_client.delete(f"{IDENTITIES}/not-a-uuid", headers=auth(user)), 404)

    assert oidc_client.delete(f"{IDENTITIES}/{made.json()['id']}", headers=auth(user)).status_code == 204
    assert linked(oidc_client, auth(user)) == []
    assert "link" in problem(oidc_client.get(ME, headers=bearer(token)), 401)["detail"]

    # An account made by the provider has no password: its only binding stays.
    subject = f"sub-{uuid.uuid4().hex}"
    external = bearer(fresh(provider, sub=subject))
    [only] = oidc_client.get(IDENTITIES, headers=external).json()["items"]
    refused = problem(oidc_client.delete(f"{IDENTITIES}/{only['id']}", headers=external), 409)
    assert "password" in refused["detail"], refused
    assert oidc_client.get(ME, headers=external).status_code == 200


def test_concurrent_first_sign_ins_of_one_subject_make_one_account(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    token = fresh(provider)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: oidc_client.get(ME, headers=bearer(token)), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(linked(oidc_client, bearer(token))) == 1


def test_linking_without_a_configured_provider_is_not_found(migrated: None, provider: OIDCProvider) -> None:
    with TestClient(create_app(msgspec.structs.replace(get_settings(), oidc_issuer=""))) as client:
        user = registered(client)
        token = provider.token(sub=f"sub-{uuid.uuid4().hex}", email=user["email"])
        assert (
            "OIDC_ISSUER"
            in problem(client.post(IDENTITIES, json={"id_token": token}, headers=auth(user)), 404)["detail"]
        )
        assert linked(client, auth(user)) == []


def test_linking_while_the_provider_is_down_is_a_503_and_links_nothing(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    user = verified(oidc_client)
    token = provider.token(sub=f"sub-{uuid.uuid4().hex}", email=user["email"])
    provider.stop()  # before the service ever fetched its keys
    response = oidc_client.post(IDENTITIES, json={"id_token": token}, headers=auth(user))
    problem(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert linked(oidc_client, auth(user)) == []
