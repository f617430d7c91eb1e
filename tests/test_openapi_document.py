"""One API document everywhere: served at /schema/openapi.json, exported by the CLI, committed.

`litestar schema openapi` builds the app without starting it; the live server serves the
document of a started app; docs/openapi.json is what clients read without running the
service. All three must be the same bytes' worth of JSON, in either mode (nothing of the
mode may leak into the document), and the document must be complete: a description of
every operation, a Problem for every error under /api, an example of every body, and a
valid OpenAPI 3.1 document that a generic client library (schemathesis) accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import schemathesis

from app.web.api.openapi_examples import schema_examples
from tests.accounts import ROOT, litestar_cli
from tests.servers import LiveServer

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "uv run litestar schema openapi --output docs/openapi.json"
METHODS = ("get", "put", "post", "delete", "patch")
PROBLEM_REF = "#/components/schemas/Problem"
DOCUMENT_URI = "urn:jobs-api:openapi"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """What `litestar schema openapi` writes, run as an operator would."""
    output: Path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    run = litestar_cli("schema", "openapi", "--output", str(output))
    assert run.returncode == 0, run.stdout + run.stderr
    return output.read_bytes()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_bytes())
    return loaded


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def test_the_committed_document_is_what_the_cli_exports(exported: bytes) -> None:
    assert exported == COMMITTED.read_bytes(), (
        f"docs/openapi.json differs from the app's API document: regenerate it with `{REGENERATE}` and commit it"
    )


def test_the_served_document_is_the_exported_one(live_server: LiveServer, exported: bytes) -> None:
    served = httpx.get(f"{live_server.url}/schema/openapi.json", timeout=20)
    assert served.status_code == 200
    assert served.json() == json.loads(exported)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema


def test_every_operation_has_an_id_a_summary_and_a_description(document: dict[str, Any]) -> None:
    undescribed = [
        f"{method.upper()} {path}"
        for path, method, operation in operations(document)
        if not (operation.get("operationId") and operation.get("summary") and operation.get("description"))
    ]
    assert not undescribed


def test_every_error_under_api_is_a_problem(document: dict[str, Any]) -> None:
    wrong = []
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if path.startswith("/api/") and status[:1] in ("4", "5"):
                content = response.get("content", {})
                media = content.get("application/problem+json", {})
                if list(content) != ["application/problem+json"] or media.get("schema") != {"$ref": PROBLEM_REF}:
                    wrong.append(f"{method.upper()} {path} {status}")
    assert not wrong
    assert set(document["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail"}


def test_every_api_operation_documents_the_database_outage_and_bodies_their_size(document: dict[str, Any]) -> None:
    for path, _method, operation in operations(document):
        if path.startswith("/api/"):
            assert "Retry-After" in operation["responses"]["503"]["headers"]
        if "requestBody" in operation:
            assert "413" in operation["responses"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        resolved: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return resolved
    return schema


def _has_example(document: dict[str, Any], media: dict[str, Any]) -> bool:
    """An example on the media type itself, or on its schema (through a $ref, array items or a nullable oneOf)."""
    if media.get("example") is not None or media.get("examples"):
        return True
    pending = [media.get("schema", {})]
    while pending:
        schema = _resolve(document, pending.pop())
        if schema.get("examples"):
            return True
        pending.extend(schema.get("oneOf", []))
        if isinstance(schema.get("items"), dict):
            pending.append(schema["items"])
    return False


def test_every_body_has_an_example(document: dict[str, Any]) -> None:
    missing = []
    for path, method, operation in operations(document):
        bodies = {"request": operation.get("requestBody", {})} | operation["responses"]
        for name, body in bodies.items():
            for media_type, media in body.get("content", {}).items():
                if not _has_example(document, media):
                    missing.append(f"{method.upper()} {path} {name} {media_type}")
    assert not missing


def test_every_component_has_an_example_that_fits_its_schema(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    assert {name for name, schema in components.items() if not schema.get("examples")} == set()
    titles = {schema.get("title") for schema in components.values()}
    assert set(schema_examples()) <= titles, "an example names no component schema (renamed Struct?)"
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(DOCUMENT_URI, resource)
    for name, schema in components.items():
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"}, registry=registry
        )
        for example in schema["examples"]:
            errors = [error.message for error in validator.iter_errors(example)]
            assert not errors, f"the example of {name}: {errors}"


def test_what_litestar_cannot_see_is_documented(document: dict[str, Any]) -> None:
    """The repeated Idempotency-Key, the Location header, the download and the readiness 503."""
    create = document["paths"]["/api/v1/tasks"]["post"]["responses"]
    assert {"200", "202"} <= set(create)
    assert "Location" in create["202"]["headers"]
    assert "Location" in create["200"]["headers"]
    download = document["paths"]["/api/v1/tasks/{task_id}/result"]["get"]["responses"]["200"]
    assert {"text/csv", "application/json"} <= set(download["content"])
    assert "Content-Disposition" in download["headers"]
    ready = document["paths"]["/health/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    events = document["paths"]["/api/v1/events"]["get"]["responses"]["200"]
    assert list(events["content"]) == ["text/event-stream"]
