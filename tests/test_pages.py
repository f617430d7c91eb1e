"""The HTML pages over the real server: who may open each one, every form as a plain POST (no
JavaScript: POST, redirect, flash message) and as an htmx request (a fragment, not the layout),
CSRF refusals, and validation errors shown next to their field with nothing written.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.accounts import PASSWORD, new_identity, operator_cli, token_from_mail
from tests.servers import LiveServer
from tests.smtp import SmtpServer
from tests.sse import events

CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
HTMX = {"HX-Request": "true"}


@pytest.fixture
def browser(live_server: LiveServer) -> Iterator[httpx.Client]:
    """A cookie-keeping client that, like a browser posting a form, sees each redirect."""
    with httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False) as client:
        yield client


def csrf(client: httpx.Client, path: str = "/login") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def post(client: httpx.Client, path: str, data: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
    """A form post carrying the CSRF token, as the page's form sends it."""
    return client.post(path, data={**(data or {}), "_csrf_token": csrf(client)}, **kwargs)  # type: ignore[arg-type]


def assert_forms_carry_the_csrf_token(html: str) -> None:
    forms = re.findall(r"<form\b[^>]*method=\"post\".*?</form>", html, re.S)
    for form in forms:
        assert 'name="_csrf_token"' in form, form


def h1(html: str) -> str:
    found = re.search(r"<h1\b[^>]*>(.*?)</h1>", html, re.S)
    assert found, html
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def follow(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    assert response.status_code == 303, (response.status_code, response.text)
    return client.get(response.headers["location"])


def sign_up(client: httpx.Client) -> dict[str, str]:
    """Create an account with the sign-up form; the browser is signed in on the dashboard."""
    identity = new_identity()
    response = post(client, "/register", {**identity, "full_name": ""})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/dashboard"
    return identity


def is_fragment(response: httpx.Response) -> bool:
    return "<html" not in response.text and 'id="main"' not in response.text


def wait_until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


def start_task(client: httpx.Client, **params: str) -> str:
    """Start a demo task with the dashboard's form (plain POST); returns its id."""
    response = post(client, "/tasks", {"kind": "demo", "title": params.pop("title", ""), **params})
    dashboard = follow(client, response)
    assert dashboard.status_code == 200
    assert 'class="flash" role="status">Started' in dashboard.text
    found = re.search(r'id="task-([0-9a-f-]{36})"', dashboard.text)
    assert found, dashboard.text
    return found.group(1)


def finished_task(client: httpx.Client) -> str:
    """Start a one-step demo task and wait until it has succeeded; returns its id."""
    task_id = start_task(client, steps="1", step_ms="0")
    wait_until(lambda: task_status(client, task_id) == "succeeded")
    return task_id


def task_status(client: httpx.Client, task_id: str) -> str:
    page = client.get(f"/tasks/{task_id}")
    assert page.status_code == 200, page.text
    found = re.search(r'class="status status-(\w+)"', page.text)
    assert found, page.text
    return found.group(1)


# --- who may open what ----------------------------------------------------------------------------


def test_visitor_pages_render_with_the_layout(browser: httpx.Client) -> None:
    headings = {
        "/": "Background jobs, live",
        "/register": "Create account",
        "/login": "Sign in",
        "/forgot-password": "Forgot your password?",
        "/reset-password?token=abc": "Set a new password",
    }
    for path, heading in headings.items():
        page = browser.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert h1(page.text) == heading
        html = page.text
        assert '<a class="skip-link" href="#main">Skip to content</a>' in html
        assert '<main id="main"' in html
        assert '<nav aria-label="Main"' in html
        assert "<footer" in html
        assert 'href="/login">Sign in</a>' in html
        # One link of each name, so that a reader (or a test) finding it by its name finds one.
        assert html.count(">Sign in</a>") == 1
        assert html.count(">Create account</a>") == 1
        assert ">Create account</a>" in html
        assert 'id="toasts" class="toasts" role="status" aria-live="polite"' in html
        assert "sse-connect" not in html  # no live stream without a user
        assert not re.search(r"\sstyle=|\son[a-z]+=", html), path  # the CSP allows neither
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path


def test_scripts_and_styles_are_served_with_their_types(browser: httpx.Client) -> None:
    """With `X-Content-Type-Options: nosniff` a browser refuses a script or style of another type."""
    html = browser.get("/").text
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert len(urls) == 6, urls  # the icon, app.css, htmx, its SSE and morph extensions, app.js
    for url in urls:
        response = browser.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(types[url[url.rindex(".") :]]), url


def test_signed_out_browsers_are_sent_to_sign_in(browser: httpx.Client) -> None:
    for path in ("/dashboard", "/notifications", "/account", "/admin", f"/tasks/{uuid.uuid4()}"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == f"/login?next={path}"
    here = str(browser.base_url).rstrip("/") + "/dashboard?offset=20"
    htmx = browser.get("/dashboard/tasks", headers={**HTMX, "HX-Current-URL": here})
    assert htmx.headers["hx-redirect"] == "/login?next=/dashboard"  # the page, not the fragment


def test_pages_render_for_a_signed_in_user(browser: httpx.Client) -> None:
    sign_up(browser)
    assert browser.get("/").headers["location"] == "/dashboard"
    for path, heading in {"/dashboard": "Dashboard", "/notifications": "Notifications", "/account": "Account"}.items():
        page = browser.get(path)
        assert page.status_code == 200, path
        assert h1(page.text) == heading
        html = page.text
        for link in ("Dashboard", "Notifications", "Account"):
            assert f">{link}</a>" in html
        assert 'href="/admin"' not in html
        assert 'id="bell" href="/notifications"' in html
        assert 'aria-label="Notifications, 0 unread"' in html
        assert '<span id="unread-count" class="badge">0</span>' in html
        assert 'action="/logout"' in html
        assert ">Sign out</button>" in html
        assert 'hx-ext="sse" sse-connect="/api/v1/events"' in html
        assert_forms_carry_the_csrf_token(html)
        assert not re.search(r"\sstyle=|\son[a-z]+=", html), path


def test_a_signed_in_user_signs_in_again_and_out(browser: httpx.Client) -> None:
    identity = sign_up(browser)
    signed_out = post(browser, "/logout")
    assert signed_out.headers["location"] == "/"
    assert browser.get("/dashboard").status_code == 303
    wrong = post(browser, "/login", {"username": identity["username"], "password": "not the password"})
    assert wrong.status_code == 401
    assert '<div class="form-error" role="alert">Wrong username or password.</div>' in wrong.text
    htmx_wrong = post(browser, "/login", {"username": identity["email"], "password": "nope"}, headers=HTMX)
    assert htmx_wrong.status_code == 200  # a form sent back with its error is no error of the page
    assert is_fragment(htmx_wrong)
    assert "Wrong username or password." in htmx_wrong.text
    htmx_ok = post(browser, "/login", {"username": identity["email"], "password": PASSWORD}, headers=HTMX)
    assert htmx_ok.headers["hx-redirect"] == "/dashboard"
    assert browser.get("/dashboard").status_code == 200
    post(browser, "/logout")
    back = post(browser, "/login", {"username": identity["username"], "password": PASSWORD, "next": "/account"})
    assert back.headers["location"] == "/account"
    elsewhere = post(browser, "/login", {"username": identity["username"], "password": PASSWORD, "next": "//evil"})
    assert elsewhere.headers["location"] == "/dashboard"


def test_error_pages(browser: httpx.Client) -> None:
    missing = browser.get("/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert h1(missing.text) == "Page not found"
    api = browser.get("/api/v1/no-such-thing")
    assert api.status_code == 404
    assert api.headers["content-type"].startswith("application/problem+json")

    sign_up(browser)
    forbidden = browser.get("/admin")
    assert forbidden.status_code == 403
    assert h1(forbidden.text) == "Forbidden"
    assert browser.get(f"/tasks/{uuid.uuid4()}").status_code == 404
    toast = post(browser, f"/tasks/{uuid.uuid4()}/cancel", {"view": "row"}, headers=HTMX)
    assert toast.status_code == 404
    assert toast.headers["hx-retarget"] == "#toasts"
    assert is_fragment(toast)
    assert 'class="toast toast-error" role="alert"' in toast.text


def test_forms_need_the_csrf_token(browser: httpx.Client) -> None:
    identity = new_identity()
    assert browser.post("/register", data=identity).status_code == 403
    sign_up(browser)
    assert browser.post("/tasks", data={"kind": "demo"}).status_code == 403
    assert browser.post("/account/profile", data={"full_name": "X"}, headers=HTMX).status_code == 403
    assert "No tasks yet" in browser.get("/dashboard").text


# --- sign-up and the email links ----------------------------------------------------------------


def test_sign_up_errors_show_next_to_their_field_and_write_nothing(browser: httpx.Client) -> None:
    identity = new_identity()
    bad = post(browser, "/register", {**identity, "password": "short", "email": "not-an-email"})
    assert bad.status_code == 422
    assert re.search(
        r'id="password"[^>]*aria-invalid="true"[^>]*aria-describedby="password-hint password-error"', bad.text
    )
    assert '<p class="field-error" id="password-error">Must be at least 10 characters.</p>' in bad.text
    assert '<p class="field-error" id="email-error">Must be a valid email address.</p>' in bad.text
    assert f'value="{identity["username"]}"' in bad.text  # what was typed stays
    htmx = post(browser, "/register", {**identity, "password": "short"}, headers=HTMX)
    assert htmx.status_code == 200
    assert is_fragment(htmx)
    assert 'class="field-error" id="password-error"' in htmx.text
    # Nothing was written: the same username is still free.
    sign_up_ok = post(browser, "/register", identity)
    assert sign_up_ok.status_code == 303
    post(browser, "/logout")
    taken = post(browser, "/register", {**new_identity(), "username": identity["username"]})
    assert taken.status_code == 409
    assert '<p class="field-error" id="username-error">This username is already registered.</p>' in taken.text


def test_email_verification_and_password_reset_pages(browser: httpx.Client, smtp: SmtpServer) -> None:
    identity = sign_up(browser)
    token = token_from_mail(smtp, identity["email"], "/verify-email")
    verified = browser.get(f"/verify-email?token={token}")
    assert verified.status_code == 200
    assert h1(verified.text) == "Email verified"
    assert browser.get(f"/verify-email?token={token}").status_code == 400  # used once
    assert "tag-ok" in browser.get("/account").text
    post(browser, "/logout")

    asked = post(browser, "/forgot-password", {"email": identity["email"]})
    assert "we have sent it a link" in follow(browser, asked).text
    htmx = post(browser, "/forgot-password", {"email": "nobody@example.com"}, headers=HTMX)
    assert htmx.status_code == 200
    assert is_fragment(htmx)
    assert "we have sent it a link" in htmx.text
    empty = post(browser, "/forgot-password", {"email": ""})
    assert empty.status_code == 422
    assert 'class="field-error" id="email-error"' in empty.text

    reset = token_from_mail(smtp, identity["email"], "/reset-password")
    form = browser.get(f"/reset-password?token={reset}")
    assert f'name="token" value="{reset}"' in form.text
    assert ">Set new password</button>" in form.text
    short = post(browser, "/reset-password", {"token": reset, "password": "short"})
    assert short.status_code == 422
    assert '<p class="field-error" id="password-error">Must be at least 10 characters.</p>' in short.text
    done = post(browser, "/reset-password", {"token": reset, "password": "a brand new passphrase"})
    assert done.headers["location"] == "/login"
    assert "Your password is set" in browser.get("/login").text
    again = post(browser, "/reset-password", {"token": reset, "password": "another new passphrase"})
    assert again.status_code == 400
    assert 'class="form-error" role="alert"' in again.text
    signed_in = post(browser, "/login", {"username": identity["username"], "password": "a brand new passphrase"})
    assert signed_in.headers["location"] == "/dashboard"


# --- tasks ------------------------------------------------------------------------------------------


def test_the_dashboard_starts_a_task_and_follows_it_to_the_end(browser: httpx.Client) -> None:
    sign_up(browser)
    dashboard = browser.get("/dashboard")
    for label, name in {"Kind": "kind", "Title (optional)": "title", "Steps": "steps"}.items():
        assert re.search(
            rf'<label for="([\w-]+)">{re.escape(label)}</label>\s*<(input|select) id="\1" name="{name}"', dashboard.text
        ), label
    assert 'name="steps" type="number" value="100"' in dashboard.text
    assert 'name="step_ms" type="number" value="100"' in dashboard.text
    assert ">Step duration (ms)</label>" in dashboard.text
    assert ">Fail at step (optional)</label>" in dashboard.text
    export = browser.get("/dashboard/task-params?kind=export", headers=HTMX)
    assert is_fragment(export)
    assert 'name="dataset"' in export.text
    assert 'name="steps"' not in export.text

    task_id = start_task(browser, title="Quick one", steps="3", step_ms="0")
    row = browser.get("/dashboard").text
    assert_forms_carry_the_csrf_token(row)
    assert re.search(
        r'role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="\d+" '
        r'aria-label="Progress of Quick one"',
        row,
    )
    wait_until(lambda: task_status(browser, task_id) == "succeeded")
    detail = browser.get(f"/tasks/{task_id}").text
    assert h1(detail) == "Quick one"
    assert_forms_carry_the_csrf_token(detail)
    assert 'aria-valuenow="100"' in detail
    assert ">100%</span>" in detail
    assert ">Download result</a>" in detail
    assert ">Delete</button>" in detail
    assert ">Cancel</button>" not in detail
    result = browser.get(f"/tasks/{task_id}/result")
    assert result.status_code == 200
    assert result.json() == {"steps": 3}
    assert "attachment" in result.headers["content-disposition"]

    htmx = post(browser, "/tasks", {"kind": "demo", "steps": "1", "step_ms": "0"}, headers=HTMX)
    assert htmx.status_code == 200
    assert is_fragment(htmx)
    assert 'id="start-task"' in htmx.text
    assert "Started “Demo job”." in htmx.text
    assert "tasks-changed" in htmx.headers["hx-trigger"]
    listing = browser.get("/dashboard/tasks", headers=HTMX)
    assert is_fragment(listing)
    assert listing.text.count('class="task-row"') == 2


def test_bad_task_parameters_show_next_to_their_field_and_start_nothing(browser: httpx.Client) -> None:
    sign_up(browser)
    not_a_number = post(browser, "/tasks", {"kind": "demo", "steps": "many"})
    assert not_a_number.status_code == 422
    assert re.search(
        r'id="param-steps"[^>]*aria-invalid="true"[^>]*aria-describedby="param-steps-error"', not_a_number.text
    )
    assert '<p class="field-error" id="param-steps-error">Must be a whole number.</p>' in not_a_number.text
    too_many = post(browser, "/tasks", {"kind": "demo", "steps": "0"}, headers=HTMX)  # the domain's rule
    assert too_many.status_code == 200
    assert is_fragment(too_many)
    assert 'class="field-error" id="param-steps-error"' in too_many.text
    long_title = post(browser, "/tasks", {"kind": "demo", "title": "x" * 201})
    assert long_title.status_code == 422
    assert 'class="field-error" id="title-error"' in long_title.text
    assert "No tasks yet" in browser.get("/dashboard").text


def test_task_actions_plain_and_with_htmx(browser: httpx.Client) -> None:
    sign_up(browser)
    task_id = start_task(browser, title="Long one", steps="10000", step_ms="500")
    wait_until(lambda: task_status(browser, task_id) == "running")
    cancelling = post(browser, f"/tasks/{task_id}/cancel", {"view": "row"}, headers=HTMX)
    assert "Cancelling…" in cancelling.text  # it stops at its next step
    assert ">Cancel</button>" not in cancelling.text
    cancelled = post(browser, f"/tasks/{task_id}/cancel", {"view": "detail"})
    assert cancelled.headers["location"] == f"/tasks/{task_id}"
    wait_until(lambda: task_status(browser, task_id) == "cancelled")

    retried = post(browser, f"/tasks/{task_id}/retry", {"view": "row"}, headers=HTMX)
    assert retried.status_code == 200
    assert is_fragment(retried)
    assert retried.text.lstrip().startswith(f'<li id="task-{task_id}"')
    assert re.search(r'class="status status-(queued|running)"', retried.text)
    assert ">Cancel</button>" in retried.text

    refused = post(browser, f"/tasks/{task_id}/delete", {"view": "row"}, headers=HTMX)
    assert refused.status_code == 200
    assert 'class="form-error" role="alert"' in refused.text
    panel = post(browser, f"/tasks/{task_id}/cancel", {"view": "detail"}, headers=HTMX)
    assert panel.status_code == 200
    assert 'id="task-panel"' in panel.text
    assert is_fragment(panel)
    wait_until(lambda: task_status(browser, task_id) == "cancelled")
    conflict = post(browser, f"/tasks/{task_id}/cancel", {"view": "row"})
    assert "has already cancelled" in follow(browser, conflict).text

    deleted = post(browser, f"/tasks/{task_id}/delete", {"view": "row"}, headers=HTMX)
    assert deleted.status_code == 200
    assert deleted.text == ""
    assert browser.get(f"/tasks/{task_id}").status_code == 404

    second = start_task(browser, steps="1", step_ms="0")
    wait_until(lambda: task_status(browser, second) == "succeeded")
    gone = post(browser, f"/tasks/{second}/delete", {"view": "detail"})
    assert "Deleted “Demo job”." in follow(browser, gone).text


async def test_the_live_stream_starts_where_the_page_was_rendered(browser: httpx.Client) -> None:
    """The page names the newest event it shows; the stream from there brings the next task's updates only."""
    sign_up(browser)
    earlier = finished_task(browser)
    dashboard = browser.get("/dashboard").text
    found = re.search(r'<body hx-ext="sse" sse-connect="/api/v1/events" data-last-event-id="(\d+)"', dashboard)
    assert found, dashboard
    rendered = int(found.group(1))
    assert f'id="task-{earlier}"' in dashboard
    assert 'aria-valuenow="100"' in dashboard

    later = start_task(browser, title="After the page", steps="3", step_ms="0")
    cookies = {"session": browser.cookies["session"]}
    async with httpx.AsyncClient(base_url=str(browser.base_url), cookies=cookies, timeout=30) as client:
        updates = []
        async with client.stream("GET", f"/api/v1/events?last_event_id={rendered}") as response:
            assert response.status_code == 200
            async for event in events(response):
                assert event.id > rendered
                if event.event == "task.updated":
                    updates.append(event.data)
                    if event.data["status"] == "succeeded":
                        break
    assert {update["id"] for update in updates} == {later}  # nothing from before the page
    assert updates[-1]["progress"]["percent"] == 100


async def test_the_page_starts_its_stream_after_its_users_newest_event_not_anyones(
    browser: httpx.Client, live_server: LiveServer, db_session: AsyncSession
) -> None:
    """Events of different users may commit out of id order, so the newest id of the whole table can lie
    above an event of this user that is still being committed: a stream started after it would skip that
    event for good. The page starts from the newest event its user can see."""
    sign_up(browser)
    mine = finished_task(browser)
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        sign_up(other)
        theirs = finished_task(other)
    dashboard = browser.get("/dashboard").text
    found = re.search(r'data-last-event-id="(\d+)"', dashboard)
    assert found, dashboard
    rows = await db_session.execute(text("SELECT id, payload FROM event WHERE type = 'task.updated' ORDER BY id"))
    ids = {payload["id"] if isinstance(payload, dict) else json.loads(payload)["id"]: id for id, payload in rows}
    everything = await db_session.scalar(text("SELECT max(id) FROM event"))
    assert ids[mine] <= int(found.group(1)) < ids[theirs] <= everything


# --- notifications and the account ------------------------------------------------------------------


def test_notifications_mark_read_and_delete(browser: httpx.Client) -> None:
    sign_up(browser)
    for _ in range(3):
        task_id = start_task(browser, steps="1", step_ms="0")
        wait_until(lambda: task_status(browser, task_id) == "succeeded")  # noqa: B023 - used at once
    wait_until(lambda: 'aria-label="Notifications, 3 unread"' in browser.get("/notifications").text)
    page = browser.get("/notifications").text
    assert_forms_carry_the_csrf_token(page)
    assert h1(page) == "Notifications"
    assert page.count(">Mark read</button>") == 3
    ids = re.findall(r'id="notification-([0-9a-f-]{36})"', page)

    one = post(browser, f"/notifications/{ids[0]}/read", headers=HTMX)
    assert one.status_code == 200
    assert is_fragment(one)
    assert ">Mark read</button>" not in one.text
    assert 'hx-swap-oob="true"' in one.text
    assert '<span id="unread-count" class="badge">2</span>' in one.text

    gone = post(browser, f"/notifications/{ids[1]}/delete")
    assert "Notification deleted." in follow(browser, gone).text
    everything = post(browser, "/notifications/read-all")
    after = follow(browser, everything).text
    assert "Marked 1 notification read." in after
    assert ">Mark read</button>" not in after
    assert '<span id="unread-count" class="badge">0</span>' in after
    assert browser.get("/notifications/bell", headers=HTMX).text.count('id="unread-count"') == 1
    refreshed = browser.get("/notifications/list", headers=HTMX)
    assert is_fragment(refreshed)
    assert refreshed.text.count('id="bell"') == 1  # one out-of-band bell, not one per item
    assert refreshed.text.count('class="notification"') == 2


def test_account_profile_and_password(browser: httpx.Client) -> None:
    identity = sign_up(browser)
    page = browser.get("/account").text
    assert '<label for="full_name">Full name</label>' in page
    assert '<label for="email_notifications">Email me when a task ends</label>' in page
    saved = post(browser, "/account/profile", {"full_name": "Ann Example"})  # the box unticked: no emails
    after = follow(browser, saved).text
    assert "Profile saved." in after
    assert 'value="Ann Example"' in after
    assert 'name="email_notifications" type="checkbox" value="on">' in after
    htmx = post(browser, "/account/profile", {"full_name": "Ann", "email_notifications": "on"}, headers=HTMX)
    assert htmx.status_code == 200
    assert is_fragment(htmx)
    assert "Profile saved." in htmx.text
    assert 'value="on" checked' in htmx.text
    # htmx's own requests carry the token in a header, from <body hx-headers>.
    header = re.search(r"hx-headers='\{\"x-csrftoken\": \"([^\"]+)\"\}'", browser.get("/account").text)
    assert header
    by_header = browser.post(
        "/account/profile", data={"full_name": "Ann B"}, headers={**HTMX, "x-csrftoken": header.group(1)}
    )
    assert by_header.status_code == 200
    assert 'value="Ann B"' in by_header.text
    too_long = post(browser, "/account/profile", {"full_name": "x" * 201})
    assert too_long.status_code == 422
    assert 'class="field-error" id="full_name-error"' in too_long.text
    assert 'value="Ann B"' in browser.get("/account").text  # not written

    wrong = post(browser, "/account/password", {"current_password": "wrong one!", "new_password": "a new passphrase"})
    assert wrong.status_code == 400
    assert '<p class="field-error" id="current_password-error">The current password is wrong.</p>' in wrong.text
    short = post(browser, "/account/password", {"current_password": PASSWORD, "new_password": "short"}, headers=HTMX)
    assert short.status_code == 200
    assert 'class="field-error" id="new_password-error"' in short.text
    changed = post(browser, "/account/password", {"current_password": PASSWORD, "new_password": "a new passphrase"})
    assert "Password changed." in follow(browser, changed).text
    assert browser.get("/dashboard").status_code == 200  # this browser stays signed in
    post(browser, "/logout")
    again = post(browser, "/login", {"username": identity["username"], "password": "a new passphrase"})
    assert again.headers["location"] == "/dashboard"


# --- administration -----------------------------------------------------------------------------------


def test_admin_page(browser: httpx.Client, live_server: LiveServer) -> None:
    other = httpx.Client(base_url=live_server.url, timeout=20, follow_redirects=False)
    with other:
        somebody = sign_up(other)
        admin = sign_up(browser)
        promoted = operator_cli("users", "promote", admin["username"])
        assert promoted.returncode == 0, promoted.stderr
        failing = start_task(other, title="Breaks", steps="2", step_ms="0", fail_at_step="1")
        wait_until(lambda: task_status(other, failing) == "failed", timeout=60)

        page = browser.get("/admin")
        assert_forms_carry_the_csrf_token(page.text)
        assert page.status_code == 200
        assert h1(page.text) == "Admin"
        for heading in ("Users", "Queue", "Workers", "Failed tasks", "Broadcast"):
            assert re.search(rf"<h2 id=\"[\w-]+\">{heading}</h2>", page.text), heading
        assert 'href="/admin"' in page.text
        # The admin's own row offers no way to lock themself out; a forged post is refused.
        own = re.search(rf'<tr id="user-([0-9a-f-]{{36}})">\s*<td>{admin["username"]}\b.*?</tr>', page.text, re.S)
        assert own, page.text
        assert ">Deactivate</button>" not in own.group(0)
        assert ">you</span>" in own.group(0)
        refused = post(browser, f"/admin/users/{own.group(1)}", {"is_active": "false"})
        assert "your own account" in follow(browser, refused).text
        assert browser.get("/admin").status_code == 200
        assert '<label for="q">Search users</label>' in page.text
        assert "Breaks" in page.text
        assert "pid" in page.text

        status = browser.get("/admin/status", headers=HTMX)
        assert is_fragment(status)
        assert 'id="admin-status"' in status.text
        assert "waiting" in status.text

        found = browser.get("/admin", params={"q": somebody["username"]}, headers={**HTMX, "HX-Target": "user-list"})
        assert is_fragment(found)
        assert somebody["username"] in found.text
        assert admin["username"] not in found.text
        user_id = re.search(r'id="user-([0-9a-f-]{36})"', found.text)
        assert user_id
        off = post(browser, f"/admin/users/{user_id.group(1)}", {"is_active": "false"}, headers=HTMX)
        assert is_fragment(off)
        assert ">Activate</button>" in off.text
        assert other.get("/dashboard").status_code == 303  # a deactivated user is signed out at once
        on = post(browser, f"/admin/users/{user_id.group(1)}", {"is_active": "true"})
        assert f"Updated {somebody['username']}." in follow(browser, on).text
        up = post(browser, f"/admin/users/{user_id.group(1)}", {"is_superuser": "true"}, headers=HTMX)
        assert ">Make superuser</button>" not in up.text
        assert "superuser" in up.text

        retried = post(browser, f"/admin/tasks/{failing}/retry", headers=HTMX)
        assert retried.status_code == 200
        assert retried.text == ""

        empty = post(browser, "/admin/broadcast", {"title": "", "message": "Hello"})
        assert empty.status_code == 422
        assert re.search(r'id="broadcast-title-field"[^>]*aria-invalid="true"', empty.text)
        sent = post(browser, "/admin/broadcast", {"title": "Maintenance", "message": "Tonight at ten."})
        assert "Broadcast sent to 2 users." in follow(browser, sent).text
        htmx = post(browser, "/admin/broadcast", {"title": "Again", "message": "Twice."}, headers=HTMX)
        assert is_fragment(htmx)
        assert "Broadcast sent to 2 users." in htmx.text
        wait_until(lambda: "Tonight at ten." in browser.get("/notifications").text)


def test_an_unexpected_error_is_a_page_saying_so() -> None:
    """A 500 on a page is the layout with "Something went wrong" and nothing about internals."""
    from litestar import Litestar, get
    from litestar.plugins.jinja import JinjaTemplateEngine
    from litestar.template.config import TemplateConfig
    from litestar.testing import TestClient

    from app.web.app import TEMPLATES
    from app.web.http.assets import StaticAssets
    from app.web.http.errors import exception_handlers

    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("a secret detail")

    assets = StaticAssets()
    templates = TemplateConfig(
        directory=TEMPLATES,
        engine=JinjaTemplateEngine,
        engine_callback=lambda engine: engine.engine.globals.update(static_url=assets.url),
    )
    app = Litestar([boom], exception_handlers=exception_handlers(), template_config=templates)
    with TestClient(app) as client:
        page = client.get("/boom")
        assert page.status_code == 500
        assert page.headers["content-type"].startswith("text/html")
        assert h1(page.text) == "Something went wrong"
        assert "a secret detail" not in page.text
        toast = client.get("/boom", headers=HTMX)
        assert toast.status_code == 500
        assert toast.headers["hx-retarget"] == "#toasts"
        assert is_fragment(toast)
