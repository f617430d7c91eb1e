"""Actors, one module per domain. Importing this package declares them all on the broker."""

from app.workers.actors import (
    accounts,
    diagnostics,
    mail,
    maintenance,
    notifications,
    schedules,
    tasks,
    webhooks,
)

__all__ = ["accounts", "diagnostics", "mail", "maintenance", "notifications", "schedules", "tasks", "webhooks"]
