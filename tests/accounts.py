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
