"""The audit log (issue 21.8): admin and security actions recorded with actor, target, time, request id and
address, in the same transaction as the action; read through the admin API (filters, keyset cursor), a user's
own security history, the admin page without JavaScript and `litestar audit list`; old rows purged.

Against the live service in both modes (embedded: SQLite and in-process workers; services: Postgres, Redis
and worker processes). The rows are read back from the database itself, so what a test sees is what was
committed, not what an answer said.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import get_settings
from app.domain.accounts.models import User
from app.domain.audit.listing import Position, encode_cursor
from app.domain.audit.models import AuditEntry
from app.domain.audit.recording import MAX_DETAIL_TEXT, MAX_TYPED_LOGIN, clean_detail, record
from app.domain.audit.retention import purge_audit
from app.domain.audit.schemas import AuditContext
from app.domain.database import create_engine, session_factory
from app.domain.tasks.models import Task
from tests.accounts import PASSWORD, new_identity, operator_cli, token_from_mail
from tests.servers import LiveServer
from tests.smtp import SmtpServer
from tests.test_access_tokens import bearer, make_token
from tests.test_pages import CSRF, HTMX, is_fragment
from tests.test_revocation import TIMEOUT, SignIn, register, sign_in_api

AUDIT = "/api/v1/admin/audit"
MINE = "/api/v1/users/me/audit"
NEW_PASSWORD = "a brand new passphrase"


class Person(msgspec.Struct):
    identity: dict[str, str]
    signed: SignIn
    id: UUID

    @property
    def username(self) -> str:
        return self.identity["username"]


async def person(client: httpx.AsyncClient, *, superuser: bool = False) -> Person:
    identity = await register(client)
    if superuser:
        promoted = operator_cli("users", "promote", identity["username"])
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    signed = await sign_in_api(client, identity)
    me = await client.get("/api/v1/users/me", headers=signed.headers)
    return Person(identity=identity, signed=signed, id=UUID(me.json()["id"]))


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as c:
        yield c


async def rows(session: AsyncSession, **where: Any) -> list[AuditEntry]:
    """The committed rows (matching `where`), oldest first."""
    session.expunge_all()  # what a test holds keeps its values
    await session.rollback()  # a fresh read: nothing kept from an earlier snapshot
    statement = select(AuditEntry).order_by(AuditEntry.at, AuditEntry.id)
    for name, value in where.items():
        statement = statement.where(getattr(AuditEntry, name) == value)
    found = list(await session.scalars(statement))
    session.expunge_all()
    return found


def request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


async def one(session: AsyncSession, action: str, rid: str) -> AuditEntry:
    """The one row of `action` recorded by the request with id `rid` (that request recorded nothing else)."""
    found = await rows(session, request_id=rid)
    assert [row.action for row in found] == [action], [(row.action, row.detail) for row in found]
    return found[0]


def assert_problem(response: httpx.Response, status: int = 400, field: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    if field is not None:
        assert field in [error["field"] for error in body.get("errors", [])], body


# --- what is recorded ------------------------------------------------------------------------------


async def test_each_account_action_is_one_row_with_actor_target_request_id_and_address(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    identity = await register(client)
    rid = request_id()
    login = await client.post(
        "/api/v1/auth/login",
        json={"username": identity["username"], "password": PASSWORD},
        headers={"X-Request-ID": rid},
    )
    assert login.status_code == 200
    assert login.headers["x-request-id"] == rid
    signed = SignIn(access=login.json()["access_token"], refresh=login.json()["refresh_token"])
    row = await one(db_session, "auth.login", rid)
    user_id = UUID((await client.get("/api/v1/users/me", headers=signed.headers)).json()["id"])
    assert (row.actor_id, row.actor_name, row.target_type, row.target_id, row.target_name, row.ip) == (
        user_id,
        identity["username"],
        "user",
        str(user_id),
        identity["username"],
        "127.0.0.1",
    )
    assert row.detail is not None
    assert row.detail["kind"] == "api"
    assert abs(row.at - datetime.now(UTC)) < timedelta(minutes=5)

    async def acted(action: str, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, AuditEntry]:
        rid = request_id()
        headers = {**signed.headers, "X-Request-ID": rid, **kwargs.pop("headers", {})}
        response = await client.request(method, path, headers=headers, **kwargs)
        assert response.status_code < 300, response.text
        entry = await one(db_session, action, rid)
        assert (entry.actor_id, entry.actor_name, entry.ip) == (user_id, identity["username"], "127.0.0.1")
        return response, entry

    made, entry = await acted(
        "token.created", "POST", "/api/v1/users/me/tokens", json={"name": "n", "scopes": ["read"]}
    )
    token = made.json()
    assert (entry.target_type, entry.target_id, entry.target_name) == ("token", token["id"], "n")
    assert entry.detail is not None
    assert entry.detail["scopes"] == ["read"]
    assert entry.detail["prefix"] == token["prefix"]
    _, entry = await acted("token.revoked", "DELETE", f"/api/v1/users/me/tokens/{token['id']}")
    assert (entry.target_type, entry.target_id) == ("token", token["id"])

    other = await sign_in_api(client, identity)
    listed = (await client.get("/api/v1/users/me/sessions", headers=signed.headers)).json()
    (theirs,) = [s for s in listed if not s["current"]]
    _, entry = await acted("session.revoked", "DELETE", f"/api/v1/users/me/sessions/{theirs['id']}")
    assert (entry.target_type, entry.target_id) == ("session", theirs["id"])
    assert (await client.get("/api/v1/users/me", headers=other.headers)).status_code == 401

    _, entry = await acted("webhook_secret.rotated", "POST", "/api/v1/users/me/webhook-secret")
    assert (entry.target_type, entry.target_id) == ("user", str(user_id))
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    _, entry = await acted("password.changed", "POST", "/api/v1/users/me/password", json=body)
    signed = await sign_in_api(client, identity, NEW_PASSWORD)  # the new password ended every access token
    _, entry = await acted("account.exported", "GET", "/api/v1/users/me/export")
    _, entry = await acted("auth.logout", "POST", "/api/v1/auth/logout")
    assert entry.target_type == "session"

    signed = await sign_in_api(client, identity, NEW_PASSWORD)
    _, entry = await acted(
        "account.deleted", "POST", "/api/v1/users/me/delete", json={"current_password": NEW_PASSWORD}
    )
    # The user is gone; their history is not, and still says who it was.
    assert (entry.target_id, entry.target_name) == (str(user_id), identity["username"])
    history = await rows(db_session, actor_id=user_id)
    assert {"auth.login", "token.created", "password.changed", "account.deleted"} <= {r.action for r in history}
    assert all(r.actor_name == identity["username"] for r in history)


async def test_a_reused_refresh_token_and_a_registration_are_recorded(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    rid = request_id()
    identity = new_identity()
    created = await client.post("/api/v1/auth/register", json=identity, headers={"X-Request-ID": rid})
    assert created.status_code == 201
    entry = await one(db_session, "user.registered", rid)
    assert entry.actor_name == identity["username"]
    assert entry.target_id == created.json()["id"]

    signed = await sign_in_api(client, identity)
    assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": signed.refresh})).status_code == 200
    rid = request_id()
    reused = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed.refresh}, headers={"X-Request-ID": rid}
    )
    assert reused.status_code == 401
    entry = await one(db_session, "auth.refresh_reused", rid)
    assert entry.actor_id is None  # whoever presented it is nobody we know
    assert (entry.target_id, entry.target_name) == (created.json()["id"], identity["username"])


async def test_email_changes_and_password_resets_are_recorded_as_their_links_are_opened(
    client: httpx.AsyncClient, db_session: AsyncSession, smtp: SmtpServer
) -> None:
    ann = await person(client)
    new_email = f"new-{ann.username}@example.org"
    rid = request_id()
    asked = await client.post(
        "/api/v1/users/me/email",
        json={"new_email": new_email, "current_password": PASSWORD},
        headers={**ann.signed.headers, "X-Request-ID": rid},
    )
    assert asked.status_code == 202
    entry = await one(db_session, "email.change_requested", rid)
    assert entry.detail == {"from": ann.identity["email"], "to": new_email}
    token = token_from_mail(smtp, new_email, "/verify-email")
    rid = request_id()
    opened = await client.post("/api/v1/auth/verify-email", json={"token": token}, headers={"X-Request-ID": rid})
    assert opened.status_code == 200
    entry = await one(db_session, "email.changed", rid)
    assert (entry.actor_id, entry.target_id) == (ann.id, str(ann.id))  # whoever holds the mailbox acts for ann
    assert entry.detail == {"from": ann.identity["email"], "to": new_email}

    assert (await client.post("/api/v1/auth/forgot-password", json={"email": new_email})).status_code == 202
    token = token_from_mail(smtp, new_email, "/reset-password")
    rid = request_id()
    reset = await client.post(
        "/api/v1/auth/reset-password",
        json={"token": token, "password": NEW_PASSWORD},
        headers={"X-Request-ID": rid},
    )
    assert reset.status_code == 204
    entry = await one(db_session, "password.reset", rid)
    assert (entry.actor_name, entry.target_name) == (ann.username, ann.username)
    dumped = msgspec.json.encode([r.detail for r in await rows(db_session)]).decode()
    assert token not in dumped


async def test_failed_sign_ins_are_recorded_with_the_typed_name_cleaned_and_cut(
    client: httpx.AsyncClient, live_server: LiveServer, db_session: AsyncSession
) -> None:
    ann = await person(client)
    rid = request_id()
    wrong = await client.post(
        "/api/v1/auth/login",
        json={"username": ann.username.upper(), "password": "not the password"},
        headers={"X-Request-ID": rid},
    )
    assert wrong.status_code == 401
    entry = await one(db_session, "auth.login_failed", rid)
    assert (entry.actor_id, entry.target_type, entry.target_id) == (None, "user", str(ann.id))
    assert entry.target_name == ann.username.upper()
    assert entry.ip == "127.0.0.1"
    assert entry.detail == {"kind": "api", "known_account": True}

    hostile = "\x1b[31madmin\u202e\x07" + "x" * 5000
    rid = request_id()
    nobody = await client.post(
        "/api/v1/auth/login", json={"username": hostile, "password": "guess"}, headers={"X-Request-ID": rid}
    )
    assert nobody.status_code == 401
    entry = await one(db_session, "auth.login_failed", rid)
    assert entry.target_id is None
    assert entry.detail == {"kind": "api", "known_account": False}
    assert entry.target_name is not None
    assert entry.target_name.startswith("[31madminx")
    assert len(entry.target_name) <= MAX_TYPED_LOGIN
    assert all(c.isprintable() for c in entry.target_name)

    # A NUL never reaches a password check (a 400), so nothing is recorded.
    rid = request_id()
    nul = await client.post(
        "/api/v1/auth/login", json={"username": "ann\u0000", "password": "x"}, headers={"X-Request-ID": rid}
    )
    assert nul.status_code == 400
    assert await rows(db_session, request_id=rid) == []

    # The sign-in page records its failures too (as a browser's).
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as browser:
        page = browser.get("/login")
        token = CSRF.search(page.text)
        assert token
        rid = request_id()
        form = {"username": ann.username, "password": "nope", "_csrf_token": token.group(1)}
        assert browser.post("/login", data=form, headers={"X-Request-ID": rid}).status_code == 401
    entry = await one(db_session, "auth.login_failed", rid)
    assert entry.detail == {"kind": "browser", "known_account": True}


async def test_refused_actions_leave_no_row_and_a_rolled_back_one_leaves_none(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    admin = await person(client, superuser=True)
    refusals = [
        ("POST", "/api/v1/users/me/password", {"current_password": "wrong one!", "new_password": NEW_PASSWORD}, 401),
        ("POST", "/api/v1/users/me/tokens", {"name": "x", "scopes": ["read"], "expires_in_days": 0}, 422),
        ("PATCH", f"/api/v1/admin/users/{admin.id}", {"is_active": False}, 409),  # not oneself
        ("POST", "/api/v1/users/me/delete", {"current_password": PASSWORD}, 409),  # the only administrator
    ]
    for method, path, body, status in refusals:
        rid = request_id()
        headers = {**admin.signed.headers, "X-Request-ID": rid}
        answer = await client.request(method, path, json=body, headers=headers)
        assert answer.status_code == status, (path, answer.text)
        assert await rows(db_session, request_id=rid) == [], path

    # In the domain: a row recorded in a transaction that then fails is gone with it.
    rid = request_id()

    async def fails_after_recording(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session, session.begin():
            user = await session.get(User, admin.id)
            assert user is not None
            user.full_name = "Changed"
            record(session, AuditContext(request_id=rid), "user.role_changed", target_type="user")
            await session.flush()
            raise RuntimeError("the action failed after it was recorded")

    engine = create_engine(get_settings())
    try:
        with pytest.raises(RuntimeError):
            await fails_after_recording(session_factory(engine))
    finally:
        await engine.dispose()
    assert await rows(db_session, request_id=rid) == []
    await db_session.rollback()
    assert (await db_session.get(User, admin.id)).full_name is None  # type: ignore[union-attr]


async def test_no_password_token_or_secret_ever_reaches_the_log(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    ann = await person(client)
    secrets = [PASSWORD, NEW_PASSWORD, ann.signed.access, ann.signed.refresh]
    for scopes in (["read"], ["read", "write"]):
        secrets.append((await make_token(client, ann.signed, scopes))["token"])
    rotated = await client.post("/api/v1/users/me/webhook-secret", headers=ann.signed.headers)
    secrets.append(rotated.json()["secret"])
    change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert (await client.post("/api/v1/users/me/password", json=change, headers=ann.signed.headers)).status_code == 204
    again = await sign_in_api(client, ann.identity, NEW_PASSWORD)
    secrets += [again.access, again.refresh]
    await client.post("/api/v1/auth/login", json={"username": ann.username, "password": PASSWORD})  # the old one
    await client.post("/api/v1/auth/refresh", json={"refresh_token": ann.signed.refresh})

    everything = await rows(db_session)
    assert len(everything) >= 6
    dumped = msgspec.json.encode(
        [{c.name: getattr(row, c.name, None) for c in AuditEntry.__table__.columns} for row in everything]
    ).decode()
    for secret in secrets:
        assert secret not in dumped
    assert "pat_" in dumped  # the tokens' prefixes are there (to tell them apart), never a whole token


async def test_admin_actions_are_recorded_with_the_administrator_as_actor(
    client: httpx.AsyncClient, live_server: LiveServer, db_session: AsyncSession
) -> None:
    admin, bob = await person(client, superuser=True), await person(client)

    rid = request_id()
    headers = {**admin.signed.headers, "X-Request-ID": rid}
    changed = await client.patch(
        f"/api/v1/admin/users/{bob.id}", json={"is_active": False, "is_superuser": True}, headers=headers
    )
    assert changed.status_code == 200
    found = await rows(db_session, request_id=rid)
    assert sorted(r.action for r in found) == ["user.deactivated", "user.role_changed"]
    assert all((r.actor_id, r.target_id, r.target_name) == (admin.id, str(bob.id), bob.username) for r in found)
    (role,) = [r for r in found if r.action == "user.role_changed"]
    assert role.detail == {"is_superuser": True, "was_superuser": False}

    rid = request_id()
    sent = await client.post(
        "/api/v1/admin/notifications",
        json={"title": "Maintenance", "message": "Tonight."},
        headers={**admin.signed.headers, "X-Request-ID": rid},
    )
    assert sent.status_code == 202
    entry = await one(db_session, "broadcast.sent", rid)
    assert entry.actor_id == admin.id
    assert entry.target_type == "broadcast"
    assert entry.target_name == "Maintenance"
    assert entry.detail is not None
    assert entry.detail["recipients"] == sent.json()["recipients"]

    # A failed task retried by its owner, then by an administrator on the admin page (a plain form post).
    task = Task(
        user_id=admin.id,
        kind="demo",
        title="Nightly",
        status="failed",
        params={"steps": 1, "step_ms": 0},
        finished_at=datetime.now(UTC),
    )
    db_session.add(task)
    await db_session.commit()
    rid = request_id()
    retried = await client.post(f"/api/v1/tasks/{task.id}/retry", headers={**admin.signed.headers, "X-Request-ID": rid})
    assert retried.status_code == 202
    entry = await one(db_session, "task.retried", rid)
    assert (entry.target_type, entry.target_id, entry.target_name) == ("task", str(task.id), "Nightly")
    assert entry.detail is not None
    assert entry.detail["owner"] == admin.username

    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as browser:
        token = CSRF.search(browser.get("/login").text)
        assert token
        form = {"username": admin.username, "password": PASSWORD, "_csrf_token": token.group(1)}
        assert browser.post("/login", data=form).status_code == 303
        rid = request_id()
        page = browser.post(
            "/admin/broadcast",
            data={"title": "From the page", "message": "Hello", "_csrf_token": token.group(1)},
            headers={"X-Request-ID": rid},
        )
        assert page.status_code == 303
    entry = await one(db_session, "broadcast.sent", rid)
    assert entry.actor_name == admin.username
    assert entry.target_name == "From the page"
    logins = await rows(db_session, action="auth.login", actor_id=admin.id)
    assert [r.detail["kind"] for r in logins if r.detail] == ["api", "browser"]


async def test_the_clis_admin_actions_name_the_operator(client: httpx.AsyncClient, db_session: AsyncSession) -> None:
    bob = await person(client)
    assert operator_cli("users", "promote", bob.username).returncode == 0
    assert operator_cli("users", "revoke-sessions", bob.username).returncode == 0
    assert operator_cli("users", "deactivate", bob.username).returncode == 0
    promoted, *_ = await rows(db_session, action="user.role_changed", target_id=str(bob.id))
    assert promoted.actor_id is None
    assert promoted.actor_name is not None
    assert promoted.actor_name.startswith("cli:")
    assert promoted.request_id is not None
    assert promoted.request_id.startswith("cli-")
    assert promoted.ip is None
    (revoked,) = await rows(db_session, action="session.revoked", target_id=str(bob.id))
    assert revoked.detail == {"count": 1}
    (deactivated,) = await rows(db_session, action="user.deactivated", target_id=str(bob.id))
    assert deactivated.actor_name == promoted.actor_name

    listed = operator_cli("audit", "list", "--actor", promoted.actor_name, "--action", "user.")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = [line for line in listed.stdout.splitlines() if bob.username in line]
    assert [line.split()[2] for line in lines] == ["user.deactivated", "user.role_changed"]  # newest first
    assert "WHEN (UTC)" in listed.stdout
    assert "REQUEST" in listed.stdout
    bad = operator_cli("audit", "list", "--since", "yesterday-ish")
    assert bad.returncode != 0
    assert "since" in (bad.stdout + bad.stderr)
    helped = operator_cli("audit", "list", "--help")
    for option in ("--action", "--actor", "--target-type", "--target-id", "--request-id", "--search", "--since"):
        assert option in helped.stdout
    assert helped.stdout.count("Only") >= 8  # every filter says what it keeps


# --- reading the log ------------------------------------------------------------------------------


BASE = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


async def seed(session: AsyncSession, actor: UUID) -> list[AuditEntry]:
    """Rows with known times (a minute apart, oldest first), written straight into the table."""
    made = [
        AuditEntry(at=BASE, action="auth.login", actor_id=actor, actor_name="ann", target_type="user",
                   target_id=str(actor), target_name="ann", request_id="r-1", ip="10.0.0.1"),
        AuditEntry(at=BASE + timedelta(minutes=1), action="auth.login_failed", target_type="user",
                   target_name="Mallory_100%", request_id="r-2", ip="10.0.0.2"),
        AuditEntry(at=BASE + timedelta(minutes=2), action="token.created", actor_id=actor, actor_name="ann",
                   target_type="token", target_id="tok-1", target_name="nightly", request_id="r-3"),
        AuditEntry(at=BASE + timedelta(minutes=3), action="user.role_changed", actor_name="cli:root",
                   target_type="user", target_id=str(actor), target_name="ann", request_id="r-4"),
        AuditEntry(at=BASE + timedelta(minutes=3), action="broadcast.sent", actor_name="cli:root",
                   target_type="broadcast", target_id="b-1", target_name="Hello", request_id="r-4"),
    ]  # fmt: skip
    session.add_all(made)
    await session.commit()
    return made


async def test_the_admin_list_filters_and_pages_newest_first(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    admin = await person(client, superuser=True)
    made = await seed(db_session, admin.id)
    window = {"until": (BASE + timedelta(hours=1)).isoformat()}

    async def actions(**params: Any) -> list[str]:
        answer = await client.get(AUDIT, params={**window, **params}, headers=admin.signed.headers)
        assert answer.status_code == 200, answer.text
        return [item["action"] for item in answer.json()["items"]]

    newest = sorted(made, key=lambda row: (row.at, row.id), reverse=True)  # the same time: by id
    assert await actions() == [row.action for row in newest]
    assert await actions(action="auth.") == ["auth.login_failed", "auth.login"]
    assert await actions(action="auth.*") == await actions(action="auth") == await actions(action="auth.")
    assert await actions(action="auth.login") == ["auth.login"]
    assert await actions(action="auth.login,token.created") == ["token.created", "auth.login"]
    assert await actions(action=["auth.login", "broadcast."]) == ["broadcast.sent", "auth.login"]
    assert await actions(actor=str(admin.id)) == ["token.created", "auth.login"]
    assert await actions(actor="CLI:root") == (await actions(request_id="r-4"))
    assert len(await actions(actor="cli:root")) == 2
    assert await actions(target_type="token") == ["token.created"]
    assert await actions(target_type="user", target_id=str(admin.id)) == ["user.role_changed", "auth.login"]
    one_minute = {
        "since": (BASE + timedelta(minutes=1)).isoformat(),
        "until": (BASE + timedelta(minutes=2)).isoformat(),
    }
    assert await actions(**one_minute) == ["auth.login_failed"]
    assert await actions(q="mallory_100%") == ["auth.login_failed"]  # literally, any case
    assert await actions(q="_100") == ["auth.login_failed"]
    assert await actions(q="%") == ["auth.login_failed"]
    assert await actions(request_id="nope") == []

    # Page by page with the cursor: every row once, newest first, whatever arrives meanwhile.
    seen: list[str] = []
    page = (await client.get(AUDIT, params={**window, "limit": 2}, headers=admin.signed.headers)).json()
    assert set(page) == {"items", "limit", "next_cursor"}
    while True:
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        db_session.add(AuditEntry(at=BASE + timedelta(minutes=4), action="auth.login", request_id="late"))
        await db_session.commit()
        params = {**window, "limit": 2, "cursor": page["next_cursor"]}
        page = (await client.get(AUDIT, params=params, headers=admin.signed.headers)).json()
    assert seen == [str(row.id) for row in newest]
    item = (await client.get(AUDIT, params={"request_id": "r-1"}, headers=admin.signed.headers)).json()["items"][0]
    assert item["ip"] == "10.0.0.1"
    assert item["at"].startswith("2026-01-10T12:00:00")
    assert item["detail"] == {}


async def test_hostile_parameters_are_400_problems_never_500(
    client: httpx.AsyncClient, db_session: AsyncSession
) -> None:
    admin = await person(client, superuser=True)
    await seed(db_session, admin.id)
    forged = encode_cursor(Position(at=BASE, id=uuid.uuid4()))
    assert (await client.get(AUDIT, params={"cursor": forged}, headers=admin.signed.headers)).status_code == 200
    bad = [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": forged + "A"}, "cursor"),
        ({"cursor": "A" * 101}, None),
        ({"cursor": "kQ"}, "cursor"),
        ({"since": "yesterday"}, None),
        ({"until": "2026-13-45T99:00:00Z"}, None),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"action": "auth.login; DROP TABLE audit_log"}, "action"),
        ({"action": "AUTH.login"}, "action"),
        ({"action": ",".join(f"a{i}." for i in range(21))}, "action"),
        ({"actor": "ann\u001b[0m"}, "actor"),
        ({"target_type": "user'"}, "target_type"),
        ({"request_id": "has space"}, "request_id"),
        ({"q": "x" * 201}, None),
        ({"q": "tab\there"}, "q"),
        ({"limit": 0}, None),
        ({"limit": 101}, None),
        ({"limit": "lots"}, None),
    ]
    for params, field in bad:
        answer = await client.get(AUDIT, params=params, headers=admin.signed.headers)
        assert_problem(answer, 400, field)
    nul = await client.get(AUDIT + "?q=a%00b", headers=admin.signed.headers)
    assert nul.status_code == 400
    nul = await client.get(AUDIT + "?cursor=%00", headers=admin.signed.headers)
    assert nul.status_code == 400


async def test_only_administrators_read_the_log(client: httpx.AsyncClient) -> None:
    admin, ann = await person(client, superuser=True), await person(client)
    assert_problem(await client.get(AUDIT), 401)
    assert_problem(await client.get(AUDIT, headers=ann.signed.headers), 403)
    read_only = await make_token(client, admin.signed, ["read"])
    assert_problem(await client.get(AUDIT, headers=bearer(read_only)), 403)
    with_admin = await make_token(client, admin.signed, ["read", "admin"])
    answer = await client.get(AUDIT, params={"action": "token."}, headers=bearer(with_admin))
    assert answer.status_code == 200
    assert {item["target_name"] for item in answer.json()["items"]} == {"script"}
    # A user's own history: signed in only (a token is refused), never another's rows.
    assert_problem(await client.get(MINE, headers=bearer(with_admin)), 403)
    assert_problem(await client.get(MINE), 401)


async def test_a_user_sees_their_own_security_history(client: httpx.AsyncClient) -> None:
    ann, bob = await person(client), await person(client)
    await client.post("/api/v1/auth/login", json={"username": ann.username, "password": "someone guessing"})
    await make_token(client, ann.signed, ["read"], name="ann's script")
    await make_token(client, bob.signed, ["read"], name="bob's script")
    mine = await client.get(MINE, headers=ann.signed.headers)
    assert mine.status_code == 200
    items = mine.json()["items"]
    assert [item["action"] for item in items] == ["token.created", "auth.login_failed", "auth.login", "user.registered"]
    assert bob.username not in mine.text
    assert "bob's script" not in mine.text
    only = await client.get(MINE, params={"action": "auth."}, headers=ann.signed.headers)
    assert [item["action"] for item in only.json()["items"]] == ["auth.login_failed", "auth.login"]
    assert_problem(await client.get(MINE, params={"cursor": "zz"}, headers=ann.signed.headers), 400, "cursor")


# --- the admin page --------------------------------------------------------------------------------


async def test_the_admin_page_filters_and_pages_without_javascript(
    client: httpx.AsyncClient, live_server: LiveServer, db_session: AsyncSession
) -> None:
    admin, ann = await person(client, superuser=True), await person(client)
    await seed(db_session, admin.id)
    db_session.add_all(
        AuditEntry(at=BASE - timedelta(days=1, minutes=i), action="auth.login_failed", target_name=f"spray{i:02}")
        for i in range(55)
    )
    await db_session.commit()
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as browser:
        token = CSRF.search(browser.get("/login").text)
        assert token
        form = {"username": ann.username, "password": PASSWORD, "_csrf_token": token.group(1)}
        assert browser.post("/login", data=form).status_code == 303
        assert browser.get("/admin/audit").status_code == 403
        assert browser.post("/logout", data={"_csrf_token": token.group(1)}).status_code == 303
        token = CSRF.search(browser.get("/login").text)
        assert token
        form = {"username": admin.username, "password": PASSWORD, "_csrf_token": token.group(1)}
        assert browser.post("/login", data=form).status_code == 303

        assert 'href="/admin/audit"' in browser.get("/admin").text
        page = browser.get("/admin/audit", params={"action": "token.created"})
        assert page.status_code == 200
        assert "<html" in page.text
        assert 'id="audit-filters"' in page.text
        assert "token.created</code>" in page.text
        assert "nightly" in page.text
        assert "auth.login_failed</code>" not in page.text

        spray = browser.get("/admin/audit", params={"action": "auth.login_failed", "q": "spray"})
        assert spray.text.count("auth.login_failed</code>") == 50
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', spray.text)
        assert older
        rest = browser.get(older.group(1).replace("&amp;", "&"))
        assert rest.status_code == 200
        assert rest.text.count("auth.login_failed</code>") == 5
        assert "spray54" in rest.text
        assert 'rel="next"' not in rest.text

        by_day = browser.get("/admin/audit", params={"from": "2026-01-10", "to": "2026-01-10"})
        assert by_day.text.count("<tr>") == 5 + 1  # the seeded rows and the header
        swapped = browser.get("/admin/audit", params={"actor": "cli:root"}, headers={**HTMX, "HX-Target": "audit-list"})
        assert swapped.status_code == 200
        assert is_fragment(swapped)
        assert "user.role_changed</code>" in swapped.text
        assert "token.created</code>" not in swapped.text

        wrong = browser.get("/admin/audit", params={"from": "not a day", "cursor": "junk"})
        assert wrong.status_code == 400
        assert "field-error" in wrong.text
        assert "<html" in wrong.text


# --- retention -------------------------------------------------------------------------------------


async def test_the_retention_purge_deletes_old_rows_only_in_batches(db_session: AsyncSession) -> None:
    now = datetime.now(UTC)
    keep = timedelta(days=get_settings().audit_retention_days)
    old = [AuditEntry(at=now - keep - timedelta(days=1, minutes=i), action="auth.login") for i in range(7)]
    young = [AuditEntry(at=now - keep + timedelta(days=1), action="auth.login"), AuditEntry(action="auth.logout")]
    db_session.add_all([*old, *young])
    await db_session.commit()
    engine = create_engine(get_settings())
    try:
        assert await purge_audit(session_factory(engine), now - keep, batch_size=3) == 7
        assert await purge_audit(session_factory(engine), now - keep, batch_size=3) == 0
    finally:
        await engine.dispose()
    assert {row.id for row in await rows(db_session)} == {row.id for row in young}


def test_detail_keeps_no_credential_and_stays_small() -> None:
    kept = clean_detail(
        {
            "password": "hunter2hunter2",
            "New_Password": "x",
            "token": "pat_abc",
            "refresh_token": "r",
            "secret": "whsec_x",
            "scopes": ["read", "\u0000write\u001b"],
            "name": "a\u202eb" + "c" * 500,
            "count": 3,
            "ok": True,
        }
    )
    assert kept is not None
    assert set(kept) == {"scopes", "name", "count", "ok"}
    assert kept["scopes"] == ["read", "write"]
    assert kept["name"] == "ab" + "c" * (MAX_DETAIL_TEXT - 2)
    assert clean_detail({f"k{i}": "v" * 200 for i in range(40)}) == {"truncated": True}
    assert len(clean_detail({f"k{i}": i for i in range(40)}) or {}) == 16
    assert clean_detail({}) is None
