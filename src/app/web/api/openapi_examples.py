"""An example of every body in the API document, made from the real Structs.

Each example is an instance of the Struct it shows, so it cannot name a field the Struct
lacks or miss one it requires; `app.web.api.openapi.complete_document` puts it on that
Struct's component schema (keyed by the schema's title, e.g. `Page[TaskOut]`), and
tests/test_openapi_document.py checks that every component has one and that each one
validates against its schema.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import msgspec

from app.domain.accounts.access_tokens import AccessTokenOut, CreatedAccessToken, NewAccessToken
from app.domain.accounts.deletion import AccountExport
from app.domain.accounts.identities import IdentityLink, IdentityOut
from app.domain.accounts.schemas import PasswordChange, ProfileChange, Registration, UserFlags, UserOut
from app.domain.accounts.sign_ins import SessionOut
from app.domain.audit.schemas import AuditEntryOut, AuditPage
from app.domain.notifications.schemas import NotificationOut
from app.domain.notifications.services import BroadcastRequest
from app.domain.pagination import CursorPage, Page
from app.domain.schedules.schemas import ScheduleChange, ScheduleIn, ScheduleOut, ScheduleRunOut
from app.domain.tasks.listing import OwnedTaskOut
from app.domain.tasks.logs import TaskLogLine, TaskLogPage
from app.domain.tasks.schemas import KindOut, Progress, TaskOut, TaskRequest
from app.domain.tasks.services import describe_kinds
from app.domain.webhooks.schemas import DeliveryOut, TaskWebhookDeliveries, WebhookIn, WebhookOut, WebhookSecretOut
from app.web.api.account_lifecycle import EmailChange, EmailChangeAccepted, PasswordConfirmation
from app.web.api.accounts import (
    EmailTokenRequest,
    ForgotPassword,
    LogoutRequest,
    RefreshRequest,
    ResetPassword,
    TokenPair,
    TokenValidity,
)
from app.web.api.admin_tasks import TaskLoadOut, UserLoadOut
from app.web.api.diagnostics import RoundTrip
from app.web.api.notifications import BroadcastAccepted, ReadAll, UnreadCount

STARTED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
FINISHED = datetime(2026, 11, 22, 10, 0, 21, tzinfo=UTC)
USER_ID = UUID("01936b2e-7c4a-7d3e-9f10-2a3b4c5d6e7f")
TASK_ID = UUID("01936b2f-1a2b-7c3d-8e4f-5a6b7c8d9e0f")
NOTIFICATION_ID = UUID("01936b2f-4d5e-7f60-8a1b-2c3d4e5f6a7b")
IDENTITY_ID = UUID("01936b30-0a1b-7c2d-9e3f-4a5b6c7d8e9f")
ACCESS_TOKEN_ID = UUID("01936b31-2b3c-7d4e-8f50-6a7b8c9d0e1f")
#: Tokens are opaque to clients; these are shaped like the real ones, and work nowhere.
ACCESS_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmIyZSJ9.c2lnbmF0dXJl"  # noqa: S105
REFRESH_TOKEN = "Zq3v9HkX2mB8wR5tY1uI7oP4aS6dF0gJ"  # noqa: S105
EMAIL_TOKEN = "kT4nM8qW2eR6yU0iO3pA7sD1fG5hJ9lZ"  # noqa: S105
PASSWORD = "a long passphrase"  # noqa: S105
PERSONAL_TOKEN = "pat_Xr7Kq2mP9vL4wT1sN8bY3cF6hJ0dG5aZ2eU7iO4kQ1"  # noqa: S105
WEBHOOK_SECRET = "whsec_4fQ9xL2mN7vR1tY8bK3cH6jD0sW5eA9gU2iO7pZ1kM4"  # noqa: S105
WEBHOOK = WebhookOut(url="https://hooks.example.com/tasks", events=["succeeded", "failed"])
DELIVERY = DeliveryOut(
    id=UUID("01936b32-3c4d-7e5f-8a61-7b8c9d0e1f2a"),
    event="succeeded",
    url="https://hooks.example.com/tasks",
    status="succeeded",
    attempts=2,
    last_status_code=204,
    last_error=None,
    next_attempt_at=None,
    created_at=FINISHED,
    delivered_at=FINISHED,
)

USER = UserOut(
    id=USER_ID,
    email="ann@example.com",
    username="ann",
    full_name="Ann Example",
    is_active=True,
    is_verified=True,
    is_superuser=False,
    email_notifications=True,
    created_at=STARTED,
)
PROGRESS = Progress(current=20, total=20, percent=100.0, message="Processing step 20 of 20")
TASK = TaskOut(
    id=TASK_ID,
    kind="demo",
    title="Demo",
    description=None,
    status="succeeded",
    progress=PROGRESS,
    params={"steps": 20, "step_ms": 200},
    result={"steps": 20},
    error=None,
    attempts=1,
    created_at=STARTED,
    started_at=STARTED,
    finished_at=FINISHED,
    run_at=None,
)
OWNED_TASK = OwnedTaskOut(**msgspec.structs.asdict(TASK), user_id=USER_ID, username="ann")
NOTIFICATION = NotificationOut(
    id=NOTIFICATION_ID,
    category="task",
    title="Task completed",
    message="Demo succeeded.",
    is_read=False,
    task_id=TASK_ID,
    created_at=FINISHED,
    read_at=None,
)
LOG_LINE = TaskLogLine(seq=20, level="info", message="Step 20 of 20 done", created_at=FINISHED, attempt=1)
IDENTITY = IdentityOut(
    id=IDENTITY_ID,
    issuer="https://id.example.com",
    subject="248289761001",
    email_at_link="ann@example.com",
    created_at=STARTED,
)

PERSONAL_TOKEN_OUT = AccessTokenOut(
    id=ACCESS_TOKEN_ID,
    name="nightly export script",
    scopes=["read", "write"],
    prefix=PERSONAL_TOKEN[:12],
    created_at=STARTED,
    expires_at=datetime(2026, 12, 22, 10, 0, tzinfo=UTC),
    last_used_at=FINISHED,
)

SESSION = SessionOut(
    id=UUID("01936b32-3c4d-7e5f-8a60-7b8c9d0e1f2a"),
    kind="api",
    created_at=STARTED,
    last_used_at=FINISHED,
    user_agent="curl/8.5.0",
    ip_address="203.0.113.7",
    current=True,
)


SCHEDULE_ID = UUID("01936b40-1a2b-7c3d-8e4f-5a6b7c8d9e0f")
SCHEDULE = ScheduleOut(
    id=SCHEDULE_ID,
    name="Nightly export",
    kind="export",
    params={"dataset": "tasks", "format": "csv"},
    title="Tasks as CSV",
    cron="30 2 * * *",
    cron_description="At 02:30 every day",
    timezone="Europe/Berlin",
    paused=False,
    next_run_at=datetime(2026, 11, 23, 1, 30, tzinfo=UTC),
    last_run_at=datetime(2026, 11, 22, 1, 30, tzinfo=UTC),
    last_status="started",
    last_task_id=TASK_ID,
    last_error=None,
    created_at=STARTED,
    updated_at=STARTED,
)
SCHEDULE_RUN = ScheduleRunOut(
    scheduled_for=datetime(2026, 11, 22, 1, 30, tzinfo=UTC),
    status="started",
    task_id=TASK_ID,
    reason=None,
    created_at=datetime(2026, 11, 22, 1, 30, 0, 120000, tzinfo=UTC),
)


def _demo_kind() -> KindOut:
    """The demo kind as GET /api/v1/task-kinds describes it (its real parameter schema)."""
    kinds = describe_kinds()
    demo = next((kind for kind in kinds if kind["kind"] == "demo"), kinds[0])
    return msgspec.convert(demo, KindOut)


def _page(item: msgspec.Struct) -> dict[str, Any]:
    return {"items": [msgspec.to_builtins(item)], "total": 1, "limit": 20, "offset": 0}


#: A `next_cursor` as the task lists make them (opaque to clients).
NEXT_CURSOR = "k6stY3JlYXRlZF9hdNb_awK9IMQQAZNrLxorfD2OT1prfI2eDw"


def _cursor_page(item: msgspec.Struct) -> dict[str, Any]:
    return {**_page(item), "total": 45, "next_cursor": NEXT_CURSOR}


AUDIT_ENTRY = AuditEntryOut(
    id=UUID("01936b32-3c4d-7e5f-8a61-7b8c9d0e1f2a"),
    at=STARTED,
    action="token.created",
    actor_id=USER_ID,
    actor_name="ann",
    target_type="token",
    target_id=str(ACCESS_TOKEN_ID),
    target_name="nightly export script",
    request_id="4bf92f3577b34da6a3ce929d0e0e4736",
    ip="203.0.113.7",
    detail={"scopes": ["read", "write"], "prefix": "pat_Xr7Kq2mP", "expires_at": "2026-12-22T10:00:00+00:00"},
)


def schema_examples() -> dict[str, Any]:
    """Component schema title -> one example value (JSON-ready)."""
    structs: dict[str, msgspec.Struct] = {
        "UserOut": USER,
        "Registration": Registration(email="ann@example.com", username="ann", password=PASSWORD, full_name="Ann"),
        "ProfileChange": ProfileChange(full_name="Ann Example", email_notifications=False),
        "PasswordChange": PasswordChange(current_password=PASSWORD, new_password="an even longer passphrase"),  # noqa: S106
        "UserFlags": UserFlags(is_active=False),
        "TokenPair": TokenPair(access_token=ACCESS_TOKEN, refresh_token=REFRESH_TOKEN, expires_in=900),
        "RefreshRequest": RefreshRequest(refresh_token=REFRESH_TOKEN),
        "LogoutRequest": LogoutRequest(refresh_token=REFRESH_TOKEN),
        "TokenValidity": TokenValidity(user_id=USER_ID),
        "EmailTokenRequest": EmailTokenRequest(token=EMAIL_TOKEN),
        "ForgotPassword": ForgotPassword(email="ann@example.com"),
        "ResetPassword": ResetPassword(token=EMAIL_TOKEN, password="a new long passphrase"),  # noqa: S106
        "IdentityLink": IdentityLink(id_token=ACCESS_TOKEN),
        "IdentityOut": IDENTITY,
        "NewAccessToken": NewAccessToken(name="nightly export script", scopes=["read", "write"], expires_in_days=30),
        "AccessTokenOut": PERSONAL_TOKEN_OUT,
        "CreatedAccessToken": CreatedAccessToken(
            **{**msgspec.structs.asdict(PERSONAL_TOKEN_OUT), "last_used_at": None}, token=PERSONAL_TOKEN
        ),
        "SessionOut": SESSION,
        "EmailChange": EmailChange(new_email="ann@example.org", current_password=PASSWORD),
        "EmailChangeAccepted": EmailChangeAccepted(pending_email="ann@example.org"),
        "PasswordConfirmation": PasswordConfirmation(current_password=PASSWORD),
        "AccountExport": AccountExport(
            exported_at=FINISHED,
            user=USER,
            tasks=[TASK],
            notifications=[NOTIFICATION],
            sessions=[SESSION],
            access_tokens=[PERSONAL_TOKEN_OUT],
            identities=[IDENTITY],
            schedules=[SCHEDULE],
        ),
        "TaskRequest": TaskRequest(
            kind="demo",
            params={"steps": 20, "step_ms": 200},
            webhook=WebhookIn(url="https://hooks.example.com/tasks", events=["succeeded", "failed"]),
            run_at=datetime(2026, 11, 22, 11, 0, tzinfo=timezone(timedelta(hours=1))),
        ),
        "ScheduleIn": ScheduleIn(
            name="Nightly export",
            kind="export",
            params={"dataset": "tasks", "format": "csv"},
            title="Tasks as CSV",
            cron="30 2 * * *",
            timezone="Europe/Berlin",
        ),
        "ScheduleChange": ScheduleChange(cron="0 3 * * MON-FRI", timezone="America/New_York"),
        "ScheduleOut": SCHEDULE,
        "ScheduleRunOut": SCHEDULE_RUN,
        "WebhookIn": WebhookIn(url="https://hooks.example.com/tasks", events=["succeeded", "failed"]),
        "WebhookOut": WEBHOOK,
        "DeliveryOut": DELIVERY,
        "TaskWebhookDeliveries": TaskWebhookDeliveries(webhook=WEBHOOK, items=[DELIVERY]),
        "WebhookSecretOut": WebhookSecretOut(secret=WEBHOOK_SECRET, created_at=STARTED),
        "TaskOut": TASK,
        "OwnedTaskOut": OWNED_TASK,
        "Progress": PROGRESS,
        "KindOut": _demo_kind(),
        "TaskLogLine": LOG_LINE,
        "TaskLogPage": TaskLogPage(items=[LOG_LINE], next_after=LOG_LINE.seq),
        "NotificationOut": NOTIFICATION,
        "UnreadCount": UnreadCount(unread=3),
        "ReadAll": ReadAll(updated=3),
        "BroadcastRequest": BroadcastRequest(title="Maintenance", message="The service restarts at 22:00 UTC."),
        "BroadcastAccepted": BroadcastAccepted(recipients=42),
        "RoundTrip": RoundTrip(token="3f9c1e7a5b"),  # noqa: S106
        "AuditEntryOut": AUDIT_ENTRY,
        "AuditPage": AuditPage(items=[AUDIT_ENTRY], limit=20, next_cursor="kteCJZwAHqZGcBk2sukIwTqVyz1-TLcQdk5d"),
        "UserLoadOut": UserLoadOut(user_id=USER_ID, username="ann", running=2, queued=5),
        "TaskLoadOut": TaskLoadOut(
            queues={"tasks": 3, "mail": 0, "maintenance": 0},
            by_status={"queued": 5, "running": 2},
            users=[UserLoadOut(user_id=USER_ID, username="ann", running=2, queued=5)],
            max_running_per_user=4,
            max_running_per_kind={"export": 1},
        ),
    }
    examples: dict[str, Any] = {title: msgspec.to_builtins(value) for title, value in structs.items()}
    pages = {
        "NotificationOut": NOTIFICATION,
        "UserOut": USER,
        "IdentityOut": IDENTITY,
        "ScheduleOut": SCHEDULE,
        "ScheduleRunOut": SCHEDULE_RUN,
    }
    examples.update({f"{Page.__name__}[{name}]": _page(item) for name, item in pages.items()})
    cursor_pages = {"TaskOut": TASK, "OwnedTaskOut": OWNED_TASK}
    examples.update({f"{CursorPage.__name__}[{name}]": _cursor_page(item) for name, item in cursor_pages.items()})
    return examples
