"""The hourly purge of spent credentials (app.domain.accounts.maintenance), on the run's real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain.accounts.maintenance import KEEP_SPENT, purge_spent_tokens
from app.domain.accounts.models import EmailToken, RefreshToken, User
from app.domain.clock import utcnow
from app.workers.actors.accounts import purge_tokens
from tests.in_process_workers import app_with_workers

pytestmark = pytest.mark.usefixtures("migrated")

DAY = timedelta(days=1)


async def tokens(session: AsyncSession) -> dict[str, uuid.UUID]:
    """One user's refresh and email tokens in every state, named by what should become of them."""
    now = utcnow()
    user = User(email=f"u{uuid.uuid4().hex[:8]}@example.com", username=f"u{uuid.uuid4().hex[:8]}")
    session.add(user)
    await session.flush()

    def refresh(**fields: object) -> RefreshToken:
        values = {"family_id": uuid.uuid4(), "token_hash": uuid.uuid4().hex, "expires_at": now + 30 * DAY, **fields}
        return RefreshToken(user_id=user.id, **values)

    def email(**fields: object) -> EmailToken:
        values = {"purpose": "reset", "token_hash": uuid.uuid4().hex, "expires_at": now + DAY, **fields}
        return EmailToken(user_id=user.id, **values)

    refreshes = {
        "keep: live": refresh(),
        "keep: rotated, not expired (its reuse is how theft is noticed)": refresh(replaced_at=now - 20 * DAY),
        "keep: expired lately": refresh(expires_at=now - KEEP_SPENT + DAY),
        "keep: revoked lately": refresh(revoked_at=now - KEEP_SPENT + DAY),
        "drop: expired long ago": refresh(expires_at=now - KEEP_SPENT - DAY),
        "drop: revoked long ago": refresh(revoked_at=now - KEEP_SPENT - DAY),
    }
    emails = {
        "keep: unused": email(),
        "keep: used lately": email(used_at=now - KEEP_SPENT + DAY),
        "keep: expired lately": email(expires_at=now - KEEP_SPENT + DAY),
        "drop: used long ago": email(used_at=now - KEEP_SPENT - DAY),
        "drop: expired long ago": email(purpose="verify", expires_at=now - KEEP_SPENT - DAY),
    }
    session.add_all([*refreshes.values(), *emails.values()])
    await session.flush()
    ids = {f"refresh {name}": row.id for name, row in refreshes.items()}
    ids |= {f"email {name}": row.id for name, row in emails.items()}
    await session.commit()
    return ids


async def remaining(session: AsyncSession, ids: dict[str, uuid.UUID]) -> set[str]:
    """The names of the tokens still stored."""
    stored = set(await session.scalars(select(RefreshToken.id))) | set(await session.scalars(select(EmailToken.id)))
    await session.commit()
    return {name for name, token_id in ids.items() if token_id in stored}


def kept(ids: dict[str, uuid.UUID]) -> set[str]:
    return {name for name in ids if name.split(" ", 1)[1].startswith("keep")}


async def test_spent_tokens_are_deleted_a_week_after_they_stopped_working(db_session: AsyncSession) -> None:
    ids = await tokens(db_session)
    purged = await purge_spent_tokens(db_session)
    await db_session.commit()
    assert (purged.refresh_tokens, purged.email_tokens) == (2, 2)
    assert await remaining(db_session, ids) == kept(ids)
    again = await purge_spent_tokens(db_session)
    assert (again.refresh_tokens, again.email_tokens) == (0, 0)


@pytest.fixture
def workers(mode: str) -> Iterator[None]:
    with app_with_workers(mode):
        yield


@pytest.mark.usefixtures("workers")
async def test_the_scheduled_job_purges(db_session: AsyncSession) -> None:
    ids = await tokens(db_session)
    assert str(purge_tokens.options["periodic"]) == "@hourly"
    purge_tokens.send()
    deadline = time.monotonic() + 20
    while (left := await remaining(db_session, ids)) != kept(ids):
        assert time.monotonic() < deadline, left
        await asyncio.sleep(0.1)
