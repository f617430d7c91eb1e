"""End to end in a real browser (headless Chromium through Playwright) against the live server.

What a person does with the pages: sign up, start a task and watch it finish without
reloading, read and clear notifications, sign out and in again; an administrator's page;
a dropped event stream that the page recovers from. Each test also fails on any console
error, script error or request to another origin (see `tests/browser.py`), and saves
screenshots of its key states under `tests/screenshots/`.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from playwright.async_api import Locator, Page, Route, expect

from tests.accounts import PASSWORD, new_identity, operator_cli
from tests.servers import LiveServer

if TYPE_CHECKING:
    from tests.browser import Cable, OpenTab, Tab

pytest_plugins = ["tests.browser"]  # the fixtures: chromium, open_tab, cable

# Reloading the page would drop this mark: checked where the test says "without reloading".
MARK_PAGE = "window.__sameDocument = true"
SAME_PAGE = "window.__sameDocument === true"


async def register(tab: Tab) -> dict[str, str]:
    """Sign up with the form, from the start page; the browser lands on the dashboard, its stream open."""
    page = tab.page
    identity = new_identity()
    await page.goto("/")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Create account").click()
    await expect(page).to_have_url(re.compile(r"/register$"))
    await page.get_by_label("Username").fill(identity["username"])
    await page.get_by_label("Email").fill(identity["email"])
    await page.get_by_label("Password", exact=True).fill(identity["password"])
    await page.get_by_role("button", name="Create account").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    await stream_open(page)
    return identity


async def stream_open(page: Page) -> None:
    """The page's live-event stream is connected (app.js marks <html data-live="open">)."""
    await expect(page.locator("html")).to_have_attribute("data-live", "open")


async def start_demo(page: Page, title: str, *, steps: int, step_ms: int, fail_at_step: int | None = None) -> Locator:
    """Start a demo task with the dashboard's form; returns its row once it is listed."""
    kind = page.get_by_label("Kind")
    if await kind.input_value() != "demo":  # choosing a kind fetches its own fields, replacing these
        async with page.expect_response(re.compile(r"/dashboard/task-params\b")):
            await kind.select_option("demo")
    await page.get_by_label("Title (optional)").fill(title)
    await page.get_by_label("Steps").fill(str(steps))
    await page.get_by_label("Step duration (ms)").fill(str(step_ms))
    if fail_at_step is not None:
        await page.get_by_label("Fail at step (optional)").fill(str(fail_at_step))
    await page.get_by_role("button", name="Start task").click()
    await expect(page.locator("#start-task").get_by_role("status")).to_have_text(f"Started “{title}”.")
    row = page.locator(".task-row", has=page.get_by_role("link", name=title, exact=True))
    await expect(row).to_be_visible()
    return row


def bar(row: Locator) -> Locator:
    return row.get_by_role("progressbar")


