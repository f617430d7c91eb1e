"""Account hygiene (issue 21.7): sessions listed and signed out one by one, the email changed through a link to
the new address, the verification link sent again, the account exported and deleted with everything it holds.

Against the live service in both modes, through the API, the Account page without JavaScript (plain forms,
CSRF tokens, redirects) and the operators' CLI; every email arrives at the run's real SMTP server.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from app.config import get_settings
from tests.accounts import PASSWORD, new_identity, operator_cli, token_from_mail
from tests.processes import eventually
from tests.servers import LiveServer
from tests.smtp import SmtpServer
from tests.test_access_tokens import bearer, make_token
from tests.test_accounts_sessions import csrf_token, sign_in
from tests.test_revocation import TIMEOUT, SignIn, ends, open_stream, register, sign_in_api, still_open

SESSIONS = "/api/v1/users/me/sessions"
LINK = re.compile(r"https?://\S+/verify-email/([^\s/?#]+)")


async def me(client: httpx.AsyncClient, signed: SignIn) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers=signed.headers)


async def sessions_of(client: httpx.AsyncClient, signed: SignIn) -> list[dict[str, Any]]:
    listed = await client.get(SESSIONS, headers=signed.headers)
    assert listed.status_code == 200, listed.text
    rows: list[dict[str, Any]] = listed.json()
    return rows


def links_to(smtp: SmtpServer, address: str) -> list[str]:
    """The tokens of every verification link emailed to `address` so far."""
    found = []
    for received in smtp.messages:
        if address.lower() in [r.lower() for r in received.rcpt_tos]:
            found += [unquote(token) for token in LINK.findall(received.text)]
    return found


def browser_client(live_server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False)


# --- sessions ---------------------------------------------------------------------------------


async def test_sessions_are_listed_and_one_ends_at_once_with_its_stream(live_server: LiveServer) -> None:
    async with (
        httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers={"User-Agent": "phone-app/1.0"}) as phone,
        httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers={"User-Agent": "laptop-cli/2.0"}) as lap,
    ):
        identity = await register(phone)
        mine, laptop = await sign_in_api(phone, identity), await sign_in_api(lap, identity)
        rows = await sessions_of(phone, mine)
        assert sorted((row["kind"], row["user_agent"], row["current"]) for row in rows) == [
            ("api", "laptop-cli/2.0", False),
            ("api", "phone-app/1.0", True),
        ]
        assert all(row["ip_address"] == "127.0.0.1" and row["created_at"] for row in rows)
        other = next(row["id"] for row in rows if not row["current"])

        async with open_stream(lap, laptop.headers) as laptop_stream, open_stream(phone, mine.headers) as my_stream:
            assert (await phone.delete(f"{SESSIONS}/{other}", headers=mine.headers)).status_code == 204
            assert (await me(lap, laptop)).status_code == 401  # at once, though the token has not expired
            await ends(laptop_stream)
            await still_open(my_stream)
        refreshed = await lap.post("/api/v1/auth/refresh", json={"refresh_token": laptop.refresh})
        assert refreshed.status_code == 401
        assert [row["user_agent"] for row in await sessions_of(phone, mine)] == ["phone-app/1.0"]

        assert (await phone.delete(f"{SESSIONS}/{other}", headers=mine.headers)).status_code == 404  # ended
        assert (await phone.delete(f"{SESSIONS}/{uuid.uuid4()}", headers=mine.headers)).status_code == 404
        stranger = await sign_in_api(lap, await register(lap))
        (theirs,) = await sessions_of(lap, stranger)
        missing = await phone.delete(f"{SESSIONS}/{theirs['id']}", headers=mine.headers)
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert (await me(lap, stranger)).status_code == 200

        current = (await sessions_of(phone, mine))[0]["id"]  # ending one's own: a logout
        assert (await phone.delete(f"{SESSIONS}/{current}", headers=mine.headers)).status_code == 204
        assert (await me(phone, mine)).status_code == 401


async def test_a_browser_session_is_listed_and_signed_out_from_the_api(live_server: LiveServer) -> None:
    identity = new_identity()
    with browser_client(live_server) as browser:
        assert browser.post("/api/v1/auth/register", json=identity).status_code == 201
        sign_in(browser, identity)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
            api = await sign_in_api(client, identity)
            rows = await sessions_of(client, api)
            (web,) = [row for row in rows if row["kind"] == "browser"]
            assert web["user_agent"].startswith("python-httpx")
            assert browser.get("/account").status_code == 200
            assert (await client.delete(f"{SESSIONS}/{web['id']}", headers=api.headers)).status_code == 204
        page = browser.get("/account")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login")
        assert "session" not in browser.cookies  # dropped at its first use after it ended


async def test_the_account_page_signs_a_session_out_without_javascript(live_server: LiveServer) -> None:
    identity = new_identity()
    with browser_client(live_server) as browser:
        assert browser.post("/api/v1/auth/register", json=identity).status_code == 201
        sign_in(browser, identity)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers={"User-Agent": "cron"}) as c:
            api = await sign_in_api(c, identity)
            (api_row,) = [row for row in await sessions_of(c, api) if row["kind"] == "api"]
            page = browser.get("/account")
            assert page.status_code == 200
            assert "Where you are signed in" in page.text
            assert "this browser" in page.text
            assert ">cron<" in page.text.replace('<br><span class="muted">', ">")
            token = csrf_token(browser)
            action = f"/account/sessions/{api_row['id']}/revoke"
            assert f'action="{action}"' in page.text
            assert browser.post(action).status_code == 403  # no CSRF token
            signed_out = browser.post(action, data={"_csrf_token": token})
            assert signed_out.status_code == 303
            assert signed_out.headers["location"] == "/account"
            assert (await me(c, api)).status_code == 401
            after = browser.get("/account")
            assert "Session signed out." in after.text
            assert ">cron<" not in after.text.replace('<br><span class="muted">', ">")

            (web,) = [row for row in await sessions_of(c, await sign_in_api(c, identity)) if row["kind"] == "browser"]
            own = browser.post(f"/account/sessions/{web['id']}/revoke", data={"_csrf_token": csrf_token(browser)})
            assert own.status_code == 303
            assert own.headers["location"] == "/login"  # this browser's own: a sign-out
            assert browser.get("/account").status_code == 303


async def test_a_password_change_leaves_only_the_callers_session_listed(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        mine, other = await sign_in_api(client, identity), await sign_in_api(client, identity)
        change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
        assert (await client.post("/api/v1/users/me/password", json=change, headers=mine.headers)).status_code == 204
        assert (await me(client, other)).status_code == 401
        refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": mine.refresh})
        assert refreshed.status_code == 200
        fresh = SignIn(access=refreshed.json()["access_token"], refresh=refreshed.json()["refresh_token"])
        rows = await sessions_of(client, fresh)
        assert [row["current"] for row in rows] == [True]
        assert rows[0]["last_used_at"] is not None  # the refresh is a use


async def test_personal_access_tokens_cannot_reach_the_account(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        token = bearer(await make_token(client, signed, ["read", "write"]))
        calls = [
            ("GET", SESSIONS, None),
            ("DELETE", f"{SESSIONS}/{uuid.uuid4()}", None),
            ("POST", "/api/v1/users/me/email", {"new_email": "x@example.com", "current_password": PASSWORD}),
            ("POST", "/api/v1/users/me/verification", None),
            ("GET", "/api/v1/users/me/export", None),
            ("POST", "/api/v1/users/me/delete", {"current_password": PASSWORD}),
        ]
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=token)
            assert response.status_code == 403, (path, response.text)
        assert (await me(client, signed)).status_code == 200


# --- email ------------------------------------------------------------------------------------


async def test_the_email_changes_only_through_the_link_sent_to_the_new_address(
    live_server: LiveServer, smtp: SmtpServer
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity, taken = await register(client), await register(client)
        signed = await sign_in_api(client, identity)
        change = "/api/v1/users/me/email"
        new_email = f"new-{identity['username']}@example.org"

        def ask(email: str, password: str = PASSWORD) -> Any:
            return client.post(change, json={"new_email": email, "current_password": password}, headers=signed.headers)

        assert (await ask(new_email, "not my password")).status_code == 401
        invalid = await ask("not an address")
        assert invalid.status_code == 422
        assert invalid.json()["errors"][0]["field"] == "new_email"
        assert (await ask(identity["email"])).status_code == 422  # already the account's
        # A 413 may be answered before the body is read, and the connection closed: not on the shared one.
        async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as once:
            huge = {"new_email": "x" * 70_000 + "@example.org", "current_password": PASSWORD}
            assert (await once.post(change, json=huge, headers=signed.headers)).status_code in (413, 422)
        assert (await ask("a" * 300 + "@example.org")).status_code == 422
        assert (await ask("nul\u0000@example.org")).status_code == 400
        conflict = await ask(taken["email"].upper())
        assert conflict.status_code == 409
        accepted = await ask(new_email.upper())
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"pending_email": new_email}

        notice = smtp.wait_for(
            lambda m: identity["email"] in m.rcpt_tos and "being changed" in str(m.message["Subject"]), timeout=15
        )
        assert new_email in notice.text
        assert "/verify-email/" not in notice.text  # the old address gets no link
        token = token_from_mail(smtp, new_email, "/verify-email")
        assert (await me(client, signed)).json()["email"] == identity["email"]  # not until the link is opened

        confirmed = await client.post("/api/v1/auth/verify-email", json={"token": token})
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["email"] == new_email
        assert confirmed.json()["is_verified"] is True
        replay = await client.post("/api/v1/auth/verify-email", json={"token": token})
        assert replay.status_code == 400
        assert (await me(client, signed)).json()["email"] == new_email  # the session goes on
        login = await client.post("/api/v1/auth/login", json={"username": new_email, "password": PASSWORD})
        assert login.status_code == 200
        old = await client.post("/api/v1/auth/login", json={"username": identity["email"], "password": PASSWORD})
        assert old.status_code == 401


async def test_a_password_change_cancels_a_pending_email_change(live_server: LiveServer, smtp: SmtpServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        new_email = f"thief-{identity['username']}@example.org"
        body = {"new_email": new_email, "current_password": PASSWORD}
        assert (await client.post("/api/v1/users/me/email", json=body, headers=signed.headers)).status_code == 202
        token = token_from_mail(smtp, new_email, "/verify-email")
        change = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
        assert (await client.post("/api/v1/users/me/password", json=change, headers=signed.headers)).status_code == 204
        assert (await client.post("/api/v1/auth/verify-email", json={"token": token})).status_code == 400


async def test_racing_changes_to_one_address_have_exactly_one_winner(live_server: LiveServer, smtp: SmtpServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        ann, bob = await register(client), await register(client)
        users = [await sign_in_api(client, ann), await sign_in_api(client, bob)]
        wanted = f"wanted-{uuid.uuid4().hex[:8]}@example.org"
        body = {"new_email": wanted, "current_password": PASSWORD}
        asked = await asyncio.gather(
            *(client.post("/api/v1/users/me/email", json=body, headers=users[i % 2].headers) for i in range(50))
        )
        # Each password check holds a place in the account's sign-in counter while it runs: past it, a 429.
        statuses = [response.status_code for response in asked]
        assert set(statuses) <= {202, 429}, statuses
        assert all(202 in statuses[user::2] for user in (0, 1)), statuses
        tokens = eventually(
            lambda: links if len(links := links_to(smtp, wanted)) >= statuses.count(202) else None,
            timeout=60,
            what="a link for each accepted request",
        )
        used = await asyncio.gather(
            *(client.post("/api/v1/auth/verify-email", json={"token": token}) for token in tokens)
        )
        statuses = [response.status_code for response in used]
        assert statuses.count(200) == 1, statuses
        assert set(statuses) <= {200, 400, 409}, statuses  # 400: a link a newer request replaced
        emails = [(await me(client, signed)).json()["email"] for signed in users]
        assert emails.count(wanted) == 1, emails


async def test_the_verification_link_is_sent_again_within_limits(live_server: LiveServer, smtp: SmtpServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        again = "/api/v1/users/me/verification"
        for _ in range(get_settings().verification_emails_per_hour):
            assert (await client.post(again, headers=signed.headers)).status_code == 202
        limited = await client.post(again, headers=signed.headers)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) > 0
        tokens = eventually(
            lambda: links if len(links := links_to(smtp, identity["email"])) >= 6 else None,
            timeout=30,
            what="the links",
        )
        results = [(await client.post("/api/v1/auth/verify-email", json={"token": t})).status_code for t in tokens]
        assert results.count(200) == 1  # only the newest link works
        conflict = await client.post(again, headers=signed.headers)
        assert conflict.status_code == 409


# --- export and deletion ----------------------------------------------------------------------


def artifact_folder(user_id: str) -> Path:
    return get_settings().artifact_path / user_id


async def test_export_then_delete_the_account_with_everything_it_holds(
    live_server: LiveServer, db_session: Any
) -> None:
    from sqlalchemy import func, select

    from app.domain.models import Event, Notification, Task
    from app.domain.models import SignIn as SignInRow

    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        user_id = (await me(client, signed)).json()["id"]
        export = {"kind": "export", "params": {"dataset": "tasks", "format": "json"}}
        done = await client.post("/api/v1/tasks", json=export, headers={**signed.headers, "Prefer": "wait=30"})
        assert done.json()["status"] == "succeeded", done.text
        assert any(artifact_folder(user_id).rglob("*.json"))
        slow = {"kind": "demo", "params": {"steps": 10_000, "step_ms": 500}}
        running = (await client.post("/api/v1/tasks", json=slow, headers=signed.headers)).json()

        async def is_running() -> bool:
            task = await client.get(f"/api/v1/tasks/{running['id']}", headers=signed.headers)
            return bool(task.json()["status"] == "running")

        for _ in range(200):
            if await is_running():
                break
            await asyncio.sleep(0.1)
        assert await is_running()

        exported = await client.get("/api/v1/users/me/export", headers=signed.headers)
        assert exported.status_code == 200
        assert exported.headers["content-disposition"].startswith('attachment; filename="account-')
        document = exported.json()
        assert document["user"]["username"] == identity["username"]
        assert {task["kind"] for task in document["tasks"]} == {"export", "demo"}
        assert [n["title"] for n in document["notifications"]] == ["Task completed"]
        assert [s["kind"] for s in document["sessions"]] == ["api"]
        assert "password_hash" not in exported.text
        assert signed.refresh not in exported.text

        async with open_stream(client, signed.headers) as stream:
            wrong = await client.post(
                "/api/v1/users/me/delete", json={"current_password": "wrong!"}, headers=signed.headers
            )
            assert wrong.status_code == 401
            deleted = await client.post(
                "/api/v1/users/me/delete", json={"current_password": PASSWORD}, headers=signed.headers
            )
            assert deleted.status_code == 204, deleted.text
            await ends(stream)
        assert (await me(client, signed)).status_code == 401
        assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": signed.refresh})).status_code == 401
        login = await client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        assert login.status_code == 401
        assert not artifact_folder(user_id).exists()
        await asyncio.sleep(1)  # the running task's worker writes again (a step is 50 ms): it must not bring it back
        assert (await client.post("/api/v1/auth/register", json=identity)).status_code == 201  # the names are free

    uid = uuid.UUID(user_id)
    for model in (Task, Notification, Event, SignInRow):
        count = await db_session.scalar(select(func.count()).select_from(model).where(model.user_id == uid))
        assert count == 0, model.__name__


async def test_the_only_administrator_cannot_delete_their_account(live_server: LiveServer) -> None:
    admin = new_identity()
    created = operator_cli(
        "users",
        "create",
        "--email",
        admin["email"],
        "--username",
        admin["username"],
        "--password",
        PASSWORD,
        "--superuser",
    )
    assert created.returncode == 0, created.stderr
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        signed = await sign_in_api(client, admin)
        others = await client.get("/api/v1/admin/users", params={"limit": 100}, headers=signed.headers)
        for user in others.json()["items"]:  # other tests' administrators would count
            if user["is_superuser"] and user["username"] != admin["username"]:
                operator_cli("users", "delete", user["username"], "--yes")
        refused = await client.post(
            "/api/v1/users/me/delete", json={"current_password": PASSWORD}, headers=signed.headers
        )
        assert refused.status_code == 409
        assert "only administrator" in refused.json()["detail"]
        second = await register(client)
        assert operator_cli("users", "promote", second["username"]).returncode == 0
        deleted = await client.post(
            "/api/v1/users/me/delete", json={"current_password": PASSWORD}, headers=signed.headers
        )
        assert deleted.status_code == 204


async def test_operators_list_sign_out_export_and_delete_a_user(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT, headers={"User-Agent": "ops"}) as client:
        identity = await register(client)
        signed = await sign_in_api(client, identity)
        listed = operator_cli("users", "sessions", identity["username"])
        assert listed.returncode == 0, listed.stderr
        assert " api " in listed.stdout
        assert "ops" in listed.stdout
        signed_out = operator_cli("users", "revoke-sessions", identity["username"])
        assert signed_out.returncode == 0, signed_out.stderr
        assert "1 session signed out" in signed_out.stdout
        assert (await me(client, signed)).status_code == 401

        signed = await sign_in_api(client, identity)
        exported = operator_cli("users", "export", identity["username"])
        assert exported.returncode == 0, exported.stderr
        assert f'"username": "{identity["username"]}"' in exported.stdout

        kept = operator_cli("users", "delete", identity["username"])  # no --yes and nobody to say yes
        assert kept.returncode != 0
        assert (await me(client, signed)).status_code == 200
        gone = operator_cli("users", "delete", identity["username"], "--yes")
        assert gone.returncode == 0, gone.stderr
        assert "deleted" in gone.stdout
        assert (await me(client, signed)).status_code == 401
        assert operator_cli("users", "delete", identity["username"], "--yes").returncode != 0  # no such user


# --- the Account page without JavaScript ------------------------------------------------------


def test_the_account_page_changes_email_exports_and_deletes_without_javascript(
    live_server: LiveServer, smtp: SmtpServer
) -> None:
    identity = new_identity()
    with browser_client(live_server) as browser:
        assert browser.post("/api/v1/auth/register", json=identity).status_code == 201
        sign_in(browser, identity)
        page = browser.get("/account")
        assert "Send the link again" in page.text  # not verified yet
        again = browser.post("/account/verification", data={"_csrf_token": csrf_token(browser)})
        assert again.status_code == 303
        assert f"We sent a new link to {identity['email']}" in browser.get("/account").text

        new_email = f"page-{identity['username']}@example.org"
        wrong = browser.post(
            "/account/email",
            data={"new_email": new_email, "current_password": "not it at all", "_csrf_token": csrf_token(browser)},
        )
        assert wrong.status_code == 400
        assert "The current password is wrong." in wrong.text
        invalid = browser.post(
            "/account/email",
            data={"new_email": "nope", "current_password": PASSWORD, "_csrf_token": csrf_token(browser)},
        )
        assert invalid.status_code == 422
        assert 'id="new-email-error"' in invalid.text
        asked = browser.post(
            "/account/email",
            data={"new_email": new_email, "current_password": PASSWORD, "_csrf_token": csrf_token(browser)},
        )
        assert asked.status_code == 303
        assert asked.headers["location"] == "/account"
        shown = browser.get("/account").text
        assert f"We sent a link to <strong>{new_email}</strong>" in shown
        token = token_from_mail(smtp, new_email, "/verify-email")
        opened = browser.get(f"/verify-email/{token}")
        assert opened.status_code == 200
        assert new_email in browser.get("/account").text

        exported = browser.get("/account/export")
        assert exported.status_code == 200
        assert exported.headers["content-disposition"].startswith("attachment")
        assert exported.json()["user"]["email"] == new_email

        refused = browser.post(
            "/account/delete", data={"current_password": "not it at all", "_csrf_token": csrf_token(browser)}
        )
        assert refused.status_code == 400
        assert "The current password is wrong." in refused.text
        assert browser.post("/account/delete", data={"current_password": PASSWORD}).status_code == 403  # no CSRF
        deleted = browser.post(
            "/account/delete", data={"current_password": PASSWORD, "_csrf_token": csrf_token(browser)}
        )
        assert deleted.status_code == 303
        assert deleted.headers["location"] == "/"
        assert "session" not in browser.cookies
        assert browser.get("/account").status_code == 303
        form = {"username": new_email, "password": PASSWORD, "_csrf_token": csrf_token(browser)}
        assert browser.post("/login", data=form).status_code == 401
