"""Accessibility in a real browser: axe-core on every page, and the main path with the keyboard alone.

axe-core (npm, a devDependency: `npm ci` puts it in node_modules/, which `make test` runs
first) checks each page a visitor, a user and an administrator can reach against WCAG 2.0
and 2.1 A and AA, in the light and the dark colour scheme; a test fails listing every
serious or critical violation. The app never serves axe: the test's browser answers a
same-origin address with the file from node_modules/, so the page's strict CSP stays on.

Then a person without a mouse signs up, starts a demo task, waits for its notification and
marks it read with Tab, Shift+Tab, Enter, Space and typing only; at every step the focused
element must show a focus indicator (an outline or a box-shadow).

Both run once per `make test`, in embedded mode: the pages, their markup and their scripts are
the same in either mode (no template reads the mode), and these two tests cost ~17 s of CPU
(mostly Chromium running axe) and half a minute of the services run, its longest part. The
browser tests of live behaviour (tests/test_browser.py) run in both.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import Page, Route, expect

from tests.accounts import new_identity, operator_cli

if TYPE_CHECKING:
    from tests.browser import OpenTab, Tab

pytest_plugins = ["tests.browser"]  # the fixtures: chromium, open_tab
pytestmark = pytest.mark.embedded  # the same pages in either mode (above)

AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
AXE_PATH = "/__tests__/axe.min.js"  # answered by the test's browser context, never by the app
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
SERIOUS = {"serious", "critical"}
SCHEMES = ("light", "dark")


# --- axe ---------------------------------------------------------------------------------------------


async def with_axe(tab: Tab) -> None:
    """Let the tab load axe-core from node_modules at a same-origin address (the CSP allows 'self' only)."""
    assert AXE.exists(), f"{AXE} is missing: run `npm ci` (or `make install`)"

    async def fulfil(route: Route) -> None:
        await route.fulfill(path=AXE, content_type="text/javascript")

    await tab.context.route(f"**{AXE_PATH}", fulfil)


async def violations(page: Page, where: str) -> list[str]:
    """The serious and critical WCAG A/AA violations on the page as it is now, in each colour scheme."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(url=AXE_PATH)
    found: list[str] = []
    for scheme in SCHEMES:
        # Reduced motion: what axe measures is the page at rest, not a toast halfway through fading in.
        await page.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        results: list[dict[str, Any]] = await page.evaluate(
            """async (tags) => {
              const result = await axe.run(document, {runOnly: {type: "tag", values: tags}});
              return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                targets: v.nodes.map((n) => n.target.join(" ")),
                summary: v.nodes.map((n) => n.failureSummary || "").slice(0, 1).join(""),
              }));
            }""",
            AXE_TAGS,
        )
        for v in results:
            if v["impact"] in SERIOUS:
                found.append(
                    f"{where} [{scheme}] {v['id']} ({v['impact']}): {v['help']}\n"
                    f"    targets: {', '.join(v['targets'])}\n    {v['helpUrl']}\n    {v['summary']}".rstrip()
                )
    await page.emulate_media(color_scheme=None, reduced_motion=None)
    return found


async def sign_up(page: Page) -> dict[str, str]:
    identity = new_identity()
    await page.goto("/register")
    await page.get_by_label("Username").fill(identity["username"])
    await page.get_by_label("Email").fill(identity["email"])
    await page.get_by_label("Password", exact=True).fill(identity["password"])
    await page.get_by_role("button", name="Create account").click()
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.locator("html")).to_have_attribute("data-live", "open")
    return identity


