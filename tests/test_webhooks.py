"""Webhooks when a task ends (issue 21.2): signed, retried, logged per task, never sent to internal addresses.

Real HTTP both ways: the live service (both modes) POSTs to a receiver in this process on
127.0.0.1, which tests/conftest.py lets webhooks reach (WEBHOOK_ALLOWED_HOSTS) with quick
retries (WEBHOOK_RETRY_SECONDS: 4 tries). The guard's address rules are also checked on
the domain's functions directly, with the settings a deployment would have.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest

from app.config import Settings, get_settings
from app.domain.webhooks.guard import literal_address, public, url_problem
from tests.accounts import PASSWORD, signed_in_headers
from tests.processes import eventually, redis_server, send_message, stack, user_client
from tests.servers import LiveServer
from tests.test_accessibility import sign_up as browser_sign_up
from tests.test_accessibility import violations, with_axe
from tests.test_pages import sign_up

if TYPE_CHECKING:
    from tests.browser import OpenTab

pytest_plugins = ["tests.browser"]  # the fixtures: chromium, open_tab

FINISHED = {"succeeded", "failed", "cancelled"}


def verify_webhook(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The verification snippet of docs/webhooks.md, as a receiver would run it."""
    timestamp = headers["X-Webhook-Timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Webhook-Signature"])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers what `answers` says, in order."""

    requests: list[Received] = field(default_factory=list)
    #: Per path: status codes to answer in turn, then 200.
    answers: dict[str, list[int]] = field(default_factory=dict)
    #: Paths whose first request is held until `release` is set.
    hold: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                first = not state.at(self.path)
                state.requests.append(Received(self.path, dict(self.headers.items()), body))
                planned = state.answers.get(self.path, [])
                status = planned.pop(0) if planned else 200
            if first and self.path in state.hold:
                state.release.wait(30)
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "/redirected")
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"nope!" if status >= 300 else b"ok!!!")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=20) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def submit(api: httpx.Client, webhook: dict[str, Any], **params: Any) -> str:
    body = {"kind": "demo", "params": {"steps": 1, "step_ms": 0, **params}, "webhook": webhook}
    response = api.post("/api/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliveries(api: httpx.Client, task_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/tasks/{task_id}/webhook-deliveries")
    assert response.status_code == 200, response.text
    return dict(response.json())


def settled(api: httpx.Client, task_id: str, count: int = 1, timeout: float = 60) -> dict[str, Any]:
    """The task's deliveries once `count` of them have succeeded or failed (the task has ended by then)."""

    def check() -> dict[str, Any] | None:
        found = deliveries(api, task_id)
        done = [d for d in found["items"] if d["status"] in ("succeeded", "failed")]
        return found if len(done) >= count else None

    return eventually(check, timeout=timeout, what=f"{count} settled deliveries of task {task_id}", interval=0.1)


