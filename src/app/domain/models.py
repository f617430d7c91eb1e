"""Every model of every domain, imported in one place so that metadata (and alembic) sees them all."""

from advanced_alchemy.base import orm_registry

from app.domain.accounts.models import EmailToken, PersonalAccessToken, RefreshToken, SignIn, User
from app.domain.audit.models import AuditEntry
from app.domain.notifications.models import Event, Notification
from app.domain.schedules.models import Schedule, ScheduleRun
from app.domain.tasks.models import Task, TaskLog
from app.domain.webhooks.models import TaskWebhook, WebhookDelivery, WebhookSecret

metadata = orm_registry.metadata

__all__ = [
    "AuditEntry",
    "EmailToken",
    "Event",
    "Notification",
    "PersonalAccessToken",
    "RefreshToken",
    "Schedule",
    "ScheduleRun",
    "SignIn",
    "Task",
    "TaskLog",
    "TaskWebhook",
    "User",
    "WebhookDelivery",
    "WebhookSecret",
    "metadata",
]
