"""The API document says what errors look like: every 4xx/5xx is `application/problem+json`.

Litestar describes the responses of `raises=[...]` with its own default error body;
the service answers RFC 9457 problem details (see errors.py), so at start-up every
error response of the document is pointed at one `Problem` schema, and every operation
under /api gets the 503 it answers while the database is out of reach.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import OpenAPIHeader, OpenAPIMediaType, OpenAPIResponse, Reference, Schema
from litestar.openapi.spec.enums import OpenAPIType

from app.web.http.input_guards import MAX_BODY_BYTES

PROBLEM = "application/problem+json"

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="A URI naming the problem; `about:blank` if none."),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
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
)


def document_problems(app: Litestar) -> None:
    openapi = app.openapi_schema
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas["Problem"] = PROBLEM_SCHEMA
    reference = OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
    for path, path_item in (openapi.paths or {}).items():
        for operation in (path_item.get, path_item.post, path_item.put, path_item.patch, path_item.delete):
            if operation is None or not operation.responses:
                continue
            for status, response in operation.responses.items():
                if status[:1] in ("4", "5") and isinstance(response, OpenAPIResponse):
                    response.content = {PROBLEM: reference}
            if operation.request_body is not None:  # app.web.http.input_guards
                operation.responses.setdefault(
                    "413",
                    OpenAPIResponse(
                        description=f"The body is larger than {MAX_BODY_BYTES} bytes.", content={PROBLEM: reference}
                    ),
                )
            if path.startswith("/api/"):
                operation.responses.setdefault(
                    "503",
                    OpenAPIResponse(
                        description="The database is out of reach for the moment: try again after `Retry-After` "
                        "seconds (with the same `Idempotency-Key`, a task is not started twice).",
                        headers={"Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER))},
                        content={PROBLEM: reference},
                    ),
                )
