"""Emailed links: the token rides in the path, older `?token=` links still work, and no log line holds either.

The service here is started by the test with every log switched on (DEBUG, which also
prints each job's arguments, and granian's own access log), so that a token written
anywhere would be found; in services mode with a worker on a redis-server of its own, so
that the jobs (and their log lines) are this test's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.accounts import PASSWORD, new_identity, token_from_mail
from tests.processes import eventually, redis_server
from tests.servers import BIN, STARTUP_TIMEOUT, Process, free_port, spawn, start_worker, stop_all
from tests.smtp import SmtpServer

ROOT = Path(__file__).resolve().parents[1]
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


@contextlib.contextmanager
def verbose_service(mode: str) -> Iterator[tuple[str, list[Process]]]:
    """The web process (and, in services mode, a worker) logging everything; yields its URL and processes."""
    with contextlib.ExitStack() as stack:
        env = {"LOG_LEVEL": "DEBUG"}
        if mode == "services":
            env["REDIS_URL"] = stack.enter_context(redis_server()).url
        port = free_port()
        command = [str(BIN / "litestar"), "run", "--host", "127.0.0.1", "--port", str(port), "--granian-access-log"]
        processes = [spawn("web", command, ROOT, env)]
        if mode == "services":
            processes.append(start_worker(ROOT, env))
        url = f"http://127.0.0.1:{port}"
        try:

            def ready() -> bool:
                assert processes[0].popen.poll() is None, processes[0].output()[-4000:]
                try:
                    return httpx.get(url + "/health/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(ready, timeout=STARTUP_TIMEOUT, what="the verbose service", interval=0.2)
            yield url, processes
        finally:
            stop_all(processes)


def register(client: httpx.Client) -> dict[str, str]:
    identity = new_identity()
    assert client.post("/api/v1/auth/register", json=identity).status_code == 201
    return identity


@pytest.mark.usefixtures("migrated")
def test_links_work_by_path_and_by_query_and_no_log_line_holds_their_tokens(mode: str, smtp: SmtpServer) -> None:
    with verbose_service(mode) as (url, processes), httpx.Client(base_url=url, timeout=20) as browser:
        ada, bob = register(browser), register(browser)
        first = token_from_mail(smtp, ada["email"], "/verify-email")
        received = smtp.wait_for(lambda m: ada["email"] in m.rcpt_tos and "/verify-email/" in m.text)
        assert f"/verify-email/{first}\r\n" in received.text  # the path form is what is sent now

        by_path = browser.get(f"/verify-email/{first}")
        assert by_path.status_code == 200, by_path.text
        assert "is verified" in by_path.text
        assert by_path.headers["referrer-policy"] == "no-referrer"
        second = token_from_mail(smtp, bob["email"], "/verify-email")
        by_query = browser.get("/verify-email", params={"token": second})  # a link from an older email
        assert by_query.status_code == 200, by_query.text
        assert "is verified" in by_query.text

        assert browser.post("/api/v1/auth/forgot-password", json={"email": ada["email"]}).status_code == 202
        reset = token_from_mail(smtp, ada["email"], "/reset-password")
        form = browser.get(f"/reset-password/{reset}")
        assert form.status_code == 200
        assert f'name="token" value="{reset}"' in form.text  # handed on in the POST body
        assert form.headers["referrer-policy"] == "no-referrer"
        assert f'name="token" value="{reset}"' in browser.get("/reset-password", params={"token": reset}).text
        csrf = CSRF.search(form.text)
        assert csrf, form.text
        data = {"token": reset, "password": "a brand new passphrase", "_csrf_token": csrf.group(1)}
        done = browser.post("/reset-password", data=data, follow_redirects=False)
        assert done.status_code == 303, done.text
        again = browser.post("/api/v1/auth/login", json={"username": ada["username"], "password": PASSWORD})
        assert again.status_code == 401  # the new password is set
        browser.get(f"/verify-email/{reset}")  # a used token, in a 400 page's path

        logs = "\n".join(process.output() for process in processes)
    for token in (first, second, reset):
        assert token not in logs, [line for line in logs.splitlines() if token in line]
    assert re.search(r"/verify-email/\[redacted\]", logs), logs[-3000:]  # the access log has the requests
    assert "[redacted]" in logs.split("/reset-password", 1)[1]
