"""Personal access tokens (issue 21.1): named, scoped, expiring, revocable API credentials for scripts.

Made and revoked by a signed-in user (never by a token), shown once, stored hashed, listed
with their last use; a token acts within its scopes only, and revoking it (or changing the
password) ends its use and its event streams at once. Against the live service, in both modes.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import httpx
import pytest

from tests.accounts import PASSWORD, operator_cli
from tests.chaos import query
from tests.servers import LiveServer
from tests.test_accounts_sessions import csrf_token, sign_in
from tests.test_revocation import TIMEOUT, SignIn, ends, open_stream, register, sign_in_api, still_open

TOKENS = "/api/v1/users/me/tokens"


async def make_token(
    client: httpx.AsyncClient, signed: SignIn, scopes: list[str], name: str = "script", **extra: Any
) -> dict[str, Any]:
    made = await client.post(TOKENS, json={"name": name, "scopes": scopes, **extra}, headers=signed.headers)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['token']}"}


async def signed_user(client: httpx.AsyncClient) -> tuple[dict[str, str], SignIn]:
    identity = await register(client)
    return identity, await sign_in_api(client, identity)


def stored_rows(database_url: str, user_name: str) -> list[dict[str, Any]]:
    """The user's token rows as the database holds them (embedded: SQLite, services: Postgres)."""
    if database_url.startswith("postgresql"):
        return query(
            database_url,
            "SELECT t.token_hash, t.prefix FROM personal_access_token t JOIN user_account u ON u.id = t.user_id "
            "WHERE u.username = $1",
            user_name,
        )
    import sqlite3

    path = database_url.split("///", 1)[1]
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT t.token_hash, t.prefix FROM personal_access_token t JOIN user_account u ON u.id = t.user_id "
            "WHERE u.username = ?",
            (user_name,),
        ).fetchall()
    return [dict(row) for row in rows]


async def test_a_token_is_shown_once_stored_hashed_and_listed_with_its_last_use(live_server: LiveServer) -> None:
    from app.config import get_settings

    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity, signed = await signed_user(client)
        token = await make_token(client, signed, ["read"], name="nightly  report ")
        assert token["token"].startswith("pat_")
        assert len(token["token"]) > 40
        assert token["name"] == "nightly report"
        assert token["scopes"] == ["read"]
        assert token["prefix"] == token["token"][:12]
        assert token["last_used_at"] is None
        listed = (await client.get(TOKENS, headers=signed.headers)).json()
        assert [t["id"] for t in listed] == [token["id"]]
        assert "token" not in listed[0]
        assert listed[0]["last_used_at"] is None

        me = await client.get("/api/v1/users/me", headers=bearer(token))
        assert me.status_code == 200
        assert me.json()["username"] == identity["username"]
        listed = (await client.get(TOKENS, headers=signed.headers)).json()
        assert listed[0]["last_used_at"] is not None  # this process's use, before it is written

    settings = get_settings()
    url = settings.database_url or f"sqlite:///{settings.var_path / 'app.db'}"
    rows = await asyncio.to_thread(stored_rows, url, identity["username"])
    assert rows == [{"token_hash": hashlib.sha256(token["token"].encode()).hexdigest(), "prefix": token["prefix"]}]


