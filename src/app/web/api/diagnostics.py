"""POST /api/v1/diagnostics/round-trip: prove that request -> job -> event -> live stream works.

Enabled by DIAGNOSTICS_ENABLED (on by default outside production), and for superusers
only in every environment: each call puts a job on the queue and an event in every
user's stream, which no ordinary account may make at will. The job records a broadcast
`diagnostic.round_trip` event with the token and the request id.
"""

from __future__ import annotations

import secrets

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, PermissionDeniedException
from litestar.status_codes import HTTP_202_ACCEPTED

from app.config import Settings
from app.web.http.auth import requires_superuser
from app.workers.actors.diagnostics import round_trip


class RoundTrip(msgspec.Struct, frozen=True):
    token: str


class DiagnosticsController(Controller):
    path = "/api/v1/diagnostics"
    tags = ["operations"]

    @post(
        "/round-trip",
        operation_id="diagnosticsRoundTrip",
        summary="Send a job that records a broadcast event",
        description="Superusers only; 404 when DIAGNOSTICS_ENABLED is off.",
        status_code=HTTP_202_ACCEPTED,
        guards=[requires_superuser],
        security=[{"BearerToken": []}],
        raises=[NotFoundException, NotAuthorizedException, PermissionDeniedException],
    )
    async def round_trip(self, settings: NamedDependency[Settings]) -> RoundTrip:
        if not settings.diagnostics_on:
            raise NotFoundException()
        token = secrets.token_hex(8)
        round_trip.send(token)
        return RoundTrip(token=token)
