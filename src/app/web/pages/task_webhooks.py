"""The task page's webhook section: where the task's ends are told (its host) and each delivery's state."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.webhooks.outbox import deliveries_of


async def webhook_context(session: AsyncSession, user_id: UUID, task_id: UUID) -> dict[str, Any]:
    """`webhooks` (the API's answer) and `webhook_host` for partials/webhook_deliveries.html."""
    webhooks = await deliveries_of(session, user_id, task_id)
    host = urlsplit(webhooks.webhook.url).netloc if webhooks.webhook is not None else None
    return {"webhooks": webhooks, "webhook_host": host}
