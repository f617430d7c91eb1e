"""Task lists that scale (issue 21.6): filters, sorts, cursor pages, the admin list of every user's tasks,
the dashboard's filter form without JavaScript, and `litestar tasks list`, over the real server in both modes.

Most rows are written straight into the table (with the times a test needs: a finished task from two
days ago cannot be made through the API in a test); finished, or queued but not due, so no worker
takes them. Tasks the API starts are the ones that arrive while a client pages.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.tasks.listing import Position, encode_cursor
from app.domain.tasks.models import Task
from tests.accounts import PASSWORD, new_identity, operator_cli
from tests.servers import LiveServer
from tests.test_pages import CSRF, HTMX, is_fragment

#: Two days ago at noon: every row here is made after it, within the retention window.
BASE = (datetime.now(UTC) - timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
FINISHED = {"succeeded", "failed", "cancelled"}


class Account(msgspec.Struct):
    client: httpx.Client
    id: UUID
    username: str


def sign_up(live_server: LiveServer, *, superuser: bool = False) -> Account:
    """A new user signed in with a bearer token (promoted first, with the operators' CLI, when asked)."""
    client = httpx.Client(base_url=live_server.url, timeout=20)
    identity = new_identity()
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
    if superuser:
        promoted = operator_cli("users", "promote", identity["username"])
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    client.headers["Authorization"] = f"Bearer {tokens.json()['access_token']}"
    me = client.get("/api/v1/users/me").json()
    return Account(client=client, id=UUID(me["id"]), username=me["username"])


@pytest.fixture
def ann(live_server: LiveServer) -> Iterator[Account]:
    account = sign_up(live_server)
    yield account
    account.client.close()


@pytest.fixture
def bob(live_server: LiveServer) -> Iterator[Account]:
    account = sign_up(live_server)
    yield account
    account.client.close()


@pytest.fixture
def admin(live_server: LiveServer) -> Iterator[Account]:
    account = sign_up(live_server, superuser=True)
    yield account
    account.client.close()


async def insert(session: AsyncSession, owner: Account, *rows: dict[str, Any]) -> list[str]:
    """Tasks of `owner` as given (created `minutes` after BASE; finished a minute later unless queued); their ids."""
    tasks = []
    for row in rows:
        status = row.get("status", "succeeded")
        created = BASE + timedelta(minutes=row.get("minutes", 0))
        finished = row.get("finished", created + timedelta(minutes=1) if status in FINISHED else None)
        tasks.append(
            Task(
                user_id=owner.id,
                kind=row.get("kind", "demo"),
                title=row.get("title", "Demo"),
                description=row.get("description"),
                status=status,
                params={},
                created_at=created,
                # A queued row is due tomorrow: no worker takes it while the test runs.
                enqueued_at=created + timedelta(days=3),
                finished_at=finished,
            )
        )
    session.add_all(tasks)
    await session.commit()
    return [str(task.id) for task in tasks]


def listed(client: httpx.Client, path: str = "/api/v1/tasks", **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def assert_problem(response: httpx.Response, field: str | None = None) -> None:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == 400
    if field is not None:
        assert field in [error["field"] for error in problem.get("errors", [])], problem


def walk(client: httpx.Client, path: str = "/api/v1/tasks", **params: Any) -> list[str]:
    """Every id of a list, page after page by cursor."""
    seen: list[str] = []
    page = listed(client, path, **params)
    while True:
        seen += ids(page)
        if page["next_cursor"] is None:
            return seen
        page = listed(client, path, **params, cursor=page["next_cursor"])


# --- filters ---------------------------------------------------------------------------------------


async def test_each_filter_alone_and_together(ann: Account, db_session: AsyncSession) -> None:
    old_demo, failed_export, cancelled_demo, queued_export, described = await insert(
        db_session,
        ann,
        {"minutes": 0, "title": "Nightly numbers"},
        {"minutes": 10, "kind": "export", "status": "failed", "title": "Export of March"},
        {"minutes": 20, "status": "cancelled", "title": "Count to ten"},
        {"minutes": 30, "kind": "export", "status": "queued", "title": "Export of April"},
        {"minutes": 40, "title": "Plain", "description": "The NIGHTLY run, by hand"},
    )
    api = ann.client
    everything = listed(api)
    assert ids(everything) == [described, queued_export, cancelled_demo, failed_export, old_demo]
    assert (everything["total"], everything["limit"], everything["offset"], everything["next_cursor"]) == (
        5,
        20,
        0,
        None,
    )

    assert ids(listed(api, status="failed")) == [failed_export]
    assert ids(listed(api, status=["failed", "cancelled"])) == [cancelled_demo, failed_export]
    assert ids(listed(api, kind="export")) == [queued_export, failed_export]
    assert ids(listed(api, kind="export,demo")) == ids(everything)
    assert ids(listed(api, kind=["export", "nothing-like-it"])) == [queued_export, failed_export]
    assert listed(api, kind="nothing-like-it")["total"] == 0
    # Text: any case, in the title or the description.
    assert ids(listed(api, q="nightly")) == [described, old_demo]
    assert ids(listed(api, q="EXPORT OF")) == [queued_export, failed_export]
    # Dates: created_after inclusive, created_before exclusive; naive is UTC, an offset is honoured.
    at_20 = BASE + timedelta(minutes=20)
    assert ids(listed(api, created_after=at_20.isoformat())) == [described, queued_export, cancelled_demo]
    assert ids(listed(api, created_before=at_20.isoformat())) == [failed_export, old_demo]
    naive = at_20.replace(tzinfo=None).isoformat()
    assert ids(listed(api, created_after=naive, created_before=(at_20 + timedelta(minutes=20)).isoformat())) == [
        queued_export,
        cancelled_demo,
    ]
    plus_two = (at_20 + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    assert ids(listed(api, created_before=plus_two)) == [failed_export, old_demo]
    # Together: every filter narrows; the total counts what they all match.
    both = listed(api, status=["failed", "queued"], kind="export", q="april", created_after=BASE.isoformat())
    assert (ids(both), both["total"]) == ([queued_export], 1)
    narrowed = listed(api, kind="demo", created_after=BASE.isoformat(), limit=1)
    assert (ids(narrowed), narrowed["total"]) == ([described], 3)


async def test_text_is_found_literally_with_like_wildcards(ann: Account, db_session: AsyncSession) -> None:
    percent, plain, underscore, letters, backslash = await insert(
        db_session,
        ann,
        {"minutes": 0, "title": "100% done"},
        {"minutes": 1, "title": "1000 done"},
        {"minutes": 2, "title": "snake_case"},
        {"minutes": 3, "title": "snakeXcase"},
        {"minutes": 4, "title": "back\\slash"},
    )
    api = ann.client
    assert ids(listed(api, q="0%")) == [percent]
    assert ids(listed(api, q="%")) == [percent]
    assert ids(listed(api, q="e_c")) == [underscore]
    assert ids(listed(api, q="_")) == [underscore]
    assert ids(listed(api, q="k\\s")) == [backslash]
    assert ids(listed(api, q="\\")) == [backslash]
    assert ids(listed(api, q="  done ")) == [plain, percent]  # surrounding spaces are not searched for
    assert listed(api, q="snake")["total"] == 2
    assert letters in ids(listed(api, q="snakeX"))


# --- sorting -----------------------------------------------------------------------------------------


async def test_every_sort_is_a_total_order(ann: Account, db_session: AsyncSession) -> None:
    # Two tasks created at the same moment (ties: by id), one still unfinished (last in finished_at orders).
    first, tied_a, tied_b, running = await insert(
        db_session,
        ann,
        {"minutes": 0, "finished": BASE + timedelta(minutes=50)},
        {"minutes": 5, "finished": BASE + timedelta(minutes=20)},
        {"minutes": 5, "finished": BASE + timedelta(minutes=30)},
        {"minutes": 9, "status": "queued"},
    )
    low, high = sorted([tied_a, tied_b], key=UUID)
    api = ann.client
    assert ids(listed(api)) == [running, high, low, first]
    assert ids(listed(api, sort="-created_at")) == [running, high, low, first]
    assert ids(listed(api, sort="created_at")) == [first, low, high, running]
    assert ids(listed(api, sort="-finished_at")) == [first, tied_b, tied_a, running]
    assert ids(listed(api, sort="finished_at")) == [tied_a, tied_b, first, running]
    for sort in ("-created_at", "created_at", "-finished_at", "finished_at"):
        assert walk(api, sort=sort, limit=1) == ids(listed(api, sort=sort)), sort


# --- cursor pages ------------------------------------------------------------------------------------


async def test_a_cursor_walk_neither_skips_nor_repeats_while_tasks_arrive(
    ann: Account, db_session: AsyncSession
) -> None:
    made = await insert(db_session, ann, *({"minutes": minute} for minute in range(25)))
    newest_first = list(reversed(made))
    api = ann.client
    first = listed(api, limit=10)
    assert (ids(first), first["total"]) == (newest_first[:10], 25)
    assert first["next_cursor"]
    # A task arrives between two pages: an offset would show the tenth task again; the cursor does not.
    arrived = api.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 1, "step_ms": 0}})
    assert arrived.status_code == 202, arrived.text
    second = listed(api, limit=10, cursor=first["next_cursor"])
    assert ids(second) == newest_first[10:20]
    assert second["total"] == 26  # the filtered total, now with the new task
    assert ids(listed(api, limit=10, offset=10))[0] == newest_first[9]  # what an offset would have done
    third = listed(api, limit=10, cursor=second["next_cursor"])
    assert (ids(third), third["next_cursor"]) == (newest_first[20:], None)
    assert len(set(ids(first) + ids(second) + ids(third))) == 25
    # Oldest first, the new task comes at the end, once.
    assert walk(api, sort="created_at", limit=10) == [*made, arrived.json()["id"]]


