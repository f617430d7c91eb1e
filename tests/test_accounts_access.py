"""Who may call what: every API operation refuses strangers, admin operations refuse normal users,
the admin users API works for a superuser made with the operators' CLI, and external (OIDC)
bearer tokens sign users in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import get_settings
from app.web.app import create_app
from tests.accounts import PASSWORD, new_identity, operator_cli, signed_in_headers
from tests.oidc_provider import OIDCProvider

API = "/api/v1/"
#: Operations anyone may call; every other one under /api/v1 needs a signed-in user.
PUBLIC = {"register", "login", "refreshTokens", "verifyEmail", "forgotPassword", "resetPassword"}
BODY_METHODS = {"POST", "PUT", "PATCH"}
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
PROBLEM_KEYS = {"type", "title", "status", "detail"}
#: The failure statuses the API contract (Accounts table) promises, which the document must name.
CONTRACT_ERRORS = {
    "register": {"400", "409", "422", "429"},
    "login": {"401", "429"},
    "refreshTokens": {"401"},
    "logout": {"401"},
    "verifyToken": {"401"},
    "verifyEmail": {"400"},
    "forgotPassword": {"429"},
    "resetPassword": {"400"},
    "getMe": {"401"},
    "updateMe": {"400", "422"},
    "changePassword": {"400", "422", "401"},
    "adminListUsers": {"401", "403"},
    "adminUpdateUser": {"401", "403", "404"},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.spec.get("operationId") or f"{self.method} {self.path}")

    def call(self, client: TestClient[Litestar], headers: dict[str, str] | None = None) -> Any:
        """Call it with random UUIDs for the path parameters and, where a body fits, `{}`."""
        path = re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), self.path)
        body = {"json": {}} if self.method in BODY_METHODS else {}
        return client.request(self.method, path, headers=headers, **body)


@pytest.fixture(scope="module")
def client(migrated: None) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def operations(client: TestClient[Litestar]) -> list[Operation]:
    document = client.get("/schema/openapi.json").json()
    found = [
        Operation(method.upper(), path, spec)
        for path, item in document["paths"].items()
        if path.startswith(API)
        for method, spec in item.items()
        if method in HTTP_METHODS
    ]
    assert {op.id for op in found} >= PUBLIC | set(CONTRACT_ERRORS), "accounts operations missing from the document"
    return found


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def login(client: TestClient[Litestar], username: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return dict(response.json())


def register(client: TestClient[Litestar], **extra: str) -> dict[str, Any]:
    identity = {**new_identity(), **extra}
    response = client.post("/api/v1/auth/register", json=identity)
    assert response.status_code == 201, response.text
    return {**identity, "id": response.json()["id"]}


def problem_of(response: Any, status: int) -> str | None:
    """What is wrong with `response` as a problem document of `status`, or None."""
    if response.status_code != status:
        return f"answered {response.status_code}, not {status}: {response.text[:200]}"
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return f"answered {response.headers.get('content-type')}, not application/problem+json"
    body = response.json()
    if not body.keys() >= PROBLEM_KEYS or body["status"] != status:
        return f"is not a problem document of status {status}: {body}"
    return None


# --- the OpenAPI walk -------------------------------------------------------------------------------


def test_every_operation_is_documented_with_its_errors(operations: list[Operation]) -> None:
    wrong = []
    for op in operations:
        responses = set(op.spec.get("responses", {}))
        if not op.spec.get("operationId"):
            wrong.append(f"{op.method} {op.path}: no operationId")
        if not op.spec.get("summary"):
            wrong.append(f"{op.id}: no summary")
        if not any(re.fullmatch(r"4\d\d", status) for status in responses):
            wrong.append(f"{op.id}: documents no 4xx response ({sorted(responses)})")
        if missing := CONTRACT_ERRORS.get(op.id, set()) - responses:
            wrong.append(f"{op.id}: does not document {sorted(missing)} ({sorted(responses)})")
    ids = [op.id for op in operations]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"operationIds used twice: {duplicates}"
    assert not wrong, "\n".join(wrong)


def test_every_operation_refuses_a_stranger_but_the_public_ones(
    client: TestClient[Litestar], operations: list[Operation]
) -> None:
    wrong = []
    for op in operations:
        response = op.call(client)
        if op.id in PUBLIC:
            # Open to anyone: `{}` is simply bad input (a problem, never a 500).
            status = response.status_code if response.status_code in (400, 422) else 400
        else:
            status = 401
            if response.status_code == 401 and "bearer" not in response.headers.get("www-authenticate", "").lower():
                wrong.append(f"{op.id}: a 401 without `WWW-Authenticate: Bearer`")
        if problem := problem_of(response, status):
            wrong.append(f"{op.id} ({op.method} {op.path}) {problem}")
        elif str(status) not in op.spec.get("responses", {}):
            wrong.append(f"{op.id} answers {status} but does not document it")
    assert not wrong, "\n".join(wrong)


def test_every_admin_operation_refuses_a_normal_user(client: TestClient[Litestar], operations: list[Operation]) -> None:
    admin = [op for op in operations if op.path.startswith(API + "admin/")]
    assert {op.id for op in admin} >= {"adminListUsers", "adminUpdateUser"}
    headers = signed_in_headers(client)
    wrong = []
    for op in admin:
        response = op.call(client, headers)
        if problem := problem_of(response, 403):
            wrong.append(f"{op.id} ({op.method} {op.path}) {problem}")
        elif "403" not in op.spec.get("responses", {}):
            wrong.append(f"{op.id} answers 403 but does not document it")
    assert not wrong, "\n".join(wrong)


# --- the admin users API ------------------------------------------------------------------------------


def superuser(client: TestClient[Litestar]) -> dict[str, str]:
    """A superuser made with `litestar users create --superuser`, signed in through the API."""
    identity = new_identity()
    result = operator_cli(
        "users", "create", "--email", identity["email"], "--username", identity["username"],
        "--password", PASSWORD, "--superuser",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return bearer(login(client, identity["username"]))


def usernames(page: dict[str, Any]) -> list[str]:
    return [user["username"] for user in page["items"]]


def test_admin_lists_users_by_text_by_activity_and_in_pages(client: TestClient[Litestar]) -> None:
    admin = superuser(client)
    tag = uuid.uuid4().hex[:8]
    ann = register(client, username=f"ann.{tag}", email=f"ann.{tag}@example.com")
    bob = register(client, username=f"bob-{tag}", email=f"bob-{tag}@example.com")
    cy = register(client, full_name=f"Cy {tag.upper()}")  # found by the full name only
    register(client)  # someone else

    def listing(**params: Any) -> dict[str, Any]:
        response = client.get("/api/v1/admin/users", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return dict(response.json())

    everyone = listing(q=tag)
    assert set(everyone) == {"items", "total", "limit", "offset"}
    assert (everyone["total"], everyone["limit"], everyone["offset"]) == (3, 20, 0)
    assert usernames(everyone) == [cy["username"], bob["username"], ann["username"]]  # newest first
    assert "password_hash" not in everyone["items"][0]
    assert listing(q=tag.upper())["total"] == 3
    assert usernames(listing(q=f"ann.{tag}@")) == [ann["username"]]
    assert listing(q=f"nobody-{tag}") == {"items": [], "total": 0, "limit": 20, "offset": 0}

    first, second = listing(q=tag, limit=2), listing(q=tag, limit=2, offset=2)
    assert (first["total"], first["limit"], first["offset"], len(first["items"])) == (3, 2, 0, 2)
    assert (second["total"], second["limit"], second["offset"], len(second["items"])) == (3, 2, 2, 1)
    assert usernames(first) + usernames(second) == usernames(everyone)
    assert listing(q=tag, offset=3)["items"] == []

    deactivated = client.patch(f"/api/v1/admin/users/{bob['id']}", json={"is_active": False}, headers=admin)
    assert deactivated.status_code == 200
    assert usernames(listing(q=tag, active=False)) == [bob["username"]]
    assert usernames(listing(q=tag, active=True)) == [cy["username"], ann["username"]]
    assert usernames(listing(active=False)) == [bob["username"]]
    assert listing()["total"] == 5  # the four and the superuser

    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"active": "sometimes"}):
        response = client.get("/api/v1/admin/users", params=bad, headers=admin)
        assert problem_of(response, 400) is None, (bad, response.text)


def test_admin_deactivates_and_promotes_users(client: TestClient[Litestar]) -> None:
    admin = superuser(client)
    target = register(client)
    tokens = login(client, target["username"])
    assert client.get("/api/v1/users/me", headers=bearer(tokens)).status_code == 200

    response = client.patch(f"/api/v1/admin/users/{target['id']}", json={"is_active": False}, headers=admin)
    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["is_active"]) == (target["id"], False)
    # The deactivated user's access and refresh tokens stop at once; signing in fails.
    assert problem_of(client.get("/api/v1/users/me", headers=bearer(tokens)), 401) is None
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    refused = client.post("/api/v1/auth/login", json={"username": target["username"], "password": PASSWORD})
    assert refused.status_code == 401
    # Reactivated, the user signs in again; the old tokens stay dead.
    assert client.patch(f"/api/v1/admin/users/{target['id']}", json={"is_active": True}, headers=admin).is_success
    fresh = login(client, target["username"])
    assert client.get("/api/v1/users/me", headers=bearer(tokens)).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401

    # Promotion takes effect on the user's existing token; demotion too.
    assert client.get("/api/v1/admin/users", headers=bearer(fresh)).status_code == 403
    promoted = client.patch(f"/api/v1/admin/users/{target['id']}", json={"is_superuser": True}, headers=admin)
    assert (promoted.status_code, promoted.json()["is_superuser"]) == (200, True)
    assert client.get("/api/v1/admin/users", headers=bearer(fresh)).status_code == 200
    client.patch(f"/api/v1/admin/users/{target['id']}", json={"is_superuser": False}, headers=admin)
    assert client.get("/api/v1/admin/users", headers=bearer(fresh)).status_code == 403


def test_a_superuser_cannot_deactivate_or_demote_themself(client: TestClient[Litestar]) -> None:
    admin = superuser(client)
    me = client.get("/api/v1/users/me", headers=admin).json()
    for body in ({"is_active": False}, {"is_superuser": False}):
        response = client.patch(f"/api/v1/admin/users/{me['id']}", json=body, headers=admin)
        assert problem_of(response, 409) is None, (body, response.text)
        assert "your own account" in response.json()["detail"]
    # Nothing changed: the admin still is one.
    assert client.get("/api/v1/admin/users", headers=admin).status_code == 200
    allowed = client.patch(f"/api/v1/admin/users/{me['id']}", json={"is_active": True}, headers=admin)
    assert (allowed.status_code, allowed.json()["is_active"]) == (200, True)


def test_admin_update_refuses_unknown_users_and_bad_bodies(client: TestClient[Litestar]) -> None:
    admin = superuser(client)
    target = register(client)
    unknown = client.patch(f"/api/v1/admin/users/{uuid.uuid4()}", json={"is_active": False}, headers=admin)
    assert problem_of(unknown, 404) is None, unknown.text
    for body in ({"is_active": "no"}, {"is_superuser": None}, {"is_admin": True}, [True]):
        response = client.patch(f"/api/v1/admin/users/{target['id']}", json=body, headers=admin)
        assert problem_of(response, 400) is None, (body, response.text)
    # Nothing changed.
    found = client.get("/api/v1/admin/users", params={"q": target["username"]}, headers=admin).json()["items"]
    assert [(u["is_active"], u["is_superuser"]) for u in found] == [(True, False)]


# --- external identities (OIDC bearer tokens) ---------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[OIDCProvider]:
    with OIDCProvider() as running:
        yield running


@pytest.fixture
def oidc_client(migrated: None, provider: OIDCProvider) -> Iterator[TestClient[Litestar]]:
    settings = msgspec.structs.replace(get_settings(), oidc_issuer=provider.issuer, oidc_audience=provider.audience)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_provider_signed_token_signs_in_and_makes_the_user_once(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    name = f"Ext.{uuid.uuid4().hex[:8]}"
    token = provider.token(sub=f"sub-{name}", email=f"{name}@Example.COM")
    first = oidc_client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200, first.text
    user = first.json()
    assert user["email"] == f"{name.lower()}@example.com"
    assert (user["is_active"], user["is_verified"], user["is_superuser"]) == (True, True, False)
    assert user["username"] == name.lower()

    again = provider.token(sub=f"sub-{name}", email=f"{name.upper()}@example.com")
    second = oidc_client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {again}"})
    assert second.status_code == 200
    assert second.json()["id"] == user["id"]


def test_a_provider_token_never_signs_in_to_a_registered_account_by_email_alone(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    """Linking is explicit (tests/test_oidc.py): a provider may let anyone claim any email."""
    identity = register(oidc_client)
    token = provider.token(email=identity["email"].upper())
    response = oidc_client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert problem_of(response, 401) is None, response.text
    assert "/api/v1/users/me/identities" in response.json()["detail"]


def test_a_provider_token_for_another_audience_is_refused(
    oidc_client: TestClient[Litestar], provider: OIDCProvider
) -> None:
    token = provider.token(aud="someone-else", email=f"x{uuid.uuid4().hex[:8]}@example.com")
    response = oidc_client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert problem_of(response, 401) is None, response.text
    assert oidc_client.get("/api/v1/auth/verify", headers={"Authorization": f"Bearer {token}"}).status_code == 401
