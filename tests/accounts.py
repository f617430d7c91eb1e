"""Signing up and in through the API, for tests that need a user."""

from __future__ import annotations

import uuid
from typing import Any

PASSWORD = "correct horse battery"


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