async def test_a_cursor_keeps_its_filters_and_a_page_past_the_end_has_no_cursor(
    ann: Account, db_session: AsyncSession
) -> None:
    made = await insert(
        db_session, ann, *({"minutes": m, "status": "failed" if m % 2 else "succeeded"} for m in range(9))
    )
    failed = [task_id for index, task_id in enumerate(made) if index % 2][::-1]
    api = ann.client
    assert walk(api, status="failed", limit=2) == failed
    exactly = listed(api, status="failed", limit=4)
    assert (ids(exactly), exactly["next_cursor"]) == (failed, None)  # no empty last page
    # An offset page gives a cursor too, which continues after it.
    middle = listed(api, status="failed", limit=1, offset=1)
    assert ids(listed(api, status="failed", limit=5, cursor=middle["next_cursor"])) == failed[2:]


# --- what is refused ---------------------------------------------------------------------------------


async def test_bad_parameters_are_400_problems(ann: Account, db_session: AsyncSession) -> None:
    made = await insert(db_session, ann, {"minutes": 0}, {"minutes": 1}, {"minutes": 2})
    api = ann.client
    cursor = listed(api, limit=1)["next_cursor"]
    assert_problem(api.get("/api/v1/tasks", params={"cursor": cursor, "offset": 1}), "offset")
    assert listed(api, cursor=cursor, offset=0)["items"]  # offset 0 is no offset
    # Garbage, truncated, altered and foreign cursors.
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    garbage = [
        "x",
        "not a cursor",
        "!!!!",
        cursor[:-3],
        cursor + "A",
        cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:],
        base64.urlsafe_b64encode(raw + b"\x00").decode().rstrip("="),
        base64.urlsafe_b64encode(msgspec.json.encode(["-created_at", None, made[0]])).decode(),
        base64.urlsafe_b64encode(msgspec.msgpack.encode(["-created_at", None, made[0]])).decode().rstrip("="),
        base64.urlsafe_b64encode(msgspec.msgpack.encode(["sideways", None, made[0]])).decode().rstrip("="),
        base64.urlsafe_b64encode(msgspec.msgpack.encode({"sort": "-created_at"})).decode().rstrip("="),
        cursor + "=",
    ]
    for value in garbage:
        assert_problem(api.get("/api/v1/tasks", params={"cursor": value}), "cursor")
    assert_problem(api.get("/api/v1/tasks", params={"cursor": "A" * 5000}))
    assert_problem(api.get("/api/v1/tasks", params={"cursor": cursor, "sort": "created_at"}), "cursor")
    later = encode_cursor(Position(sort="-finished_at", key=None, id=UUID(made[0])))
    assert listed(api, sort="-finished_at", cursor=later)["items"] == []  # a cursor may point past the last row
    for sort in ("newest", "created_at,id", "-id", "title"):
        assert_problem(api.get("/api/v1/tasks", params={"sort": sort}), "sort")
    for value in ("yesterday", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00", "0001-01-01T00:00:00+01:00", "1" * 500):
        assert_problem(api.get("/api/v1/tasks", params={"created_after": value}))
        assert_problem(api.get("/api/v1/tasks", params={"created_before": value}))
    assert_problem(api.get("/api/v1/tasks", params={"status": "sleeping"}), "status")
    assert_problem(api.get("/api/v1/tasks", params={"status": ["failed", "sleeping"]}), "status")
    assert_problem(api.get("/api/v1/tasks", params={"q": "x" * 201}))
    assert_problem(api.get("/api/v1/tasks", params={"q": "bell\x07"}), "q")
    assert_problem(api.get("/api/v1/tasks", params={"kind": "k" * 65}), "kind")
    assert_problem(api.get("/api/v1/tasks", params={"kind": ",".join(f"k{n}" for n in range(21))}), "kind")
    for name in ("q", "kind", "cursor", "created_after", "sort"):
        assert_problem(api.get("/api/v1/tasks", params={name: "a\x00b"}))
    for limit in (0, 101, 2**63, 10**30, "9" * 5000):
        assert_problem(api.get("/api/v1/tasks", params={"limit": limit}), "limit")
    assert listed(api)["total"] == 3


# --- whose tasks -------------------------------------------------------------------------------------


async def test_another_users_tasks_never_appear(ann: Account, bob: Account, db_session: AsyncSession) -> None:
    mine = await insert(db_session, ann, {"minutes": 0, "title": "Shared words"}, {"minutes": 2})
    theirs = await insert(db_session, bob, {"minutes": 1, "title": "Shared words"}, {"minutes": 3})
    assert walk(ann.client, limit=1) == mine[::-1]
    assert walk(bob.client, limit=1, sort="created_at") == theirs
    assert ids(listed(ann.client, q="shared")) == [mine[0]]
    # Bob's cursor in Ann's hands continues through Ann's tasks only.
    bobs_cursor = listed(bob.client, limit=1)["next_cursor"]
    assert ids(listed(ann.client, cursor=bobs_cursor)) == [mine[1], mine[0]]


async def test_the_admin_list_shows_every_users_tasks_with_their_owner(
    ann: Account, bob: Account, admin: Account, live_server: LiveServer, db_session: AsyncSession
) -> None:
    anns = await insert(db_session, ann, {"minutes": 0, "status": "failed"}, {"minutes": 2, "title": "Report"})
    bobs = await insert(db_session, bob, {"minutes": 1, "status": "failed"}, {"minutes": 3, "kind": "export"})
    everyone = listed(admin.client, "/api/v1/admin/tasks")
    assert ids(everyone) == [bobs[1], anns[1], bobs[0], anns[0]]
    owners = {item["id"]: (item["user_id"], item["username"]) for item in everyone["items"]}
    assert owners[anns[0]] == (str(ann.id), ann.username)
    assert owners[bobs[1]] == (str(bob.id), bob.username)
    assert {"title", "status", "progress", "created_at"} <= everyone["items"][0].keys()
    assert walk(admin.client, "/api/v1/admin/tasks", limit=1, sort="created_at") == [anns[0], bobs[0], anns[1], bobs[1]]
    # By owner (id or username, any case), with the same filters as everyone's own list.
    assert ids(listed(admin.client, "/api/v1/admin/tasks", user_id=str(ann.id))) == anns[::-1]
    assert ids(listed(admin.client, "/api/v1/admin/tasks", username=bob.username.upper())) == bobs[::-1]
    failed = listed(admin.client, "/api/v1/admin/tasks", status="failed")
    assert (ids(failed), failed["total"]) == ([bobs[0], anns[0]], 2)
    assert ids(listed(admin.client, "/api/v1/admin/tasks", username=ann.username, q="report")) == [anns[1]]
    assert ids(listed(admin.client, "/api/v1/admin/tasks", kind="export")) == [bobs[1]]
    assert listed(admin.client, "/api/v1/admin/tasks", username="nobody-at-all")["total"] == 0
    assert_problem(admin.client.get("/api/v1/admin/tasks", params={"user_id": "not-a-uuid"}), "user_id")
    assert_problem(admin.client.get("/api/v1/admin/tasks", params={"sort": "user"}), "sort")
    # The admin's own list is still only their own.
    assert listed(admin.client)["total"] == 0

    refused = ann.client.get("/api/v1/admin/tasks")
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    with httpx.Client(base_url=live_server.url, timeout=20) as anonymous:
        assert anonymous.get("/api/v1/admin/tasks").status_code == 401
        assert anonymous.get("/api/v1/tasks", params={"sort": "nonsense"}).status_code == 401


def test_the_api_document_describes_the_list_parameters(ann: Account) -> None:
    paths = ann.client.get("/schema/openapi.json").json()["paths"]
    for path, operation_id in (("/api/v1/tasks", "listTasks"), ("/api/v1/admin/tasks", "adminListTasks")):
        operation = paths[path]["get"]
        assert operation["operationId"] == operation_id
        assert operation["summary"]
        assert operation["description"]
        names = {parameter["name"] for parameter in operation["parameters"]}
        assert {"status", "kind", "q", "created_after", "created_before", "sort", "cursor", "limit", "offset"} <= names
        assert {"400", "401"} <= operation["responses"].keys()
    assert {"user_id", "username"} <= {p["name"] for p in paths["/api/v1/admin/tasks"]["get"]["parameters"]}
    assert "403" in paths["/api/v1/admin/tasks"]["get"]["responses"]


# --- the dashboard -----------------------------------------------------------------------------------


@pytest.fixture
def page_user(live_server: LiveServer) -> Iterator[tuple[httpx.Client, Account]]:
    """A browser signed in with the sign-up form, and the same user's API account (for its id)."""
    browser = httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False)
    identity = new_identity()
    token = CSRF.search(browser.get("/register").text)
    assert token
    signed_up = browser.post("/register", data={**identity, "full_name": "", "_csrf_token": token.group(1)})
    assert signed_up.status_code == 303, signed_up.text
    api = httpx.Client(base_url=live_server.url, timeout=20)
    tokens = api.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    api.headers["Authorization"] = f"Bearer {tokens.json()['access_token']}"
    return browser, Account(
        client=api, id=UUID(api.get("/api/v1/users/me").json()["id"]), username=identity["username"]
    )


