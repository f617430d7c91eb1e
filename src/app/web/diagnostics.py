"""POST /api/v1/diagnostics/round-trip: prove that request -> job -> event -> live stream works.

Enabled by DIAGNOSTICS_ENABLED (on by default outside production). The job records a
broadcast `diagnostic.round_trip` event with the token and the request id.
"""

from __future__ import annotations

import secrets

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.status_codes import HTTP_202_ACCEPTED

from app.config import Settings
from app.web.auth import requires_user
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
        status_code=HTTP_202_ACCEPTED,
        guards=[requires_user],
        security=[{"BearerToken": []}],
        raises=[NotFoundException, NotAuthorizedException],
    )
    async def round_trip(self, settings: NamedDependency[Settings]) -> RoundTrip:
        if not settings.diagnostics_on:
            raise NotFoundException()
        token = secrets.token_hex(8)
        round_trip.send(token)
        return RoundTrip(token=token)
