"""Signing up and in through the API, reading account emails and running the operators' CLI, for tests."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.smtp import SmtpServer

PASSWORD = "correct horse battery"
ROOT = Path(__file__).resolve().parents[1]
LITESTAR = Path(sys.executable).parent / "litestar"


def new_identity() -> dict[str, str]:
    name = f"u{uuid.uuid4().hex[:10]}"
    return {"email": f"{name}@example.com", "username": name, "password": PASSWORD}


def signed_in_headers(client: Any) -> dict[str, str]:
    """Register a fresh user with `client` (httpx or Litestar TestClient, base URL = service root) and sign in."""
    identity = new_identity()
    created = client.post("/api/v1/auth/register", json=identity)
    assert created.status_code == 201, created.text
    tokens = client.post("/api/v1/auth/login", json={"username": identity["username"], "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def token_from_mail(smtp: SmtpServer, to: str, path: str) -> str:
    """The token in the first email to `to` with a link to `path` (e.g. "/reset-password"), waiting for it."""
    received = smtp.wait_for(lambda m: to.lower() in m.message["To"].lower() and path in m.text, timeout=15)
    link = re.search(r"https?://\S+" + re.escape(path) + r"(/[^\s/?#]+|\?token=\S+)", received.text)
    assert link, received.text
    if link.group(1).startswith("/"):  # the token in the path, as links are sent now
        return unquote(link.group(1)[1:])
    return parse_qs(urlsplit(link.group(0)).query)["token"][0]


def litestar_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `litestar ARGS...` from the repository root with this run's environment, as an operator would."""
    return subprocess.run(
        [str(LITESTAR), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def operator_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`litestar users|tasks|audit ARGS...` run in this process: the same commands, without starting Python again.

    A `litestar` process costs a couple of seconds of CPU to import everything; the tests run the
    operators' commands dozens of times. `litestar_cli` runs the real program, and
    tests/test_accounts_cli.py shows both groups are on it. The command runs in a thread of its
    own (it calls asyncio.run, which a running event loop, an async test's, forbids), with the
    settings read again from this environment plus `env`, and its output is captured like a
    process's: stdout, stderr and an exit code (a traceback on stderr if it raised).
    """
    import traceback
    from concurrent.futures import ThreadPoolExecutor

    from click.testing import CliRunner

    from app.config import get_settings
    from app.web.cli import audit, schedules, tasks, users

    groups = {"users": users, "tasks": tasks, "audit": audit, "schedules": schedules}
    assert args, "operator_cli runs a `users`, `tasks`, `audit` or `schedules` command"
    assert args[0] in groups, f"operator_cli runs `users`, `tasks`, `audit` and `schedules` commands, not {args[0]}"

    def run() -> subprocess.CompletedProcess[str]:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(groups[args[0]], list(args[1:]), env=env, prog_name=f"litestar {args[0]}")
        finally:
            get_settings.cache_clear()
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            assert result.exc_info is not None
            stderr += "".join(traceback.format_exception(*result.exc_info))
        return subprocess.CompletedProcess(["litestar", *args], result.exit_code, result.stdout, stderr)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(timeout=120)
