"""One API document, the same wherever it is read: served at /schema, exported by `litestar schema openapi`.

Litestar builds the document from the handlers (summary, description, `raises=`,
`responses=`, `response_headers=`) the first time it is asked for it, by its OpenAPI
plugin. `create_app` gives that plugin the class below, which completes the document as
it builds it, so the document is the same whether it is served or exported by the CLI
(which never runs start-up hooks), and a process that is never asked for it never builds
it (0.2 s of CPU and 7 MiB a process); docs/openapi.json is a copy that CI compares
(tests/test_openapi_document.py).

What this pass adds, the same way for every operation:

- errors: Litestar describes `raises=[...]` with its own default error body; the
  service answers RFC 9457 problem details (app.web.http.errors), so every error response
  points at one `Problem` schema as `application/problem+json`, with an example. A
  status the handler documents itself with `responses=` (the 503 of /health/ready)
  keeps its own body.
- the 413 of every operation with a body (app.web.http.input_guards) and the 503 of
  every operation under /api while the database is out of reach;
- an example on every component schema (app.web.api.openapi_examples);
- the headers of an operation's success response on its other 2xx answers (the
  `Location` of a task, whether it was started now or by an earlier request with the
  same Idempotency-Key).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Example,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    Schema,
)
from litestar.openapi.spec.base import BaseSchemaObject
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute

from app.web.http.input_guards import MAX_BODY_BYTES

PROBLEM = "application/problem+json"
PROBLEM_REFERENCE = Reference(ref="#/components/schemas/Problem")

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    title="Problem",
    description="RFC 9457 problem details: the body of every error answer under /api.",
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="A URI naming the problem; `about:blank` if none."),
        "title": Schema(type=OpenAPIType.STRING, description="The status code's phrase."),
        "status": Schema(type=OpenAPIType.INTEGER, description="The HTTP status code."),
        "detail": Schema(type=OpenAPIType.STRING, description="What went wrong, for a person to read."),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            description="For invalid input: each field and what is wrong with it.",
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["field", "message"],
                properties={"field": Schema(type=OpenAPIType.STRING), "message": Schema(type=OpenAPIType.STRING)},
            ),
        ),
    },
    examples=[
        {
            "type": "about:blank",
            "title": "Unprocessable Entity",
            "status": 422,
            "detail": "The request is not valid: password is too short",
            "errors": [{"field": "password", "message": "must be at least 10 characters"}],
        }
    ],
)

#: What an error status means in this API, where Litestar would say only the status's generic phrase.
ERROR_MEANINGS = {
    400: "The request is malformed: a parameter or the body does not parse; `errors` names each field.",
    401: "No valid credentials: send `Authorization: Bearer <access_token>` (or, from a page, the session cookie).",
    403: "Signed in, but not allowed: this needs a superuser.",
    404: "No such resource, or not one of the caller's.",
    409: "The request conflicts with the current state of the resource.",
    422: "A field breaks a rule; `errors` names each one.",
    429: "A limit is reached; try again after `Retry-After` seconds.",
}
TOO_LARGE = f"The body is larger than {MAX_BODY_BYTES} bytes."
DATABASE_OUT_OF_REACH = (
    "The database is out of reach for the moment: try again after `Retry-After` seconds "
    "(with the same `Idempotency-Key`, a task is not started twice)."
)
#: Statuses whose answers say when to try again.
RETRY_AFTER_STATUSES = ("429", "503")


#: The 200 of GET /api/v1/events: what a stream carries (Litestar sees only `ServerSentEvent`).
EVENT_STREAM = ResponseSpec(
    str,
    media_type="text/event-stream",
    description="Server-sent events, one message per event, and a comment line every SSE_HEARTBEAT_SECONDS.",
    generate_examples=False,
    examples=[
        Example(
            summary="A progress update, a notification and a heartbeat",
            value='id: 41\nevent: task.updated\ndata: {"id": "01936b2f-1a2b-7c3d-8e4f-5a6b7c8d9e0f", '
            '"status": "running", "progress": {"current": 5, "total": 20, "percent": 25.0, '
            '"message": "Processing step 5 of 20"}, ...}\n\n'
            'id: 42\nevent: notification.created\ndata: {"id": "01936b2f-4d5e-7f60-8a1b-2c3d4e5f6a7b", '
            '"category": "task", "title": "Task completed", ...}\n\n'
            ": keep-alive\n\n",
        )
    ],
)


@dataclass
class ResultDownload(Operation):
    """GET /api/v1/tasks/{id}/result: a file export as a download, or the task's result JSON.

    The handler returns either a File or a Response, which Litestar cannot describe from
    the annotation: this says both, with the download's media types and header.
    """

    def __post_init__(self) -> None:
        self.responses = dict(self.responses or {})
        self.responses["200"] = OpenAPIResponse(
            description="A task with a file (an export) answers the file as a download (`Content-Disposition: "
            "attachment`), as CSV or JSON like the export's `format`; a task without one answers its result JSON.",
            headers={
                "Content-Disposition": OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING),
                    description='Only for a file: `attachment; filename="<dataset>-<time>.<format>"`.',
                )
            },
            content={
                "text/csv": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, content_media_type="text/csv"),
                    example="id,kind,title,status,created_at\r\n01936b2f-1a2b-7c3d-8e4f-5a6b7c8d9e0f,demo,Demo,"
                    "succeeded,2026-11-22T10:00:00Z\r\n",
                ),
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        one_of=[
                            Schema(type=OpenAPIType.OBJECT, additional_properties=Schema()),
                            Schema(type=OpenAPIType.ARRAY, items=Schema()),
                        ]
                    ),
                    examples={
                        "result": Example(summary="The result of a task without a file", value={"steps": 20}),
                        "export": Example(
                            summary="A JSON export",
                            value=[{"id": "01936b2f-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "kind": "demo", "title": "Demo"}],
                        ),
                    },
                ),
            },
        )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_example(status: int, detail: str) -> dict[str, Any]:
    """A problem body as app.web.http.errors writes one for `status`."""
    body: dict[str, Any] = {"type": "about:blank", "title": _phrase(status), "status": status, "detail": detail}
    if status in (400, 422):
        body["errors"] = [{"field": "body", "message": "is invalid"}]
    return body


def problem_response(status: int, description: str) -> OpenAPIResponse:
    """An error answer of `status`: a Problem, with an example (and `Retry-After` where it applies)."""
    headers: dict[str, OpenAPIHeader | Reference] | None = (
        {"Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="Seconds to wait.")}
        if str(status) in RETRY_AFTER_STATUSES
        else None
    )
    return OpenAPIResponse(
        description=description,
        headers=headers,
        content={
            PROBLEM: OpenAPIMediaType(
                schema=PROBLEM_REFERENCE,
                examples={
                    _phrase(status).lower().replace(" ", "-"): Example(value=problem_example(status, description))
                },
            )
        },
    )


def _operations(openapi: OpenAPI) -> Iterator[tuple[str, Operation]]:
    for path, path_item in (openapi.paths or {}).items():
        for operation in (path_item.get, path_item.post, path_item.put, path_item.patch, path_item.delete):
            if operation is not None:
                yield path, operation


def _self_documented(app: Litestar) -> dict[str, set[str]]:
    """Operation id -> the statuses its handler describes itself with `responses=`."""
    declared: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if isinstance(handler.operation_id, str) and handler.responses:
                    declared[handler.operation_id] = {str(status) for status in handler.responses}
    return declared


def _describe_errors(operation: Operation, own: set[str]) -> None:
    """Every error answer Litestar described with its default body becomes a Problem."""
    for status, response in (operation.responses or {}).items():
        if status[:1] not in ("4", "5") or status in own or not isinstance(response, OpenAPIResponse):
            continue
        code = int(status)
        generic = not response.description or response.description == HTTPStatus(code).description
        description = ERROR_MEANINGS.get(code, response.description) if generic else response.description
        operation.responses[status] = problem_response(code, description)  # type: ignore[index]


def _add_common_errors(path: str, operation: Operation) -> None:
    responses = operation.responses if operation.responses is not None else {}
    if operation.request_body is not None:  # app.web.http.input_guards
        responses.setdefault("413", problem_response(413, TOO_LARGE))
    if path.startswith("/api/"):
        responses.setdefault("503", problem_response(503, DATABASE_OUT_OF_REACH))
    operation.responses = responses


def _share_success_headers(operation: Operation) -> None:
    """The headers of the first success answer also on the others (which Litestar leaves without)."""
    successes = [r for s, r in (operation.responses or {}).items() if s[:1] == "2" and isinstance(r, OpenAPIResponse)]
    headers = next((response.headers for response in successes if response.headers), None)
    for response in successes:
        if not response.headers and headers:
            response.headers = dict(headers)


@dataclass
class VerbatimExample(BaseSchemaObject):
    """An example object written as it is: Litestar's serializer drops every null from a dict it
    writes, which would make an example miss the nullable fields its schema requires."""

    value: dict[str, Any]

    def to_schema(self) -> dict[str, Any]:
        return dict(self.value)


def _add_examples(schemas: dict[str, Schema], examples: Mapping[str, Any]) -> None:
    for schema in schemas.values():
        if schema.title is not None and schema.title in examples and not schema.examples:
            schema.examples = [VerbatimExample(examples[schema.title])]


class CompletingOpenAPIPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, whose document is completed (see the module's docstring) as it is built."""

    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        from app.web.api.openapi_examples import schema_examples  # imports every API module

        openapi = super()._build_openapi()
        complete_document(self.app, openapi, schema_examples())
        return openapi


def complete_when_built(app: Litestar) -> None:
    """Have the app's API document completed when it is first asked for.

    Litestar adds its own OpenAPI plugin to every app it builds, with no hook to finish the
    document it makes; the instance is given the subclass above (same slots, nothing else
    of it changes), so its routes (/schema) and `app.openapi_schema` both build through it.
    """
    app.plugins.get(OpenAPIPlugin).__class__ = CompletingOpenAPIPlugin


def complete_document(app: Litestar, openapi: OpenAPI, examples: Mapping[str, Any]) -> None:
    """Finish the app's API document `openapi`: see the module's docstring."""
    schemas = openapi.components.schemas if openapi.components.schemas is not None else {}
    schemas["Problem"] = PROBLEM_SCHEMA
    openapi.components.schemas = schemas
    _add_examples(schemas, examples)
    self_documented = _self_documented(app)
    for path, operation in _operations(openapi):
        _describe_errors(operation, self_documented.get(operation.operation_id or "", set()))
        _add_common_errors(path, operation)
        _share_success_headers(operation)
