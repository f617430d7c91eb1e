"""Notifications API: /api/v1/notifications, and broadcasts at /api/v1/admin/notifications."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import User
from app.domain.audit.admin import record_broadcast
from app.domain.notifications.events import EventPublisher
from app.domain.notifications.schemas import NotificationOut, notification_out
from app.domain.notifications.services import (
    BroadcastRequest,
    NotificationService,
    count_recipients,
    new_broadcast,
)
from app.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, Page
from app.web.http.audit import audit_context
from app.web.http.auth import requires_superuser, requires_user
from app.web.http.blocking import in_thread
from app.web.http.errors import BreaksARule
from app.workers.actors.notifications import send_broadcast

BEARER: list[dict[str, list[str]]] = [{"BearerToken": []}]
ERRORS = [NotAuthorizedException, NotFoundException]


class UnreadCount(msgspec.Struct, frozen=True, kw_only=True):
    unread: int


class ReadAll(msgspec.Struct, frozen=True, kw_only=True):
    updated: int


class BroadcastAccepted(msgspec.Struct, frozen=True, kw_only=True):
    recipients: int


class NotificationsController(Controller):
    path = "/api/v1/notifications"
    tags = ["notifications"]
    guards = [requires_user]
    security = BEARER

    @get(
        operation_id="listNotifications",
        description="A page of the caller's notifications; `unread=true` shows only unread ones.",
        summary="The user's notifications, newest first",
        raises=[NotAuthorizedException, ValidationException],
    )
    async def list_notifications(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        unread: Annotated[bool, QueryParameter(description="Only unread notifications")] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Page[NotificationOut]:
        rows, total = await NotificationService(db_session).list(
            request.user.id, unread=unread, limit=limit, offset=offset
        )
        return Page(items=[notification_out(n) for n in rows], total=total, limit=limit, offset=offset)

    @get(
        "/unread-count",
        operation_id="countUnreadNotifications",
        description="The number the bell shows.",
        summary="How many of the user's notifications are unread",
        raises=[NotAuthorizedException],
    )
    async def unread_count(
        self, request: Request[User, Any, Any], db_session: NamedDependency[AsyncSession]
    ) -> UnreadCount:
        return UnreadCount(unread=await NotificationService(db_session).unread_count(request.user.id))

    @post(
        "/{notification_id:uuid}/read",
        operation_id="readNotification",
        description=(
            "Marks it read (reading it again changes nothing) and sends `notification.updated` to the caller's streams."
        ),
        summary="Mark a notification read (again: no change)",
        status_code=HTTP_200_OK,
        raises=ERRORS,
    )
    async def read(
        self,
        request: Request[User, Any, Any],
        notification_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> NotificationOut:
        service = NotificationService(db_session)
        body = notification_out(await service.mark_read(request.user.id, notification_id))
        await db_session.commit()
        await service.events.publish(publisher)
        return body

    @post(
        "/read-all",
        operation_id="readAllNotifications",
        description="Marks every unread notification of the caller read; `updated` says how many changed.",
        summary="Mark every notification of the user read",
        status_code=HTTP_200_OK,
        raises=[NotAuthorizedException],
    )
    async def read_all(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> ReadAll:
        service = NotificationService(db_session)
        updated = await service.mark_all_read(request.user.id)
        await db_session.commit()
        await service.events.publish(publisher)
        return ReadAll(updated=updated)

    @delete(
        "/{notification_id:uuid}",
        operation_id="deleteNotification",
        description="Deletes one of the caller's notifications; 404 for another user's.",
        summary="Delete a notification",
        status_code=HTTP_204_NO_CONTENT,
        raises=ERRORS,
    )
    async def delete_notification(
        self,
        request: Request[User, Any, Any],
        notification_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> None:
        service = NotificationService(db_session)
        await service.delete(request.user.id, notification_id)
        await db_session.commit()
        await service.events.publish(publisher)


class AdminNotificationsController(Controller):
    path = "/api/v1/admin/notifications"
    tags = ["admin"]
    guards = [requires_superuser]
    security = BEARER

    @post(
        operation_id="adminBroadcastNotification",
        summary="Send a system notification to one user or every active user (superusers only)",
        description=(
            "202 with the number of recipients; the notifications are written in the background, "
            "in batches. Without `user_id`, every active user receives one."
        ),
        status_code=HTTP_202_ACCEPTED,
        raises=[NotAuthorizedException, PermissionDeniedException, NotFoundException, ValidationException, BreaksARule],
    )
    async def broadcast(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[BroadcastRequest],
        db_session: NamedDependency[AsyncSession],
    ) -> BroadcastAccepted:
        broadcast = new_broadcast(data)
        recipients = await count_recipients(db_session, broadcast.user_id)
        record_broadcast(db_session, audit_context(request), broadcast, recipients)
        await db_session.commit()  # recorded before it is handed on
        await in_thread(send_broadcast, broadcast)  # the broker client blocks
        return BroadcastAccepted(recipients=recipients)
