"""Every row of the Accounts table of the API contract, over real HTTP, with real email."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.accounts import token_from_mail
from tests.servers import LiveServer
from tests.smtp import SmtpServer

PASSWORD = "correct horse battery"


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url + "/api/v1", timeout=20) as client:
        yield client


def new_identity() -> dict[str, str]:
    name = f"u{uuid.uuid4().hex[:10]}"
    return {"email": f"{name}@Example.com", "username": name, "password": PASSWORD}


def register(api: httpx.Client, **extra: str) -> dict[str, str]:
    identity = {**new_identity(), **extra}
    response = api.post("/auth/register", json=identity)
    assert response.status_code == 201, response.text
    return identity


def login(api: httpx.Client, username: str, password: str = PASSWORD) -> dict[str, object]:
    response = api.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(tokens: dict[str, object]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


# --- register ----------------------------------------------------------------------------------


def test_register_returns_the_user_and_never_a_hash(api: httpx.Client) -> None:
    identity = new_identity() | {"full_name": "Ann Example"}
    response = api.post("/auth/register", json=identity)
    assert response.status_code == 201
    user = response.json()
    assert set(user) == {
        "id", "email", "username", "full_name", "is_active", "is_verified", "is_superuser",
        "email_notifications", "created_at",
    }  # fmt: skip
    assert uuid.UUID(user["id"]).version == 7
    assert user["email"] == identity["email"].lower()
    assert (user["is_active"], user["is_verified"], user["is_superuser"]) == (True, False, False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", user["created_at"])


@pytest.mark.parametrize("field", ["email", "username"])
def test_register_refuses_a_taken_email_or_username_whatever_its_case(api: httpx.Client, field: str) -> None:
    first = register(api)
    second = new_identity() | {field: first[field].upper()}
    response = api.post("/auth/register", json=second)
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"username": "ab"}, "username"),
        ({"username": "Has Spaces"}, "username"),
        ({"username": "x" * 33}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "{username}"}, "password"),
        ({"password": "{email}"}, "password"),
    ],
)
def test_register_refuses_bad_input_and_writes_nothing(api: httpx.Client, change: dict[str, str], field: str) -> None:
    identity = new_identity()
    identity.update({k: v.format(**identity) for k, v in change.items()})
    if field == "password" and identity["password"] in (identity["username"], identity["email"]):
        identity["password"] = (
            identity["password"] + "x" * 10 if len(identity["password"]) < 10 else identity["password"]
        )
    response = api.post("/auth/register", json=identity)
    assert response.status_code in (400, 422), response.text
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert field in {error["field"] for error in body["errors"]}
    # Nothing was written: the same username is still free.
    assert api.post("/auth/register", json=new_identity() | {"username": identity["username"]}).status_code in (
        201,
        422,
    )


def test_register_refuses_a_malformed_body(api: httpx.Client) -> None:
    response = api.post("/auth/register", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["status"] == 400
    missing = api.post("/auth/register", json={"email": "a@example.com"})
    assert missing.status_code == 400


# --- login, verify, refresh, logout ----------------------------------------------------------------


def test_login_with_username_or_email_as_json_or_form(api: httpx.Client) -> None:
    identity = register(api)
    tokens = login(api, identity["username"])
    assert tokens["token_type"] == "bearer"
    assert 800 <= int(str(tokens["expires_in"])) <= 900
    form = api.post("/auth/login", data={"username": identity["email"], "password": PASSWORD})
    assert form.status_code == 200
    me = api.get("/users/me", headers=bearer(form.json()))
    assert me.json()["username"] == identity["username"]


def test_login_answers_the_same_for_unknown_user_and_wrong_password(api: httpx.Client) -> None:
    identity = register(api)
    wrong = api.post("/auth/login", json={"username": identity["username"], "password": "wrong password!"})
    unknown = api.post("/auth/login", json={"username": "nobody-" + identity["username"], "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_verify_tells_whether_a_token_is_good(api: httpx.Client) -> None:
    identity = register(api)
    tokens = login(api, identity["username"])
    response = api.get("/auth/verify", headers=bearer(tokens))
    assert response.status_code == 200
    me = api.get("/users/me", headers=bearer(tokens)).json()
    assert response.json() == {"user_id": me["id"], "valid": True}
    assert api.get("/auth/verify").status_code == 401
    assert api.get("/auth/verify", headers={"Authorization": "Bearer not.a.token"}).status_code == 401


def test_refresh_rotates_and_a_reused_token_revokes_its_family(api: httpx.Client) -> None:
    identity = register(api)
    first = login(api, identity["username"])
    second = api.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert api.get("/users/me", headers=bearer(pair)).status_code == 200
    # The old refresh token is retired; presenting it again revokes the whole family ...
    assert api.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}).status_code == 401
    # ... so the newest refresh token of that family stops working too.
    assert api.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}).status_code == 401
    assert api.post("/auth/refresh", json={"refresh_token": "made-up"}).status_code == 401


def test_logout_revokes_that_sessions_family_only(api: httpx.Client) -> None:
    identity = register(api)
    here = login(api, identity["username"])
    elsewhere = login(api, identity["username"])
    assert api.post("/auth/logout", headers=bearer(here), json={}).status_code == 204
    assert api.post("/auth/refresh", json={"refresh_token": here["refresh_token"]}).status_code == 401
    assert api.post("/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}).status_code == 200
    assert api.post("/auth/logout").status_code == 401


# --- email verification and password reset ----------------------------------------------------------


def test_verification_email_token_works_exactly_once(api: httpx.Client, smtp: SmtpServer) -> None:
    identity = register(api)
    token = token_from_mail(smtp, identity["email"], "/verify-email")
    response = api.post("/auth/verify-email", json={"token": token})
    assert response.status_code == 200
    assert response.json()["is_verified"] is True
    again = api.post("/auth/verify-email", json={"token": token})
    assert again.status_code == 400
    assert again.headers["content-type"].startswith("application/problem+json")
    assert api.post("/auth/verify-email", json={"token": "invented"}).status_code == 400


def test_forgot_and_reset_password(api: httpx.Client, smtp: SmtpServer) -> None:
    identity = register(api)
    old_session = login(api, identity["username"])
    assert api.post("/auth/forgot-password", json={"email": identity["email"]}).status_code == 202
    token = token_from_mail(smtp, identity["email"], "/reset-password")
    received = smtp.wait_for(lambda m: "/reset-password" in m.text and identity["username"] in m.text)
    assert "1 hour" in received.text

    new_password = "a brand new passphrase"
    assert api.post("/auth/reset-password", json={"token": token, "password": new_password}).status_code == 204
    # Single use; every earlier session and refresh family is gone; the new password works.
    assert api.post("/auth/reset-password", json={"token": token, "password": new_password}).status_code == 400
    assert api.get("/users/me", headers=bearer(old_session)).status_code == 401
    assert api.post("/auth/refresh", json={"refresh_token": old_session["refresh_token"]}).status_code == 401
    assert api.post("/auth/login", json={"username": identity["username"], "password": PASSWORD}).status_code == 401
    login(api, identity["username"], new_password)


def test_forgot_password_does_not_reveal_accounts(api: httpx.Client, smtp: SmtpServer) -> None:
    before = len(smtp.messages)
    response = api.post("/auth/forgot-password", json={"email": f"nobody-{uuid.uuid4().hex}@example.com"})
    assert response.status_code == 202
    assert len(smtp.messages) == before


def test_reset_refuses_a_weak_password_and_keeps_the_token(api: httpx.Client, smtp: SmtpServer) -> None:
    identity = register(api)
    api.post("/auth/forgot-password", json={"email": identity["email"]})
    token = token_from_mail(smtp, identity["email"], "/reset-password")
    weak = api.post("/auth/reset-password", json={"token": token, "password": "short"})
    assert weak.status_code == 422
    assert api.post("/auth/reset-password", json={"token": token, "password": "long enough now"}).status_code == 204


# --- the signed-in user --------------------------------------------------------------------------------


def test_me_and_profile_changes(api: httpx.Client) -> None:
    identity = register(api)
    tokens = login(api, identity["username"])
    assert api.get("/users/me").status_code == 401
    changed = api.patch(
        "/users/me", headers=bearer(tokens), json={"full_name": "New Name", "email_notifications": False}
    )
    assert changed.status_code == 200
    assert (changed.json()["full_name"], changed.json()["email_notifications"]) == ("New Name", False)
    assert api.get("/users/me", headers=bearer(tokens)).json()["full_name"] == "New Name"
    bad = api.patch("/users/me", headers=bearer(tokens), json={"email_notifications": "sometimes"})
    assert bad.status_code == 400
    unknown = api.patch("/users/me", headers=bearer(tokens), json={"is_superuser": True})
    assert unknown.status_code == 400
    assert api.get("/users/me", headers=bearer(tokens)).json()["is_superuser"] is False


def test_change_password_ends_other_sessions(api: httpx.Client) -> None:
    identity = register(api)
    here = login(api, identity["username"])
    elsewhere = login(api, identity["username"])
    wrong = api.post(
        "/users/me/password",
        headers=bearer(here),
        json={"current_password": "nope nope nope", "new_password": "x" * 12},
    )
    assert wrong.status_code == 401
    weak = api.post(
        "/users/me/password", headers=bearer(here), json={"current_password": PASSWORD, "new_password": "x"}
    )
    assert weak.status_code == 422
    new_password = "another long passphrase"
    done = api.post(
        "/users/me/password", headers=bearer(here), json={"current_password": PASSWORD, "new_password": new_password}
    )
    assert done.status_code == 204
    assert api.post("/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]}).status_code == 401
    assert api.get("/users/me", headers=bearer(elsewhere)).status_code == 401
    # This session's family survives: it refreshes into a working access token.
    renewed = api.post("/auth/refresh", json={"refresh_token": here["refresh_token"]})
    assert renewed.status_code == 200
    assert api.get("/users/me", headers=bearer(renewed.json())).status_code == 200
    login(api, identity["username"], new_password)
