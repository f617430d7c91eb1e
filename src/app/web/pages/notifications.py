"""/notifications: the user's notifications (mark read, mark all read, delete) and the bell's count."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.models import User
from app.domain.notifications.events import EventPublisher
from app.domain.notifications.services import NotificationService
from app.domain.pagination import MAX_OFFSET
from app.web.pages.rendering import fragment, go, is_htmx, live_from, page, requires_signed_in

PAGE_SIZE = 20


async def notification_list(service: NotificationService, user: User, offset: int = 0) -> dict[str, Any]:
    last_event_id = await live_from(service.session, user.id)  # first: the rows read next are at least this new
    rows, total = await service.list(user.id, limit=PAGE_SIZE, offset=offset)
    return {
        "last_event_id": last_event_id,
        "notifications": rows,
        "total": total,
        "offset": offset,
        "page_size": PAGE_SIZE,
        "unread": await service.unread_count(user.id),
    }


class NotificationPages(Controller):
    path = "/notifications"
    include_in_schema = False
    guards = [requires_signed_in]

    @get()
    async def notifications(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Template:
        listing = await notification_list(NotificationService(db_session), request.user, offset)
        return await page(request, db_session, "notifications.html", listing)

    @get("/list")
    async def list_fragment(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Template:
        listing = await notification_list(NotificationService(db_session), request.user, offset)
        return fragment("partials/notification_list.html", {**listing, "bell_oob": True})

    @get("/bell")
    async def bell(self, request: Request[User, Any, Any], db_session: NamedDependency[AsyncSession]) -> Template:
        unread = await NotificationService(db_session).unread_count(request.user.id)
        return fragment("partials/bell.html", {"unread": unread})

    @post("/{notification_id:uuid}/read")
    async def read(
        self,
        request: Request[User, Any, Any],
        notification_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> Response[Any]:
        service = NotificationService(db_session)
        notification = await service.mark_read(request.user.id, notification_id)
        unread = await service.unread_count(request.user.id)
        await db_session.commit()
        await service.events.publish(publisher)
        if is_htmx(request):
            return fragment("partials/notification.html", {"n": notification, "unread": unread, "item_bell": True})
        return go(request, "/notifications")

    @post("/read-all")
    async def read_all(
        self,
        request: Request[User, Any, Any],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> Response[Any]:
        service = NotificationService(db_session)
        updated = await service.mark_all_read(request.user.id)
        await db_session.commit()
        await service.events.publish(publisher)
        message = f"Marked {updated} notification{'' if updated == 1 else 's'} read."
        if is_htmx(request):
            listing = await notification_list(service, request.user)
            return fragment("partials/notification_list.html", {**listing, "bell_oob": True, "saved": message})
        return go(request, "/notifications", message)

    @post("/{notification_id:uuid}/delete")
    async def delete(
        self,
        request: Request[User, Any, Any],
        notification_id: FromPath[UUID],
        db_session: NamedDependency[AsyncSession],
        publisher: NamedDependency[EventPublisher],
    ) -> Response[Any]:
        service = NotificationService(db_session)
        await service.delete(request.user.id, notification_id)
        unread = await service.unread_count(request.user.id)
        await db_session.commit()
        await service.events.publish(publisher)
        if is_htmx(request):
            return fragment("partials/bell.html", {"unread": unread, "oob": True})  # the item itself becomes nothing
        return go(request, "/notifications", "Notification deleted.")
