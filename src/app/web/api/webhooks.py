"""Webhooks API: a task's deliveries, and the caller's signing secret (README, "Webhooks")."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import User
from app.domain.audit import schemas as audit
from app.domain.audit.recording import record
from app.domain.webhooks.outbox import deliveries_of, rotate_secret, secret_of
from app.domain.webhooks.schemas import TaskWebhookDeliveries, WebhookSecretOut
from app.web.http.audit import audit_context
from app.web.http.auth import requires_user

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
#: A personal access token is refused here (403): the secret is the account's (app.web.http.access_tokens).
SECRET_ERRORS = [NotAuthorizedException, PermissionDeniedException]


class TaskWebhookDeliveriesController(Controller):
    path = "/api/v1/tasks/{task_id:uuid}/webhook-deliveries"
    tags = ["tasks"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listTaskWebhookDeliveries",
        summary="A task's webhook and its deliveries",
        description=(
            "The webhook the task was submitted with (`null` when none) and one delivery per end it was told of, "
            "oldest first: `status` (`pending`, `delivering`, `succeeded`, `failed`), `attempts`, the last answer's "
            "`last_status_code` and `last_error`, `next_attempt_at` while a try is due, `delivered_at` once a "
            "receiver answered 2xx. 404 also for another user's task."
        ),
        raises=[NotAuthorizedException, NotFoundException],
    )
    async def list_deliveries(
        self, request: Request[User, Any, Any], task_id: FromPath[UUID], db_session: NamedDependency[AsyncSession]
    ) -> TaskWebhookDeliveries:
        return await deliveries_of(db_session, request.user.id, task_id)


class WebhookSecretController(Controller):
    path = "/api/v1/users/me/webhook-secret"
    tags = ["users"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="getMyWebhookSecret",
        summary="My webhook signing secret",
        description=(
            "The secret every webhook delivery of the caller's tasks is signed with (`X-Webhook-Signature: "
            'v1=<hex HMAC-SHA256 of the secret over "<X-Webhook-Timestamp>.<body>">`), made at first use. Only a '
            "signed-in user may read it; a personal access token gets a 403."
        ),
        raises=SECRET_ERRORS,
    )
    async def get_secret(
        self, request: Request[User, Any, Any], db_session: NamedDependency[AsyncSession]
    ) -> WebhookSecretOut:
        secret = await secret_of(db_session, request.user.id)
        await db_session.commit()
        return secret

    @post(
        operation_id="rotateMyWebhookSecret",
        summary="Replace my webhook signing secret",
        description=(
            "A new secret, answered once here (and by the GET after it); every delivery from now on, retries of "
            "earlier ones included, is signed with it. A personal access token gets a 403."
        ),
        status_code=HTTP_200_OK,
        raises=SECRET_ERRORS,
    )
    async def rotate_secret(
        self, request: Request[User, Any, Any], db_session: NamedDependency[AsyncSession]
    ) -> WebhookSecretOut:
        secret = await rotate_secret(db_session, request.user.id)
        record(
            db_session,
            audit_context(request),
            audit.WEBHOOK_SECRET_ROTATED,
            target_type=audit.USER,
            target_id=request.user.id,
            target_name=request.user.username,
        )
        await db_session.commit()
        return secret
