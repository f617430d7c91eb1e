"""The HTML pages (Jinja + htmx), one controller module per domain."""

from __future__ import annotations

from app.web.pages.accounts import AccountPages, SignInPages
from app.web.pages.admin import AdminPages
from app.web.pages.audit import AuditPages
from app.web.pages.notifications import NotificationPages
from app.web.pages.schedules import SchedulePages
from app.web.pages.tasks import TaskPages

PAGE_CONTROLLERS = [SignInPages, AccountPages, TaskPages, SchedulePages, NotificationPages, AdminPages, AuditPages]

__all__ = ["PAGE_CONTROLLERS"]