def ended(api: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = dict(api.get(f"/api/v1/tasks/{task_id}").json())
        return task if task["status"] in FINISHED else None

    return eventually(check, timeout=timeout, what=f"task {task_id} to end")


def test_a_succeeded_task_is_posted_signed_once(api: httpx.Client, receiver: Receiver) -> None:
    secret = api.get("/api/v1/users/me/webhook-secret")
    assert secret.status_code == 200, secret.text
    task_id = submit(api, {"url": receiver.url("/ok")})
    found = settled(api, task_id)
    assert found["webhook"] == {"url": receiver.url("/ok"), "events": ["succeeded", "failed", "cancelled"]}
    [delivery] = found["items"]
    assert delivery["status"] == "succeeded"
    assert delivery["event"] == "succeeded"
    assert (delivery["attempts"], delivery["last_status_code"], delivery["last_error"]) == (1, 200, None)
    assert delivery["delivered_at"] is not None
    assert delivery["next_attempt_at"] is None

    [request] = receiver.at("/ok")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("app-webhooks/")
    assert request.headers["X-Webhook-Id"] == delivery["id"]
    assert verify_webhook(secret.json()["secret"], request.headers, request.body)
    assert not verify_webhook(secret.json()["secret"], request.headers, request.body + b" ")
    payload = json.loads(request.body)
    assert payload["id"] == delivery["id"]
    assert payload["event"] == "task.succeeded"
    assert payload["task"] == api.get(f"/api/v1/tasks/{task_id}").json()


def test_only_the_ends_asked_for_are_told(api: httpx.Client, receiver: Receiver) -> None:
    quiet = submit(api, {"url": receiver.url("/quiet"), "events": ["succeeded"]}, steps=2, fail_at_step=1)
    told = submit(api, {"url": receiver.url("/told"), "events": ["failed"]}, steps=2, fail_at_step=1)
    assert ended(api, quiet)["status"] == "failed"
    # The delivery is written with the end, in one transaction: none now means none ever.
    assert deliveries(api, quiet)["items"] == []
    [delivery] = settled(api, told)["items"]
    assert (delivery["event"], delivery["status"]) == ("failed", "succeeded")
    assert json.loads(receiver.at("/told")[0].body)["task"]["status"] == "failed"
    assert receiver.at("/quiet") == []


def test_a_cancelled_task_is_told(api: httpx.Client, receiver: Receiver) -> None:
    # Long tasks first, so that the last one is usually still queued when it is cancelled (MAX_RUNNING_PER_USER):
    # cancelled at once by the request. Running, it is cancelled by its worker at its next step: told the same.
    # 500 ms steps: a task that ran its 100 steps at once (step_ms 0) ended before it saw the cancel (succeeded).
    long = {"steps": 100, "step_ms": 500}
    blockers = [submit(api, {"url": receiver.url("/blocker"), "events": ["failed"]}, **long) for _ in range(4)]
    task_id = submit(api, {"url": receiver.url("/cancelled"), "events": ["cancelled"]}, **long)
    cancelled = api.post(f"/api/v1/tasks/{task_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    for blocker in blockers:
        api.post(f"/api/v1/tasks/{blocker}/cancel")
    [delivery] = settled(api, task_id)["items"]
    assert (delivery["event"], delivery["status"]) == ("cancelled", "succeeded")
    assert json.loads(receiver.at("/cancelled")[0].body)["event"] == "task.cancelled"
    assert receiver.at("/blocker") == []


def test_failed_tries_are_retried_with_the_same_id_until_one_succeeds(api: httpx.Client, receiver: Receiver) -> None:
    receiver.answers["/flaky"] = [500, 503]
    secret = api.get("/api/v1/users/me/webhook-secret").json()["secret"]
    task_id = submit(api, {"url": receiver.url("/flaky")})
    [delivery] = settled(api, task_id)["items"]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 3, 200)
    tries = receiver.at("/flaky")
    assert len(tries) == 3
    assert {t.headers["X-Webhook-Id"] for t in tries} == {delivery["id"]}
    assert all(verify_webhook(secret, t.headers, t.body) for t in tries)
    assert len({t.body for t in tries}) == 1


def test_a_receiver_that_keeps_failing_is_given_up_and_shown(live_server: LiveServer, receiver: Receiver) -> None:
    receiver.answers["/down"] = [500] * 10
    with httpx.Client(base_url=live_server.url, timeout=20) as browser:
        identity = sign_up(browser)
        with httpx.Client(base_url=live_server.url, timeout=20) as api:
            login = {"username": identity["username"], "password": PASSWORD}
            token = api.post("/api/v1/auth/login", json=login).json()["access_token"]
            api.headers["Authorization"] = f"Bearer {token}"
            task_id = submit(api, {"url": receiver.url("/down")})
            [delivery] = settled(api, task_id)["items"]
        assert (delivery["status"], delivery["attempts"]) == ("failed", 1 + len(get_settings().webhook_retry_delays))
        assert delivery["last_status_code"] == 500
        assert delivery["last_error"] == "HTTP 500: nope!"
        assert delivery["next_attempt_at"] is None
        assert delivery["delivered_at"] is None
        assert len(receiver.at("/down")) == delivery["attempts"]
        page = browser.get(f"/tasks/{task_id}")
        assert page.status_code == 200
        assert f"127.0.0.1:{receiver.port}" in page.text
        assert "HTTP 500: nope!" in page.text
        assert 'class="delivery delivery-failed"' in page.text


def test_redirects_are_not_followed(api: httpx.Client, receiver: Receiver) -> None:
    receiver.answers["/moved"] = [302] * 10
    task_id = submit(api, {"url": receiver.url("/moved")})
    [delivery] = settled(api, task_id)["items"]
    assert (delivery["status"], delivery["last_status_code"]) == ("failed", 302)
    assert "redirects are not followed" in delivery["last_error"]
    assert receiver.at("/redirected") == []


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(api: httpx.Client, receiver: Receiver) -> None:
    # `localhost` is not an allowed host (127.0.0.1 is, as written): it resolves to loopback, so no request.
    task_id = submit(api, {"url": receiver.url("/local", host="localhost")})
    [delivery] = settled(api, task_id)["items"]
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 1  # refused, not retried: another try would be refused too
    assert delivery["last_status_code"] is None
    assert "internal address" in delivery["last_error"]
    assert receiver.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://127.0.0.2/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://0177.0.0.1/hook",
        "http://127.1/hook",
        "http://224.0.0.1/hook",
        "http://100.64.0.1/hook",
    ],
)
def test_internal_addresses_are_refused_at_submission(api: httpx.Client, url: str) -> None:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": {}, "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == ["webhook.url"]
    assert api.get("/api/v1/tasks").json()["total"] == 0


