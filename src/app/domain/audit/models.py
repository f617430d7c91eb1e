"""One row per admin or security action (app.domain.audit.recording writes them, app.domain.audit.listing reads)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7Base
from advanced_alchemy.types import GUID, DateTimeUTC, JsonB
from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.domain.clock import utcnow


class AuditEntry(UUIDv7Base):
    """Who (`actor_*`) did `action` to what (`target_*`), when (`at`), from where (`ip`, `request_id`).

    The actor and the target are copies (id and name), not foreign keys: a deleted user's
    history stays whole and readable. `detail` is a small JSON object of what else matters
    (which scopes, which flag), never a password, token or secret (app.domain.audit.recording).
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        # Newest first (the default list), and the keyset cursor's (at, id) position.
        Index("ix_audit_log_at_id", "at", "id"),
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_actor_id_at", "actor_id", "at"),
        Index("ix_audit_log_target", "target_type", "target_id", "at"),
        Index("ix_audit_log_request_id", "request_id"),
    )

    at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), default=utcnow)
    action: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[UUID | None] = mapped_column(GUID, default=None)
    actor_name: Mapped[str | None] = mapped_column(String(100), default=None)
    target_type: Mapped[str | None] = mapped_column(String(32), default=None)
    target_id: Mapped[str | None] = mapped_column(String(64), default=None)
    target_name: Mapped[str | None] = mapped_column(String(320), default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JsonB, default=None)