async def api_token(live_server: LiveServer, identity: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        tokens = await client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
        assert tokens.status_code == 200, tokens.text
        return str(tokens.json()["access_token"])


async def task_status_over_api(live_server: LiveServer, token: str, title: str) -> str:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        listed = await client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        (task,) = [task for task in listed.json()["items"] if task["title"] == title]
        return str(task["status"])


# --- a user's day -----------------------------------------------------------------------------------


async def test_sign_up_run_a_task_read_notifications_sign_out_and_in(open_tab: OpenTab) -> None:
    tab = await open_tab()
    page = tab.page
    identity = await register(tab)
    bell = page.locator("#bell")
    await expect(bell).to_have_accessible_name("Notifications, 0 unread")
    await expect(page.get_by_text("No tasks yet. Start one above.")).to_be_visible()
    await tab.shot("dashboard")

    # Every value a bar shows before it changes (records keep the old value: changes may come in bursts).
    await page.evaluate(MARK_PAGE)
    await page.evaluate(
        """() => {
          window.__shown = [];
          new MutationObserver((changes) => {
            for (const change of changes) {
              if (change.type === "attributes") window.__shown.push(Number(change.oldValue));
            }
          }).observe(document.getElementById("tasks"), {
            subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["aria-valuenow"],
          });
        }"""
    )
    row = await start_demo(page, "Counting", steps=20, step_ms=150)
    progress = bar(row)
    await expect(progress).to_have_attribute("aria-valuemin", "0")
    await expect(progress).to_have_attribute("aria-valuemax", "100")
    await expect(progress).to_have_accessible_name("Progress of Counting")
    await expect(progress).to_have_attribute("aria-valuenow", "100")
    await expect(progress).to_have_text("100%")
    await expect(row.locator(".status")).to_have_text("succeeded")
    await expect(page.locator("#toasts .toast", has_text="Counting succeeded")).to_be_visible()
    await expect(bell).to_have_accessible_name("Notifications, 1 unread")
    await expect(page.locator("#unread-count")).to_have_text("1")
    await tab.shot("task-succeeded")
    shown = [*await page.evaluate("window.__shown"), 100]
    assert any(0 < value < 100 for value in shown), f"the bar went straight to the end: {shown}"
    assert shown == sorted(shown), f"the bar went backwards: {shown}"
    assert await page.evaluate(SAME_PAGE), "the page was reloaded"
    await expect(row.get_by_role("link", name="Download result")).to_be_visible()

    await bell.click()
    await expect(page).to_have_url(re.compile(r"/notifications$"))
    unread = page.locator(".notification.unread")
    await expect(unread).to_have_count(1)
    await expect(unread).to_contain_text("Task completed")
    await tab.shot("notifications-unread")
    await page.get_by_role("button", name="Mark all read").click()
    await expect(unread).to_have_count(0)
    await expect(page.locator(".notification")).to_have_count(1)
    await expect(bell).to_have_accessible_name("Notifications, 0 unread")
    await tab.shot("notifications-read")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/$"))
    await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Sign in")).to_be_visible()
    await expect(page.locator("#bell")).to_have_count(0)
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fdashboard$|/login\?next=/dashboard$"))

    await page.get_by_label("Username or email").fill(identity["email"])
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await stream_open(page)
    again = page.locator(".task-row", has=page.get_by_role("link", name="Counting", exact=True))
    await expect(bar(again)).to_have_attribute("aria-valuenow", "100")
    await expect(again.locator(".status")).to_have_text("succeeded")
    await expect(page.locator("#unread-count")).to_have_text("0")
    await tab.shot("signed-in-again")


async def test_the_dashboard_fits_a_small_phone(open_tab: OpenTab) -> None:
    """At 375 CSS pixels wide no page scrolls sideways; the dashboard with a task listed and its toast shown."""
    tab = await open_tab("phone", width=375, height=812)
    page = tab.page

    async def fits(path: str) -> None:
        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow} px at 375 px"

    await page.goto("/")
    await fits("/")
    await page.goto("/register")
    await fits("/register")
    await register(tab)
    row = await start_demo(page, "A task with a rather long title for a small screen", steps=5, step_ms=50)
    await expect(bar(row)).to_have_attribute("aria-valuenow", "100")
    await expect(page.locator("#toasts .toast")).to_be_visible()
    await tab.shot("dashboard")
    await fits("/dashboard")
    for path in ("/notifications", "/account"):
        await page.goto(path)
        await stream_open(page)
        await fits(path)
    await tab.shot("account")


# --- the administrator ------------------------------------------------------------------------------


