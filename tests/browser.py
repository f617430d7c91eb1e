"""A real browser for the end-to-end tests: Debian's Chromium, driven by Playwright's async API.

One headless Chromium serves the whole run (`chromium`); each test opens browser contexts
(`Tab`: fresh cookies, its own viewport) on the live server with `open_tab`. A tab records
every console error, uncaught script error and request to another origin than the live
server's; at the end of the test each tab saves a last screenshot and the test fails if any
tab recorded one. `tab.shot("name")` saves a screenshot of a key state under
`tests/screenshots/<mode>/` (git-ignored).

Chromium is Debian's package at /usr/bin/chromium (Playwright downloads no browser here).
`make test` installs it when it is missing and it can (as root, with apt); without it the
browser tests fail under CI=true and are skipped elsewhere, naming the install command.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, Request, WebError, async_playwright
from playwright.async_api import expect as playwright_expect

from tests.servers import LiveServer, unavailable

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "sudo apt-get install chromium"
# Headless, and nothing of Chromium's own network traffic (updates, sync, field trials): the
# machines that run the tests may have no way out, and a test fails on any foreign request.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
# Generous: the tests share a 2-core machine with other runs. Nothing waits this long when all is well.
TIMEOUT_MS = 30_000
LOCAL_SCHEMES = {"data", "blob", "about"}

playwright_expect.set_options(timeout=TIMEOUT_MS)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Tab:
    """One browser context with one page, and what went wrong in it."""

    name: str
    context: BrowserContext
    page: Page
    origin: str
    folder: Path
    problems: list[str] = field(default_factory=list)
    tolerated: list[re.Pattern[str]] = field(default_factory=list)
    shots: int = 0

    def watch(self) -> None:
        self.context.on("console", self._console)
        self.context.on("weberror", self._web_error)
        self.context.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "") if message.location else ""
        text = f"console error: {message.text} (at {where or (message.page and message.page.url)})"
        if not any(pattern.search(text) for pattern in self.tolerated):
            self.problems.append(text)

    def _web_error(self, error: WebError) -> None:
        self.problems.append(f"uncaught error in the page: {error.error}")

    def _request(self, request: Request) -> None:
        if urlsplit(request.url).scheme in LOCAL_SCHEMES:
            return
        if _origin(request.url) != self.origin:
            self.problems.append(f"request to another origin: {request.method} {request.url}")

    def tolerate(self, pattern: str) -> None:
        """Console errors matching `pattern` are expected from now on (a test that cuts the network)."""
        self.tolerated.append(re.compile(pattern))

    async def shot(self, state: str) -> Path:
        """Save a full-page screenshot of the page as it is now, named after the test, this tab and `state`."""
        self.shots += 1
        path = self.folder / f"{self.name}-{self.shots:02d}-{state}.png"
        await self.page.screenshot(path=path, full_page=True)
        return path


OpenTab = Callable[..., Awaitable[Tab]]


STREAM_REQUEST = b" /api/v1/events"
REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(eq=False)
class Link:
    """One TCP connection through the `Cable`: the browser's side and the server's."""

    browser: asyncio.StreamWriter
    server: asyncio.StreamWriter
    stream: bool = False  # it carried a request for the live-event stream


class Cable:
    """A TCP relay between the browser and the live server, whose event streams a test can break.

    `blackhole()` makes every live-event stream lose what the server sends (the connection
    stays open, as when a network path dies silently); `cut()` then closes those
    connections, so the browser notices and reconnects, through the relay again.
    `refuse_streams()` answers every new request for the stream with a 503 (as a proxy
    does while its upstream is away) until `allow_streams()`.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.links: set[Link] = set()
        self.swallowing = False
        self.refusing = False
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.cut(everything=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def blackhole(self) -> None:
        self.swallowing = True

    def refuse_streams(self) -> None:
        self.refusing = True

    def allow_streams(self) -> None:
        self.refusing = False

    def cut(self, *, everything: bool = False) -> None:
        self.swallowing = False
        for link in list(self.links):
            if link.stream or everything:
                link.browser.close()
                link.server.close()

    async def _serve(self, from_browser: asyncio.StreamReader, to_browser: asyncio.StreamWriter) -> None:
        try:
            first = await from_browser.read(65536)
            if self.refusing and STREAM_REQUEST in first:
                self.refused += 1
                to_browser.write(REFUSAL)
                await to_browser.drain()
                to_browser.close()
                return
            from_server, to_server = await asyncio.open_connection(self.host, self.port)
        except OSError:
            to_browser.close()
            return
        link = Link(browser=to_browser, server=to_server, stream=STREAM_REQUEST in first)
        to_server.write(first)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, from_browser, to_server, up=True), self._pump(link, from_server, to_browser)
            )
        finally:
            self.links.discard(link)
            to_browser.close()
            to_server.close()

    async def _pump(
        self, link: Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, up: bool = False
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := await source.read(65536):
                if up and STREAM_REQUEST in chunk:
                    link.stream = True
                    if self.refusing:  # a kept-alive connection asked for the stream: drop it
                        break
                if not up and link.stream and self.swallowing:
                    continue
                sink.write(chunk)
                await sink.drain()
        sink.close()


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """The run's headless Chromium."""
    if not CHROMIUM.exists():
        unavailable(f"the browser tests need Debian's Chromium at {CHROMIUM}; install it with `{INSTALL}`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def open_tab(
    chromium: Browser, live_server: LiveServer, mode: str, request: pytest.FixtureRequest
) -> AsyncIterator[OpenTab]:
    """Open a fresh browser context on the live server: `await open_tab("admin", width=375)`.

    At the end of the test every tab saves a last screenshot and is closed; the test fails if
    any of them logged a console error, raised in a script or asked another origin for anything.
    """
    folder = SCREENSHOTS / mode
    folder.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"\W+", "-", request.node.name).strip("-")
    for old in folder.glob(f"{test}-*.png"):  # an earlier run's
        old.unlink()
    tabs: list[Tab] = []

    async def open_one(name: str = "user", *, width: int = 1280, height: int = 900, url: str = "") -> Tab:
        url = url or live_server.url
        context = await chromium.new_context(base_url=url, viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        tab = Tab(name=f"{test}-{name}", context=context, page=page, origin=_origin(url), folder=folder)
        tab.watch()
        tabs.append(tab)
        return tab

    yield open_one

    problems: list[str] = []
    for tab in tabs:
        try:
            if not tab.page.is_closed():
                await tab.shot("last")
        finally:
            # What happened until now; closing the tab breaks its event stream, which the browser reports.
            problems += [f"{tab.name}: {problem}" for problem in tab.problems]
            await tab.context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
async def cable(chromium: Browser, live_server: LiveServer) -> AsyncIterator[Cable]:
    """A relay to the live server whose event streams the test can break (open a tab on `cable.url`).

    Request it before `open_tab`, so that the tabs are closed before the relay.
    """
    relay = Cable(live_server.url)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