async def test_no_page_has_a_serious_or_critical_wcag_violation(open_tab: OpenTab) -> None:
    tab = await open_tab()
    page = tab.page
    await with_axe(tab)
    found: list[str] = []

    async def check(path: str, label: str = "") -> None:
        if path:
            await page.goto(path)
        found.extend(await violations(page, label or path))

    # A visitor's pages, and their forms showing errors.
    for path in ("/", "/login", "/register", "/forgot-password", "/reset-password/not-a-token"):
        await check(path)
    # The error pages answer 404 and 400, as they should; the browser logs both.
    tab.tolerate(r"status of 40[04] \((Not Found|Bad Request)\) \(at [^ ]+/(no-such-page|verify-email/)")
    await check("/no-such-page")
    await check("/verify-email/not-a-token")
    await page.goto("/register")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    await check("", "/register (errors)")
    await page.goto("/login")
    await page.get_by_label("Username or email").fill("nobody")
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".form-error")).to_be_visible()
    await check("", "/login (errors)")

    # A user's: the dashboard (the new-task form and the task list), a task, notifications, account.
    identity = await sign_up(page)
    await check("", "/dashboard (no tasks)")
    await page.get_by_label("Title (optional)").fill("Checked")
    await page.get_by_label("Steps").fill("2")
    await page.get_by_label("Step duration (ms)").fill("0")
    await page.get_by_role("button", name="Start task").click()
    row = page.locator(".task-row", has=page.get_by_role("link", name="Checked", exact=True))
    await expect(row.locator(".status")).to_have_text("succeeded")
    await expect(page.locator("#toasts .toast")).to_be_visible()
    await check("", "/dashboard (a task, a toast)")
    await page.get_by_label("Steps").fill("0")
    await page.get_by_role("button", name="Start task").click()
    await expect(page.get_by_label("Steps")).to_have_attribute("aria-invalid", "true")
    await check("", "/dashboard (errors)")
    await row.get_by_role("link", name="Checked").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Checked")
    await check("", "/tasks/<id>")
    await check("/notifications", "/notifications (unread)")
    await check("/account")
    # Schedules: none, one, the form with errors, one schedule's page.
    await check("/schedules", "/schedules (none)")
    await page.get_by_label("Name", exact=True).fill("Checked schedule")
    await page.get_by_label("When (cron)").fill("0 7 * * *")
    await page.get_by_role("button", name="Save schedule").click()
    await expect(page.locator(".schedule-row")).to_have_count(1)
    await check("", "/schedules (a schedule)")
    await page.get_by_label("When (cron)").fill("61 * * * *")
    await page.get_by_role("button", name="Save schedule").click()
    await expect(page.get_by_label("When (cron)")).to_have_attribute("aria-invalid", "true")
    await check("", "/schedules (errors)")
    await page.get_by_role("link", name="Checked schedule", exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Checked schedule")
    await check("", "/schedules/<id>")

    # An administrator's.
    promoted = await asyncio.to_thread(operator_cli, "users", "promote", identity["username"])
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    await check("/admin")
    await expect(page.locator("#admin-status")).to_contain_text("pid")
    await check("", "/admin (status loaded)")
    await tab.shot("admin")
    await check("/admin/audit")  # the sign-up, the sign-ins (one failed) and the promotion are there
    await expect(page.locator(".audit-log")).to_contain_text("auth.login_failed")
    await check("/admin/audit?action=auth.&q=nobody", "/admin/audit (filtered)")
    await tab.shot("admin-audit")

    assert not found, "serious or critical accessibility violations:\n" + "\n".join(found)


# --- the keyboard alone ------------------------------------------------------------------------------

FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
  const shadow = style.boxShadow && style.boxShadow !== "none";
  const name = (el.getAttribute("aria-label") || el.labels?.[0]?.textContent || el.textContent || "").trim();
  return {tag: el.tagName.toLowerCase(), id: el.id, name: name.replace(/\\s+/g, " "), visible: outline || shadow};
}"""


class Keyboard:
    """Moves the focus with Tab and Shift+Tab only, and checks that the focus can be seen wherever it lands."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.path: list[str] = []

    async def focused(self) -> dict[str, Any] | None:
        here: dict[str, Any] | None = await self.page.evaluate(FOCUSED)
        return here

    async def visible_focus(self) -> dict[str, Any]:
        here = await self.focused()
        assert here is not None, f"nothing has the focus after {self.path[-5:]}"
        assert here["visible"], f"the focus on <{here['tag']}> {here['name']!r} shows no outline or box-shadow"
        return here

    async def tab_to(self, matches: str, *, backwards: bool = False, limit: int = 60) -> dict[str, Any]:
        """Press Tab (or Shift+Tab) until the focused element's id or name matches `matches`."""
        pattern = re.compile(matches)
        key = "Shift+Tab" if backwards else "Tab"
        for _ in range(limit):
            await self.page.keyboard.press(key)
            here = await self.focused()
            if here is None:
                continue
            self.path.append(f"{here['tag']}#{here['id']} {here['name'][:40]!r}")
            assert here["visible"], f"the focus on <{here['tag']}> {here['name']!r} shows no outline or box-shadow"
            if pattern.search(here["id"]) or pattern.search(here["name"]):
                return here
        raise AssertionError(f"{key} never reached {matches!r}; it went through {self.path[-limit:]}")

    async def type_into(self, matches: str, text: str) -> None:
        await self.tab_to(matches)
        await self.page.keyboard.press("ControlOrMeta+a")
        await self.page.keyboard.type(text)


