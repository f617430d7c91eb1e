"""Schemathesis against the live service's own OpenAPI document, as a signed-in user.

Every operation under /api gets a bounded number of generated requests (valid and
invalid ones: Hypothesis' random cases plus schemathesis' coverage phase, which tries
each boundary and each kind of wrong value of every parameter once); each answer must
be no 5xx, a status code the document lists, and a body and content type that match
what it says for that status. Each operation runs as a user of its own (the autouse
fixture empties the tables after every test), so an operation that ends its own
session (logout) cannot spoil another's run; the admin operations run as a superuser,
so that their input is checked too, not only their 403.

Every run draws a new seed (a fixed one tried the same cases on every run, and so never
found the huge integers and NUL characters of issue 17). The seed is printed at the start
of the module and added to any failure; `FUZZ_SEED=<seed>` replays that run (same code,
same document, same mode).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.accounts import new_identity, operator_cli
from tests.servers import LiveServer

#: Generated requests per operation (Hypothesis' generate phase; explicit examples come on top).
MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: This run's seed: FUZZ_SEED replays a run, otherwise a new one each time.
SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbelow(2**32))
REPLAY = f"replay with FUZZ_SEED={SEED} (and the same TEST_MODE)"
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"database": "none", "max-examples": MAX_EXAMPLES},
        # Besides the random cases: each boundary and each kind of invalid value of every parameter, once.
        "phases": {"coverage": {"enabled": True}},
    }
)


def served_document() -> dict[str, Any]:
    """The OpenAPI document the service serves at /schema/openapi.json, built from the app in this process.

    Built at collection time (schemathesis makes one test per operation from it); the
    first test checks that the live server serves exactly this document.
    """
    from app.web.app import create_app

    return dict(create_app().openapi_schema.to_schema())  # complete when built (app.web.api.openapi)


DOCUMENT = served_document()
# The event stream never ends by itself: a generated request would wait for ever (tests/test_live_events.py covers it).
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(operation_id="streamEvents")


@pytest.fixture(scope="module", autouse=True)
def announce_seed(request: pytest.FixtureRequest) -> None:
    """Say the seed on the terminal, past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nschema fuzz: seed {SEED}; {REPLAY}")


def test_the_live_server_serves_the_fuzzed_document(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/schema/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(DOCUMENT))


@pytest.fixture
def sign_in(live_server: LiveServer) -> Callable[[bool], dict[str, str]]:
    """Headers of a new signed-in user (made once per test): a superuser for the admin operations."""
    made: dict[bool, dict[str, str]] = {}

    def headers(superuser: bool) -> dict[str, str]:
        if superuser not in made:
            identity = new_identity()
            with httpx.Client(base_url=live_server.url, timeout=20) as client:
                assert client.post("/api/v1/auth/register", json=identity).status_code == 201
                if superuser:
                    promoted = operator_cli("users", "promote", identity["username"])
                    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
                login = {"username": identity["username"], "password": identity["password"]}
                tokens = client.post("/api/v1/auth/login", json=login)
                assert tokens.status_code == 200, tokens.text
            made[superuser] = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        return made[superuser]

    return headers


@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, live_server: LiveServer, sign_in: Callable[[bool], dict[str, str]]
) -> None:
    headers = sign_in(case.operation.path.startswith("/api/v1/admin/"))
    try:
        case.call_and_validate(base_url=live_server.url, headers=headers, checks=CHECKS, timeout=30)
    except Exception as exc:
        exc.add_note(f"schema fuzz seed {SEED}: {REPLAY}")
        raise