def rows(html: str) -> list[str]:
    return re.findall(r'<li id="task-([0-9a-f-]{36})"', html)


def older_link(html: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Older</a>', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def test_the_dashboard_filters_with_a_plain_get_form(
    page_user: tuple[httpx.Client, Account], db_session: AsyncSession
) -> None:
    browser, owner = page_user
    made = await insert(
        db_session,
        owner,
        *({"minutes": m, "title": f"Batch {m}", "status": "failed" if m < 22 else "succeeded"} for m in range(25)),
        {"minutes": 60 * 24, "kind": "export", "title": "A 50% export", "status": "cancelled"},
    )
    dashboard = browser.get("/dashboard")
    assert dashboard.status_code == 200
    form = re.search(r'<form id="task-filters"[^>]*>', dashboard.text)
    assert form
    assert 'method="get"' in form.group(0)
    assert 'action="/dashboard"' in form.group(0)
    for field in ("filter-status", "filter-kind", "filter-q", "filter-from", "filter-to"):
        assert f'<label for="{field}">' in dashboard.text, field
    assert rows(dashboard.text) == made[::-1][:20]

    # What the form sends without JavaScript: its fields in the query string; the values stay in the form.
    day = BASE.date().isoformat()
    filtered = browser.get(
        "/dashboard", params={"status": "failed", "task_kind": "demo", "q": "batch", "from": day, "to": day}
    )
    assert filtered.status_code == 200
    failed = made[:22][::-1]
    assert rows(filtered.text) == failed[:20]
    assert '<option value="failed" selected>' in filtered.text
    assert '<option value="demo" selected>' in filtered.text
    assert 'id="filter-q" name="q" type="search" value="batch"' in filtered.text
    assert f'id="filter-from" name="from" type="date" value="{day}"' in filtered.text
    assert "22 tasks match" in filtered.text
    # "Older" continues by cursor with the same filters; "Newest" goes back to the first page.
    older = older_link(filtered.text)
    assert older
    assert "cursor=" in older
    assert "status=failed" in older
    assert "q=batch" in older
    second = browser.get(older)
    assert rows(second.text) == failed[20:]
    assert older_link(second.text) is None
    assert 'href="/dashboard?status=failed&amp;task_kind=demo&amp;q=batch' in second.text

    # A day's bounds include the whole day; a text with % matches it literally.
    next_day = (BASE + timedelta(days=1)).date().isoformat()
    assert rows(browser.get("/dashboard", params={"from": next_day}).text) == [made[25]]
    assert rows(browser.get("/dashboard", params={"to": day, "q": "50%"}).text) == []
    assert rows(browser.get("/dashboard", params={"q": "50%"}).text) == [made[25]]

    # A bad value: the form again with its error next to the field, and no list.
    refused = browser.get("/dashboard", params={"from": "someday", "q": "kept"})
    assert refused.status_code == 400
    assert 'id="filter-from-error"' in refused.text
    assert 'aria-invalid="true"' in refused.text
    assert 'value="kept"' in refused.text
    assert rows(refused.text) == []
    stale = browser.get("/dashboard", params={"cursor": "not-a-cursor"})
    assert stale.status_code == 400
    assert "start from the newest" in stale.text

    # With htmx, the form asks for the list alone, which names the page's address for the address bar.
    fragment = browser.get("/dashboard/tasks", params={"status": "succeeded"}, headers=HTMX)
    assert fragment.status_code == 200
    assert is_fragment(fragment)
    assert rows(fragment.text) == made[22:25][::-1]
    assert fragment.headers["hx-replace-url"] == "/dashboard?status=succeeded"
    assert 'hx-get="/dashboard/tasks?status=succeeded"' in fragment.text  # the live refresh keeps the filter