async def test_sign_up_start_a_task_and_read_its_notification_with_the_keyboard_alone(open_tab: OpenTab) -> None:
    tab = await open_tab("keyboard")
    page = tab.page
    keys = Keyboard(page)
    identity = new_identity()

    # The first Tab lands on the skip link, which takes the keyboard past the header.
    await page.goto("/")
    await keys.tab_to("^Skip to content$", limit=1)
    await page.keyboard.press("Enter")
    await expect(page.locator("#main")).to_be_focused()
    await keys.tab_to("^Create account$")  # the start page's own button, after the skip
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/register$"))

    # Sign up. A wrong password first: the form comes back and the keyboard is on the field to fix.
    await keys.type_into("^username$", identity["username"])
    await keys.type_into("^email$", identity["email"])
    await keys.type_into("^password$", "short")
    await page.keyboard.press("Enter")
    await expect(page.locator("#password")).to_be_focused()
    await expect(page.locator("#password")).to_have_attribute("aria-invalid", "true")
    await keys.visible_focus()
    await page.keyboard.type(identity["password"])
    await keys.tab_to("^Create account$")
    await tab.shot("sign-up")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.locator("html")).to_have_attribute("data-live", "open")

    # Start a short demo task from the dashboard's form.
    await keys.tab_to("^Skip to content$", limit=1)
    await page.keyboard.press("Enter")
    await keys.tab_to("^kind$")
    await expect(page.locator("#kind")).to_have_value("demo")
    await keys.type_into("^title$", "By keyboard")
    await keys.type_into("^param-steps$", "3")
    await keys.type_into("^param-step_ms$", "50")
    await keys.tab_to("^Start task$")
    await page.keyboard.press("Space")
    await expect(page.locator("#start-task").get_by_role("status")).to_have_text("Started “By keyboard”.")
    await expect(page.get_by_role("button", name="Start task")).to_be_focused()  # the form came back; focus stays
    row = page.locator(".task-row", has=page.get_by_role("link", name="By keyboard", exact=True))
    await expect(row.locator(".status")).to_have_text("succeeded")
    await expect(page.locator("#bell")).to_have_accessible_name("Notifications, 1 unread")
    await tab.shot("task-done")

    # Its notification: back up to the bell, open it, mark the notification read.
    await keys.tab_to("^bell$", backwards=True)
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/notifications$"))
    unread = page.locator(".notification.unread")
    await expect(unread).to_have_count(1)
    await expect(unread).to_contain_text("Task completed")
    await expect(unread).to_contain_text("By keyboard")
    await keys.tab_to("^Mark read$")
    await tab.shot("notification-unread")
    await page.keyboard.press("Enter")
    await expect(unread).to_have_count(0)
    await expect(page.locator(".notification")).to_have_count(1)
    await expect(page.locator("#bell")).to_have_accessible_name("Notifications, 0 unread")
    # The button that had the focus is gone; the keyboard stays in the notification, not back at the top.
    here = await keys.visible_focus()
    assert here["name"] in {"Delete"} or here["id"].startswith("notification-"), here
    await keys.tab_to("^Open the task$", backwards=True)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("By keyboard")
    await tab.shot("task-page")
