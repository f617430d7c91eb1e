"""Account housekeeping run on a schedule."""

from __future__ import annotations

import structlog
from periodiq import cron

from app.domain.accounts.maintenance import purge_spent_tokens
from app.workers.context import async_actor
from app.workers.runtime import runtime

log = structlog.get_logger(__name__)


@async_actor(actor_name="accounts.purge_tokens", periodic=cron("@hourly"), max_retries=0)
async def purge_tokens() -> None:
    """Delete refresh and email tokens that stopped working more than a week ago."""
    async with runtime().session() as session, session.begin():
        purged = await purge_spent_tokens(session)
    log.info("accounts.purge_tokens", refresh_tokens=purged.refresh_tokens, email_tokens=purged.email_tokens)