@pytest.mark.parametrize(
    "webhook",
    [
        {"url": "https://example.com/" + "a" * 2000},
        {"url": "ftp://example.com/hook"},
        {"url": "file:///etc/passwd"},
        {"url": "https://user:secret@example.com/hook"},
        {"url": "https://user@example.com/hook"},
        {"url": "https://example.com/a\u0000b"},
        {"url": "https://exa mple.com/hook"},
        {"url": "https:///hook"},
        {"url": "https://example.com:99999/hook"},
        {"url": "not a url"},
        {"url": ""},
        {"url": "https://example.com/hook", "events": []},
        {"url": "https://example.com/hook", "events": ["started"]},
        {"url": "https://example.com/hook", "secret": "mine"},
        {"url": 42},
        {"events": ["failed"]},
    ],
)
def test_bad_webhooks_are_a_4xx_and_write_nothing(api: httpx.Client, webhook: dict[str, Any]) -> None:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": {}, "webhook": webhook})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert api.get("/api/v1/tasks").json()["total"] == 0


def test_only_the_owner_reads_deliveries_and_the_secret_is_the_account_s(
    api: httpx.Client, live_server: LiveServer, receiver: Receiver
) -> None:
    task_id = submit(api, {"url": receiver.url("/mine")})
    settled(api, task_id)
    with httpx.Client(base_url=live_server.url, timeout=20) as other:
        other.headers.update(signed_in_headers(other))
        assert other.get(f"/api/v1/tasks/{task_id}/webhook-deliveries").status_code == 404
        assert other.get("/api/v1/users/me/webhook-secret").json() != api.get("/api/v1/users/me/webhook-secret").json()
    made = api.post("/api/v1/users/me/tokens", json={"name": "reader", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    with httpx.Client(base_url=live_server.url, timeout=20) as script:
        script.headers["Authorization"] = f"Bearer {made.json()['token']}"
        assert script.get(f"/api/v1/tasks/{task_id}/webhook-deliveries").status_code == 200
        assert script.get("/api/v1/users/me/webhook-secret").status_code == 403
        assert script.post("/api/v1/users/me/webhook-secret").status_code == 403


def test_a_rotated_secret_signs_what_comes_after(api: httpx.Client, receiver: Receiver) -> None:
    first = api.get("/api/v1/users/me/webhook-secret").json()
    rotated = api.post("/api/v1/users/me/webhook-secret")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != first["secret"]
    assert api.get("/api/v1/users/me/webhook-secret").json() == rotated.json()
    task_id = submit(api, {"url": receiver.url("/rotated")})
    settled(api, task_id)
    [request] = receiver.at("/rotated")
    assert verify_webhook(rotated.json()["secret"], request.headers, request.body)
    assert not verify_webhook(first["secret"], request.headers, request.body)


def test_concurrent_first_uses_make_one_secret(api: httpx.Client) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: api.get("/api/v1/users/me/webhook-secret"), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert len({a.json()["secret"] for a in answers}) == 1


def test_a_task_without_a_webhook_has_an_empty_log(api: httpx.Client) -> None:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 1, "step_ms": 0}})
    task_id = response.json()["id"]
    ended(api, task_id)
    assert deliveries(api, task_id) == {"webhook": None, "items": []}


