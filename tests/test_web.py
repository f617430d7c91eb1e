"""The web app's cross-cutting behaviour: problem details, headers, static files, OpenAPI, metrics."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.web.app import create_app
from tests.accounts import signed_in_headers


@pytest.fixture(scope="module")
def client(migrated: None) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def auth(client: TestClient[Litestar]) -> dict[str, str]:
    return signed_in_headers(client)


def test_liveness(client: TestClient[Litestar]) -> None:
    response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_api_path_is_a_problem_document(client: TestClient[Litestar]) -> None:
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"
    assert body["status"] == 404
    assert isinstance(body["detail"], str)
    assert body["detail"]


def test_validation_problem_names_the_field(client: TestClient[Litestar], auth: dict[str, str]) -> None:
    response = client.get("/api/v1/events", params={"last_event_id": "yesterday"}, headers=auth)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == 400
    assert any(error["field"] == "last_event_id" for error in body["errors"]), body


def test_bad_last_event_id_header_is_a_400(client: TestClient[Litestar], auth: dict[str, str]) -> None:
    response = client.get("/api/v1/events", headers={"Last-Event-ID": "-3", **auth})
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "Last-Event-ID", "message": "must be >= 0"}]


def test_page_errors_are_html_pages(client: TestClient[Litestar]) -> None:
    response = client.get("/no-such-page", headers={"accept": "text/html"})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "404 · Not Found" in response.text


def test_security_headers(client: TestClient[Litestar]) -> None:
    response = client.get("/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"


def test_home_page_loads_only_same_origin_assets_without_inline_script(client: TestClient[Litestar]) -> None:
    html = client.get("/").text
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not url.startswith(("http:", "https:", "//")), url
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script found"


def test_request_id_is_echoed_or_made(client: TestClient[Litestar]) -> None:
    assert client.get("/health/live", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health/live", headers={"x-request-id": "bad id with spaces"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_static_files_have_hashed_names_and_are_immutable(client: TestClient[Litestar]) -> None:
    html = client.get("/").text
    css = re.search(r'href="(/static/app\.[0-9a-f]{12}\.css)"', html)
    htmx = re.search(r'src="(/static/vendor/htmx\.min\.[0-9a-f]{12}\.js)"', html)
    assert css, html
    assert htmx, html
    response = client.get(css.group(1))
    assert response.status_code == 200
    assert "immutable" in response.headers["cache-control"]
    assert "max-age=31536000" in response.headers["cache-control"]
    assert client.get("/static/app.000000000000.css").status_code == 404


def test_responses_are_compressed(client: TestClient[Litestar]) -> None:
    response = client.get("/schema/openapi.json", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["openapi"].startswith("3.1")  # the client inflated it


def test_openapi_document(client: TestClient[Litestar]) -> None:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    operations = [op for path in document["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert operations
    for operation in operations:
        assert operation.get("operationId"), operation
        assert operation.get("summary"), operation
    assert all(path.startswith(("/api/", "/health/")) for path in document["paths"]), list(document["paths"])
    # Problems, descriptions, examples and drift: tests/test_openapi_document.py.


def test_interactive_docs_load_from_this_origin(client: TestClient[Litestar]) -> None:
    response = client.get("/schema")
    assert response.status_code == 200
    for url in re.findall(r'(?:src|href)="([^"]+)"', response.text):
        assert url.startswith("/static/"), url
        assert client.get(url).status_code == 200


def test_metrics(client: TestClient[Litestar]) -> None:
    client.get("/api/v1/no-such-thing")
    text = client.get("/metrics").text
    assert "app_requests_total" in text
    assert "app_sse_connections" in text


def test_cors_is_off_by_default(client: TestClient[Litestar]) -> None:
    response = client.options(
        "/health/live", headers={"origin": "https://elsewhere.example", "access-control-request-method": "GET"}
    )
    assert "access-control-allow-origin" not in response.headers