# --- the operators' CLI ------------------------------------------------------------------------------


def listed_ids(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines()[1:] if line.strip()]


async def test_the_cli_lists_with_the_same_filters(ann: Account, bob: Account, db_session: AsyncSession) -> None:
    anns = await insert(
        db_session,
        ann,
        {"minutes": 0, "status": "failed", "title": "Under_score"},
        {"minutes": 2, "kind": "export", "title": "Monthly export"},
    )
    bobs = await insert(db_session, bob, {"minutes": 1, "status": "cancelled"}, {"minutes": 60, "kind": "export"})

    def cli(*args: str) -> list[str]:
        result = operator_cli("tasks", "list", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return listed_ids(result.stdout)

    assert cli() == [bobs[1], anns[1], bobs[0], anns[0]]
    assert cli("--status", "failed", "--status", "cancelled") == [bobs[0], anns[0]]
    assert cli("--kind", "export") == [bobs[1], anns[1]]
    assert cli("--kind", "export", "--user", ann.username) == [anns[1]]
    assert cli("--search", "under_") == [anns[0]]
    assert cli("--search", "der_sc") == [anns[0]]
    assert cli("--search", "y_e") == []  # "Monthly export" has a space there: `_` is no wildcard
    after = (BASE + timedelta(minutes=1)).isoformat()
    assert cli("--created-after", after, "--created-before", (BASE + timedelta(minutes=3)).isoformat()) == [
        anns[1],
        bobs[0],
    ]
    assert cli("--sort", "created_at", "--limit", "2") == [anns[0], bobs[0]]
    refused = operator_cli("tasks", "list", "--created-after", "someday")
    assert refused.returncode != 0
    assert "created_after" in refused.stderr
    assert operator_cli("tasks", "list", "--sort", "sideways").returncode != 0


# --- one moment, many writers ------------------------------------------------------------------------


def test_tasks_started_through_the_api_list_and_page_the_same_way(ann: Account) -> None:
    """Real tasks (not inserted rows): made within the same milliseconds, they still page without a gap."""
    api = ann.client
    started = []
    for _ in range(3):
        response = api.post(
            "/api/v1/tasks", json={"kind": "demo", "title": "Quick 100%", "params": {"steps": 1, "step_ms": 0}}
        )
        assert response.status_code == 202, response.text
        started.append(response.json()["id"])
    deadline = time.monotonic() + 30
    while listed(api, status="succeeded")["total"] < 3:
        assert time.monotonic() < deadline, listed(api)
        time.sleep(0.05)
    assert walk(api, limit=1) == started[::-1]
    assert walk(api, limit=2, sort="finished_at", q="100%") == ids(listed(api, sort="finished_at"))