def deployment(**changes: Any) -> Settings:
    """Settings as deployed: https only, no host exempt from the address rules."""
    base = msgspec.structs.replace(get_settings(), webhook_allow_http=False, webhook_allowed_hosts="")
    return msgspec.structs.replace(base, **changes)


def test_the_address_rules_as_deployed() -> None:
    settings = deployment()
    assert url_problem("https://hooks.example.com/x", settings) is None
    assert url_problem("http://hooks.example.com/x", settings) == "must be an https:// URL"
    assert url_problem("https://127.0.0.1:8443/x", settings) is not None
    assert url_problem("https://[::ffff:10.1.2.3]/x", settings) is not None
    assert url_problem("https://localhost/x", settings) is None  # a name: resolved and refused at delivery
    allowed = deployment(webhook_allowed_hosts="10.1.2.3, hooks.internal")
    assert url_problem("https://10.1.2.3/x", allowed) is None
    assert url_problem("https://10.1.2.4/x", allowed) is not None
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("hooks.example.com") is None
    for address in ("93.184.216.34", "2606:2800:220:1::1"):
        assert public(ipaddress.ip_address(address))
    for address in ("::ffff:192.168.0.1", "2002:7f00:1::1", "::", "ff02::1", "198.18.0.1", "240.0.0.1"):
        assert not public(ipaddress.ip_address(address))


@pytest.mark.services
def test_a_worker_killed_mid_delivery_loses_nothing(migrated: None, receiver: Receiver) -> None:
    """SIGKILL of the mail worker while the receiver holds its request; a new worker and the sweep send it again."""
    receiver.hold.add("/held")
    settings = {"WEBHOOK_TIMEOUT_SECONDS": "8"}  # the try outlives the kill: the lease (8 + 5 s) is what runs out
    with redis_server() as broker, stack(broker.url, settings=settings, split=True) as services:
        with user_client(services.url) as api:
            task_id = submit(api, {"url": receiver.url("/held")})
            eventually(lambda: receiver.at("/held"), timeout=60, what="the first try to arrive")
            [mailer] = services.others
            mailer.stop(signal.SIGKILL, timeout=10)
            receiver.release.set()
            [held] = deliveries(api, task_id)["items"]
            assert (held["status"], held["attempts"]) == ("delivering", 1)
            services.start_other_worker(("mail", "maintenance"))

            def resent() -> dict[str, Any] | None:
                send_message(broker.url, "webhooks.send_due")  # the scheduler's half-minute sweep, by hand
                [delivery] = deliveries(api, task_id)["items"]
                return delivery if delivery["status"] == "succeeded" else None

            delivery = eventually(resent, timeout=90, what="the delivery to be sent again", interval=1)
        assert delivery["attempts"] == 2
        tries = receiver.at("/held")
        assert len(tries) == 2
        assert tries[0].headers["X-Webhook-Id"] == tries[1].headers["X-Webhook-Id"] == delivery["id"]


async def test_the_task_page_s_delivery_log_passes_axe(
    open_tab: OpenTab, live_server: LiveServer, receiver: Receiver
) -> None:
    receiver.answers["/axe"] = [500] * 10
    tab = await open_tab()
    await with_axe(tab)
    identity = await browser_sign_up(tab.page)
    with httpx.Client(base_url=live_server.url, timeout=20) as api:
        login = {"username": identity["username"], "password": PASSWORD}
        api.headers["Authorization"] = f"Bearer {api.post('/api/v1/auth/login', json=login).json()['access_token']}"
        task_id = submit(api, {"url": receiver.url("/axe")})
        settled(api, task_id)
    await tab.page.goto(f"/tasks/{task_id}")
    assert "Webhook" in await tab.page.locator("#webhook-heading").inner_text()
    assert await violations(tab.page, "/tasks/<id> (webhook deliveries)") == []