async def test_a_token_acts_only_within_its_scopes(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        _identity, signed = await signed_user(client)
        reader = bearer(await make_token(client, signed, ["read"]))
        writer = bearer(await make_token(client, signed, ["read", "write"]))
        task = {"kind": "demo", "params": {"steps": 1, "step_ms": 0}}

        assert (await client.get("/api/v1/tasks", headers=reader)).status_code == 200
        assert (await client.get("/api/v1/notifications/unread-count", headers=reader)).status_code == 200
        refused = await client.post("/api/v1/tasks", json=task, headers=reader)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "'write' scope" in refused.json()["detail"]
        started = await client.post("/api/v1/tasks", json=task, headers=writer)
        assert started.status_code == 202, started.text

        # Never the account itself, whatever the scopes: a leaked token cannot take the account over.
        for method, path, body in [
            ("POST", "/api/v1/users/me/password", {"current_password": PASSWORD, "new_password": "x" * 20}),
            ("PATCH", "/api/v1/users/me", {"full_name": "Mallory"}),
            ("POST", TOKENS, {"name": "more", "scopes": ["read", "write"]}),
            ("GET", TOKENS, None),
            ("GET", "/api/v1/admin/users", None),
        ]:
            answer = await client.request(method, path, json=body, headers=writer)
            assert answer.status_code == 403, (method, path, answer.text)
        # The pages are for signed-in browsers.
        assert (await client.get("/account", headers=writer)).status_code in (302, 303, 401, 403)


async def test_admin_scope_is_for_administrators_and_reaches_the_admin_api(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity, signed = await signed_user(client)
        refused = await client.post(TOKENS, json={"name": "ops", "scopes": ["admin"]}, headers=signed.headers)
        assert refused.status_code == 422
        assert any(error["field"] == "scopes" for error in refused.json()["errors"])

        promoted = await asyncio.to_thread(operator_cli, "users", "promote", identity["username"])
        assert promoted.returncode == 0, promoted.stderr
        admin = bearer(await make_token(client, signed, ["admin"]))
        assert (await client.get("/api/v1/admin/users", headers=admin)).status_code == 200
        assert (await client.get("/api/v1/tasks", headers=admin)).status_code == 403  # admin is not read


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x" * 101, "scopes": ["read"]}, "name"),
        ({"name": "nul\u0000byte", "scopes": ["read"]}, None),
        ({"name": "ok", "scopes": []}, "scopes"),
        ({"name": "ok", "scopes": ["root"]}, None),
        ({"name": "ok", "scopes": ["read"], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "ok", "scopes": ["read"], "expires_in_days": 366}, "expires_in_days"),
        ({"name": "ok", "scopes": ["read"], "expires_in_days": 10**30}, None),
        ({"name": "ok", "scopes": ["read"], "extra": 1}, None),
        ({"name": ["ok"], "scopes": "read"}, None),
    ],
)
async def test_bad_requests_are_4xx_problems_and_make_nothing(
    live_server: LiveServer, body: dict[str, Any], field: str | None
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        _identity, signed = await signed_user(client)
        answer = await client.post(TOKENS, json=body, headers=signed.headers)
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        if field is not None:
            assert answer.status_code == 422
            assert field in {error["field"] for error in answer.json()["errors"]}
        assert (await client.get(TOKENS, headers=signed.headers)).json() == []


async def test_revoking_ends_the_token_and_its_stream_at_once_but_no_other(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        _identity, signed = await signed_user(client)
        doomed, kept = await make_token(client, signed, ["read"]), await make_token(client, signed, ["read"])
        assert (await client.get("/api/v1/tasks", headers=bearer(doomed))).status_code == 200  # remembered now
        async with open_stream(client, bearer(doomed)) as doomed_stream, open_stream(client, bearer(kept)) as other:
            revoked = await client.delete(f"{TOKENS}/{doomed['id']}", headers=signed.headers)
            assert revoked.status_code == 204
            assert (await client.get("/api/v1/tasks", headers=bearer(doomed))).status_code == 401
            await ends(doomed_stream)
            await still_open(other)
        assert (await client.get("/api/v1/tasks", headers=bearer(kept))).status_code == 200
        assert [t["id"] for t in (await client.get(TOKENS, headers=signed.headers)).json()] == [kept["id"]]
        again = await client.delete(f"{TOKENS}/{doomed['id']}", headers=signed.headers)
        assert again.status_code == 404


async def test_another_users_token_cannot_be_revoked_or_seen(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        _ann, ann = await signed_user(client)
        _bob, bob = await signed_user(client)
        token = await make_token(client, ann, ["read"])
        assert (await client.delete(f"{TOKENS}/{token['id']}", headers=bob.headers)).status_code == 404
        assert (await client.get(TOKENS, headers=bob.headers)).json() == []
        assert (await client.get("/api/v1/tasks", headers=bearer(token))).status_code == 200


async def test_a_password_change_ends_every_token(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity, signed = await signed_user(client)
        token = bearer(await make_token(client, signed, ["read"]))
        assert (await client.get("/api/v1/tasks", headers=token)).status_code == 200
        changed = await client.post(
            "/api/v1/users/me/password",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
            headers=signed.headers,
        )
        assert changed.status_code == 204, changed.text
        assert (await client.get("/api/v1/tasks", headers=token)).status_code == 401
        again = await sign_in_api(client, identity, password="a brand new passphrase")
        assert (await client.get(TOKENS, headers=again.headers)).json() == []


async def test_unknown_and_malformed_tokens_are_401(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        for made_up in ("pat_", "pat_" + "A" * 43, "pat_" + "é" * 10, "pat_" + "x" * 5000):
            header = f"Bearer {made_up}".encode()  # bytes: httpx sends them as they are (UTF-8 included)
            answer = await client.get("/api/v1/tasks", headers={"Authorization": header})
            assert answer.status_code == 401, made_up[:20]


async def test_fifty_parallel_creations_stop_at_the_cap(live_server: LiveServer) -> None:
    from app.domain.accounts.access_tokens import MAX_ACTIVE

    async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(60.0)) as client:
        _identity, signed = await signed_user(client)
        for index in range(MAX_ACTIVE - 10):
            await make_token(client, signed, ["read"], name=f"t{index}")
        answers = await asyncio.gather(
            *(
                client.post(TOKENS, json={"name": f"p{index}", "scopes": ["read"]}, headers=signed.headers)
                for index in range(50)
            )
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * 10 + [429] * 40, statuses
        assert len((await client.get(TOKENS, headers=signed.headers)).json()) == MAX_ACTIVE


def test_the_account_page_makes_shows_once_and_revokes_a_token_without_javascript(live_server: LiveServer) -> None:
    with (
        httpx.Client(base_url=live_server.url, timeout=TIMEOUT, follow_redirects=False) as browser,
        httpx.Client(base_url=live_server.url, timeout=TIMEOUT) as api,
    ):
        identity = asyncio.run(_register_sync(live_server))
        sign_in(browser, identity)
        account = browser.get("/account")
        assert account.status_code == 200
        assert "No access tokens." in account.text

        form = {"_csrf_token": csrf_token(browser), "name": "my script", "scopes": ["read", "write"]}
        form["expires_in_days"] = "7"
        made = browser.post("/account/tokens", data=form)
        assert made.status_code == 200, made.text
        shown = re.search(r'id="new-token" type="text" readonly value="(pat_[^"]+)"', made.text)
        assert shown, made.text
        token = shown.group(1)
        assert "Copy it now: it is not shown again." in made.text
        assert "read, write" in made.text
        assert (api.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 200

        again = browser.get("/account").text
        assert token not in again  # shown once
        assert token[:12] in again
        revoke = re.search(r'action="(/account/tokens/[0-9a-f-]+/revoke)"', again)
        assert revoke
        gone = browser.post(revoke.group(1), data={"_csrf_token": csrf_token(browser)})
        assert gone.status_code == 303
        assert "Token revoked." in browser.get("/account").text
        assert (api.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})).status_code == 401

        bad = browser.post(
            "/account/tokens", data={"_csrf_token": csrf_token(browser), "name": "", "expires_in_days": "many"}
        )
        assert bad.status_code == 422
        assert 'class="field-error" id="token-days-error"' in bad.text


async def _register_sync(live_server: LiveServer) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        return await register(client)
