"""The committed API document makes a working client: generated with openapi-python-client, then used.

A document can validate and still be unusable: an operation a generator cannot type, a body
it cannot build, a response it decodes into the wrong model. Here the generator's typed
client (attrs models, one module per operation) signs up, signs in, starts a task, follows
it to its end and lists it, against the real service.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.accounts import new_identity
from tests.servers import BIN, LiveServer

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "openapi.json"
PACKAGE = "service_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The client package generated from docs/openapi.json, importable for the module's tests."""
    where = tmp_path_factory.mktemp("client")
    result = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(DOCUMENT),
            "--meta",
            "none",
            "--output-path",
            str(where / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=where,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The generator says "Warning" for every part of the document it had to skip or could not type.
    assert "Warning" not in output, output
    _import_unset_where_used(where / PACKAGE)
    sys.path.insert(0, str(where))
    try:
        yield PACKAGE
    finally:
        sys.path.remove(str(where))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _import_unset_where_used(package: Path) -> None:
    """Work around openapi-python-client issue 1451 (open; fix proposed in its pull request 1478).

    For a required body with several media types (sign-in takes JSON or a form) it writes
    `body: ... | Unset = UNSET` without importing `Unset`, and the module fails to import.
    """
    for module in package.rglob("*.py"):
        code = module.read_text()
        if re.search(r"\bUnset\b", code) and not re.search(r"^from \.+types import .*\bUnset\b", code, re.M):
            module.write_text(re.sub(r"^(from \.+types import .*)$", r"\1, Unset", code, count=1, flags=re.M))


def part(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generated_client_runs_a_task_from_sign_up_to_its_result(generated: str, live_server: LiveServer) -> None:
    client_module, models = part("client"), part("models")
    identity = new_identity()
    anonymous: Any = client_module.Client(base_url=live_server.url, timeout=20)

    created = part("api.auth.register").sync_detailed(client=anonymous, body=models.Registration(**identity))
    assert created.status_code == 201, created.content
    assert isinstance(created.parsed, models.UserOut)
    assert created.parsed.username == identity["username"]

    body = models.LoginJsonBody(username=identity["username"], password=identity["password"])
    tokens = part("api.auth.login").sync(client=anonymous, body=body)
    assert isinstance(tokens, models.TokenPair), tokens
    signed_in: Any = client_module.AuthenticatedClient(base_url=live_server.url, token=tokens.access_token, timeout=20)

    request = models.TaskRequest(
        kind="demo", title="From the generated client", params=models.TaskRequestParams.from_dict({"steps": 2})
    )
    started = part("api.tasks.create_task").sync_detailed(client=signed_in, body=request)
    assert started.status_code == 202, started.content
    task = started.parsed
    assert isinstance(task, models.TaskOut)
    assert started.headers["location"].endswith(str(task.id))

    get_task = part("api.tasks.get_task")
    deadline = time.monotonic() + 60
    while (current := get_task.sync(task.id, client=signed_in)).status in ("queued", "running"):
        assert time.monotonic() < deadline, current
        time.sleep(0.2)
    assert isinstance(current, models.TaskOut)
    assert current.status == "succeeded", current
    assert current.result.to_dict() == {"steps": 2}

    page = part("api.tasks.list_tasks").sync(client=signed_in)
    assert isinstance(page, models.CursorPageTaskOut), page
    assert [item.id for item in page.items] == [task.id]
    assert page.next_cursor is None

    # An error decodes into the document's Problem model, not a bare response.
    missing = get_task.sync_detailed(uuid.UUID(int=0), client=signed_in)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Problem)
    assert missing.parsed.status == 404
