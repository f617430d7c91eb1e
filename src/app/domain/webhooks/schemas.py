"""Webhooks at the edge: what a submission may ask for and what the API shows."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

#: The ends of a task a webhook may be told of.
WebhookEvent = Literal["succeeded", "failed", "cancelled"]
ALL_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")
DeliveryStatus = Literal["pending", "delivering", "succeeded", "failed"]


class WebhookIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`webhook` of a task's submission: where to POST when it ends, and for which ends (all by default)."""

    url: str
    events: list[WebhookEvent] | None = None


class WebhookOut(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    events: list[str]


class DeliveryOut(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class TaskWebhookDeliveries(msgspec.Struct, frozen=True, kw_only=True):
    """A task's webhook (null when it has none) and its deliveries, oldest first."""

    webhook: WebhookOut | None
    items: list[DeliveryOut]


class WebhookSecretOut(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's signing secret: `X-Webhook-Signature` is its HMAC-SHA256 (README, "Webhooks")."""

    secret: str
    created_at: datetime