async def test_admin_manages_users_retries_a_failed_task_and_broadcasts(
    open_tab: OpenTab, live_server: LiveServer
) -> None:
    # Somebody whose task fails (every attempt breaks at step 1): its attempts go on while the admin is made.
    member_tab = await open_tab("member")
    member_page = member_tab.page
    member = await register(member_tab)
    broken = await start_demo(member_page, "Breaks", steps=2, step_ms=0, fail_at_step=1)
    admin_tab = await open_tab("admin")
    page = admin_tab.page
    admin = await register(admin_tab)
    promoted = await asyncio.to_thread(operator_cli, "users", "promote", admin["username"])
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr

    # After its last attempt the member's dashboard shows it failed, and the bell says so.
    await expect(broken.locator(".status")).to_have_text("failed")
    await expect(member_page.locator("#unread-count")).to_have_text("1")
    await member_tab.shot("task-failed")
    await page.reload()
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    await expect(page).to_have_url(re.compile(r"/admin$"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("Admin")
    await expect(page.get_by_text("2 users.")).to_be_visible()
    await expect(page.locator("#admin-status")).to_contain_text("pid")
    await admin_tab.shot("admin")

    # The member's failed task is listed.
    failed = page.locator("#failed-title ~ * tr", has_text="Breaks")
    await expect(failed).to_contain_text("attempt 3")
    await expect(failed).to_contain_text(member["username"])
    await expect(failed).to_contain_text("Step 1 failed")

    # Deactivated, the member is signed out at once: their next page is the sign-in form, which refuses them.
    await page.get_by_label("Search users").fill(member["username"])
    await expect(page.locator("#user-list")).to_contain_text(f"1 user matching “{member['username']}”")
    await expect(page).to_have_url(re.compile(r"/admin\?q=" + member["username"] + "$"))
    user_row = page.locator("#user-list tr", has_text=member["email"])
    await user_row.get_by_role("button", name="Deactivate").click()
    await expect(user_row.locator(".tag-bad")).to_have_text("inactive")
    await admin_tab.shot("deactivated")
    await member_page.reload()
    await expect(member_page).to_have_url(re.compile(r"/login\?next="))
    await member_page.get_by_label("Username or email").fill(member["username"])
    await member_page.get_by_label("Password").fill(PASSWORD)
    await member_page.get_by_role("button", name="Sign in").click()
    await expect(member_page.locator(".form-error")).to_be_visible()  # not while inactive
    await member_tab.shot("refused")
    await user_row.get_by_role("button", name="Activate").click()
    await expect(user_row.locator(".tag-ok")).to_have_text("active")
    await member_page.get_by_label("Password").fill(PASSWORD)
    await member_page.get_by_role("button", name="Sign in").click()
    await expect(member_page).to_have_url(re.compile(r"/dashboard$"))
    await stream_open(member_page)

    # Retried from here: queued again for a fourth attempt (which will fail too).
    await failed.get_by_role("button", name="Retry").click()
    await expect(failed).to_have_count(0)
    await expect(page.get_by_text("No failed tasks.")).to_be_visible()

    # A broadcast reaches every active user at once: a toast and the bell, here and on the member's page.
    await page.get_by_label("Title").fill("Maintenance")
    await page.get_by_label("Message").fill("Tonight at ten.")
    await page.get_by_role("button", name="Send broadcast").click()
    await expect(page.get_by_text("Broadcast sent to 2 users.")).to_be_visible()
    await expect(page.locator("#toasts .toast", has_text="Maintenance: Tonight at ten.")).to_be_visible()
    await expect(member_page.locator("#toasts .toast", has_text="Maintenance: Tonight at ten.")).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("1")
    await admin_tab.shot("broadcast")
    await member_tab.shot("broadcast-arrived")

    # Meanwhile the member watched the retried task fail again (a second "Task failed"), and it is listed again.
    await expect(member_page.locator("#unread-count")).to_have_text("3")
    await expect(broken.locator(".status")).to_have_text("failed")
    await page.goto("/admin")
    await expect(failed).to_contain_text(re.compile(r"attempt ([4-9]|\d\d)\b"))
    await expect(page.get_by_text("No failed tasks.")).to_be_hidden()
    await admin_tab.shot("retried")
    await member_page.locator("#bell").click()
    await expect(member_page.locator(".notification.unread", has_text="Tonight at ten.")).to_be_visible()
    await expect(member_page.locator(".notification.unread", has_text="Task failed")).to_have_count(2)


# --- a dropped connection -----------------------------------------------------------------------------


async def test_the_page_catches_up_after_its_event_stream_drops(
    cable: Cable, open_tab: OpenTab, live_server: LiveServer
) -> None:
    """The stream dies silently while a task runs, the task ends meanwhile; the page ends up showing it."""
    tab = await open_tab(url=cable.url)
    page = tab.page
    identity = await register(tab)
    token = await api_token(live_server, identity)
    await page.evaluate(MARK_PAGE)
    row = await start_demo(page, "Through the outage", steps=30, step_ms=150)
    progress = bar(row)
    status = row.locator(".status")
    await expect(status).to_have_text("running")

    # Whatever the server sends on the stream is lost from now on, until the connection breaks.
    cable.blackhole()
    for _ in range(600):
        if await task_status_over_api(live_server, token, "Through the outage") == "succeeded":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the task did not end")
    await expect(status).to_have_text("running")  # the page has not heard of the end
    await tab.shot("stream-lost")

    tab.tolerate(r"net::ERR_INCOMPLETE_CHUNKED_ENCODING \(at [^ ]+/api/v1/events")  # the cut, as the browser sees it
    cable.cut()
    await expect(progress).to_have_attribute("aria-valuenow", "100")
    await expect(status).to_have_text("succeeded")
    await expect(page.locator("#toasts .toast", has_text="Through the outage succeeded")).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("1")
    await stream_open(page)
    assert await page.evaluate(SAME_PAGE), "the page was reloaded"
    await tab.shot("caught-up")


async def test_the_page_opens_a_new_stream_after_the_old_one_was_refused(
    cable: Cable, open_tab: OpenTab, live_server: LiveServer
) -> None:
    """The stream breaks and its reconnects get a 503 until the task has ended; a new stream catches up."""
    tab = await open_tab(url=cable.url)
    page = tab.page
    identity = await register(tab)
    token = await api_token(live_server, identity)
    await page.evaluate(MARK_PAGE)
    row = await start_demo(page, "Through the refusals", steps=30, step_ms=150)
    status = row.locator(".status")
    await expect(status).to_have_text("running")

    cable.refuse_streams()
    tab.tolerate(r"net::ERR_INCOMPLETE_CHUNKED_ENCODING \(at [^ ]+/api/v1/events")
    tab.tolerate(r"status of 503 \(Service Unavailable\) \(at [^ ]+/api/v1/events")
    tab.tolerate(r"^console error: Live updates: the server refused the event stream; opening a new one shortly\.")
    cable.cut()
    await expect(page.locator("html")).to_have_attribute("data-live", "reconnecting")
    for _ in range(600):
        if await task_status_over_api(live_server, token, "Through the refusals") == "succeeded" and cable.refused >= 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the task did not end, or the stream was not asked for again ({cable.refused} refused)")
    await expect(status).to_have_text("running")
    await tab.shot("refused")

    cable.allow_streams()
    await expect(bar(row)).to_have_attribute("aria-valuenow", "100")
    await expect(status).to_have_text("succeeded")
    await expect(page.locator("#toasts .toast", has_text="Through the refusals succeeded")).to_be_visible()
    await expect(page.locator("#unread-count")).to_have_text("1")
    await stream_open(page)
    assert await page.evaluate(SAME_PAGE), "the page was reloaded"
    await tab.shot("caught-up")


async def test_a_rows_link_stays_in_place_as_its_task_starts_and_ends(
    open_tab: OpenTab, live_server: LiveServer
) -> None:
    """A task's row is updated in place as the task starts and ends: only its buttons are fetched again when they
    change, so the link a user may be clicking is never swapped for a copy (a click whose press and release
    straddle a swap is lost)."""
    tab = await open_tab()
    page = tab.page
    identity = await register(tab)
    token = await api_token(live_server, identity)
    run_at = (datetime.now(UTC) + timedelta(seconds=4)).isoformat()
    body = {"kind": "demo", "title": "Soon", "params": {"steps": 10, "step_ms": 300}, "run_at": run_at}
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20) as client:
        started = await client.post("/api/v1/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
        assert started.status_code == 202, started.text
    row = page.locator(".task-row", has=page.get_by_role("link", name="Soon", exact=True))
    await expect(row.locator(".status")).to_have_text("queued")  # listed by the page when its event came
    await expect(row.locator(".task-starts")).to_be_visible()
    link = row.get_by_role("link", name="Soon", exact=True)
    await link.evaluate("element => { element.dataset.marked = 'yes'; }")
    await expect(row.locator(".status")).to_have_text("running", timeout=30_000)
    await expect(row.locator(".task-starts")).to_have_count(0)
    assert await link.get_attribute("data-marked") == "yes", "the row was swapped when its task started"
    await expect(row.locator(".status")).to_have_text("succeeded", timeout=30_000)
    await expect(row.get_by_role("button", name="Delete")).to_be_visible()  # the buttons of a finished task
    await expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    assert await link.get_attribute("data-marked") == "yes", "the row was swapped when its task ended"
    await link.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Soon")


async def test_a_list_refresh_keeps_the_rows_already_shown_in_place(open_tab: OpenTab, live_server: LiveServer) -> None:
    """The dashboard fetches its list again when an event names a task it does not show yet (started elsewhere):
    the new list is merged into the page (htmx's idiomorph), so the rows already shown, and the link a user may be
    clicking, stay the same elements."""
    tab = await open_tab()
    page = tab.page
    identity = await register(tab)
    token = await api_token(live_server, identity)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=live_server.url, timeout=20, headers=headers) as client:
        first = await client.post("/api/v1/tasks", json={"kind": "demo", "title": "First", "params": {"steps": 1}})
        assert first.status_code == 202, first.text
        link = page.get_by_role("link", name="First", exact=True)
        await expect(link).to_be_visible()  # listed when its event came: the list was fetched again
        # A property of the element, not an attribute: a merge gives an element the attributes of the new list.
        await link.evaluate("element => { element.keptMark = 'yes'; }")
        second = await client.post("/api/v1/tasks", json={"kind": "demo", "title": "Second", "params": {"steps": 1}})
        assert second.status_code == 202, second.text
    await expect(page.get_by_role("link", name="Second", exact=True)).to_be_visible()
    assert await link.evaluate("element => element.keptMark") == "yes", "the list refresh replaced the rows shown"
    await link.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("First")


async def test_a_list_refresh_rendered_before_what_a_row_shows_does_not_step_it_back(open_tab: OpenTab) -> None:
    """A list refresh can be rendered before an event that its row has already shown (the refresh was on its way
    when the event came): merged into the page, it leaves that row as it is, so the bar never steps back. The
    late refresh is made here by serving the list as it was rendered at the task's start."""
    tab = await open_tab()
    page = tab.page
    await register(tab)
    row = await start_demo(page, "Steady", steps=40, step_ms=250)
    progress = bar(row)
    await expect(row.locator(".status")).to_have_text("running")
    await expect(progress).not_to_have_attribute("aria-valuenow", "0")
    list_url = await page.locator("#tasks .live-fragment").get_attribute("hx-get")
    assert list_url
    fresh = await page.request.get(list_url)
    # The same list rendered before the task's first event: progress 0, at an event id before all of its own.
    stale = re.sub(r'data-event-id="\d+"', 'data-event-id="1"', await fresh.text())
    stale = re.sub(r'aria-valuenow="\d+"', 'aria-valuenow="0"', stale)
    assert 'aria-valuenow="0"' in stale

    async def serve_stale(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=stale)

    await page.evaluate(
        """() => {
          const bar = document.querySelector("#tasks [role=progressbar]");
          window.__shown = [Number(bar.getAttribute("aria-valuenow"))];
          new MutationObserver((changes) => {
            for (const change of changes) window.__shown.push(Number(change.target.getAttribute("aria-valuenow")));
          }).observe(document.getElementById("tasks"), {
            subtree: true, attributes: true, attributeFilter: ["aria-valuenow"],
          });
        }"""
    )

    def the_list(url: str) -> bool:
        return url.endswith(list_url)

    await page.route(the_list, serve_stale)
    async with page.expect_response(lambda response: the_list(response.url)):
        await page.evaluate("htmx.trigger(document.body, 'tasks-changed')")
    await page.unroute(the_list)
    await expect(row.locator(".status")).to_have_text("succeeded", timeout=30_000)
    shown = await page.evaluate("window.__shown")
    assert shown == sorted(shown), f"the bar stepped back: {shown}"


async def test_the_task_page_shows_its_output_lines_as_they_are_written(open_tab: OpenTab) -> None:
    """The output panel (role=log) gains each line the task writes, in order, while the page stays open."""
    tab = await open_tab()
    page = tab.page
    await register(tab)
    steps = 16
    row = await start_demo(page, "Talking", steps=steps, step_ms=400)
    # Opened by a click on its row's link while the task starts: the row's link stays the same element through
    # its status changes and list refreshes (a click on an element htmx swaps out is lost).
    await row.get_by_role("link", name="Talking", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Talking")
    await stream_open(page)
    await page.evaluate(MARK_PAGE)
    output = page.get_by_role("log")
    shown_at_first = await output.locator(".log-message").all_inner_texts()
    assert f"Step {steps} of {steps} done" not in shown_at_first, "the task ended before its page was open"
    await expect(output.locator(".log-message").last).to_have_text(f"Step {steps} of {steps} done", timeout=60_000)
    shown = await output.locator(".log-message").all_inner_texts()
    assert shown == [f"Step {step} of {steps} done" for step in range(1, steps + 1)], shown
    assert len(shown) > len(shown_at_first), "no line arrived after the page was open"
    assert await page.evaluate(SAME_PAGE), "the page was reloaded"
    await tab.shot("task-output")


async def test_the_dashboard_filter_replaces_the_list_in_place(open_tab: OpenTab) -> None:
    """With JavaScript the filter form swaps in the matching tasks only (the page is not loaded again)."""
    tab = await open_tab()
    page = tab.page
    await register(tab)
    titles = ("Alpha apple", "Beta berry", "Gamma apple")
    for title in titles:
        row = await start_demo(page, title, steps=1, step_ms=0)
        await expect(row.locator(".status")).to_have_text("succeeded")
    await page.evaluate(MARK_PAGE)
    await page.get_by_label("Contains").fill("APPLE")
    await page.get_by_role("button", name="Filter", exact=True).click()
    rows = page.locator("#tasks .task-row")
    await expect(rows).to_have_count(2)
    await expect(rows.get_by_role("link", name="Beta berry", exact=True)).to_have_count(0)
    for title in ("Alpha apple", "Gamma apple"):
        await expect(rows.get_by_role("link", name=title, exact=True)).to_be_visible()
    assert await page.evaluate(SAME_PAGE), "the filter loaded the page again instead of swapping the list"
