"""Deleting audit rows past AUDIT_RETENTION_DAYS, in batches (each its own transaction: the log's writers never
wait long behind a purge, and a purge stopped midway keeps what it did)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.audit.models import AuditEntry

BATCH = 1000


async def purge_batches(
    sessions: async_sessionmaker[AsyncSession], cutoff: datetime, batch_size: int = BATCH
) -> AsyncIterator[int]:
    """Delete rows recorded before `cutoff`, `batch_size` at a time; yields each batch's count."""
    while True:
        async with sessions() as session, session.begin():
            ids = (
                await session.scalars(
                    select(AuditEntry.id).where(AuditEntry.at < cutoff).order_by(AuditEntry.at).limit(batch_size)
                )
            ).all()
            if not ids:
                return
            await session.execute(delete(AuditEntry).where(AuditEntry.id.in_(ids)))
        yield len(ids)
        if len(ids) < batch_size:
            return


async def purge_audit(sessions: async_sessionmaker[AsyncSession], cutoff: datetime, batch_size: int = BATCH) -> int:
    """Delete every row recorded before `cutoff`, in batches; how many."""
    deleted = 0
    async for count in purge_batches(sessions, cutoff, batch_size):
        deleted += count
    return deleted
