"""Delivering webhooks off the task threads, on the `mail` queue: short network calls that a person waits for.

`webhooks.deliver` claims one delivery (app.domain.webhooks.outbox), POSTs it and records the
answer; a failed try sends itself again, delayed by the next backoff. `webhooks.send_due`
(each half minute) hands back whatever is due, so a lost message, a broker outage or a worker
killed mid-send only delays a delivery. A slow receiver holds one `mail` thread for at most
WEBHOOK_TIMEOUT_SECONDS, never a task's.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import anyio
import structlog
from periodiq import cron

from app.config import get_settings
from app.domain.webhooks.outbox import Deliveries
from app.domain.webhooks.sending import post
from app.workers.context import async_actor
from app.workers.errors import BROKER_DOWN
from app.workers.queues import MAIL
from app.workers.runtime import runtime
from app.workers.sweeps import follow_up, queue_each

log = structlog.get_logger(__name__)


@async_actor(actor_name="webhooks.deliver", queue_name=MAIL, max_retries=0)
async def deliver(delivery_id: str) -> None:
    """One try of one delivery, if it is due and nobody else holds it."""
    settings = get_settings()
    rt = runtime()
    async with rt.session() as session, session.begin():
        claimed = await Deliveries(session, settings).claim(UUID(delivery_id))
    if claimed is None:
        return  # done, not due yet, or another worker holds it
    answer = await post(claimed.url, delivery_id, claimed.body, claimed.secret, settings)
    async with rt.session() as session, session.begin():
        retry_in = await Deliveries(session, settings).answered(claimed, answer)
    log.info(
        "webhook.tried",
        delivery_id=delivery_id,
        attempt=claimed.attempts,
        status_code=answer.status_code,
        error=answer.error,
        retry_in=retry_in.total_seconds() if retry_in else None,
    )
    if retry_in is not None:
        await anyio.to_thread.run_sync(lambda: queue_delivery(claimed.id, delay=retry_in))


def queue_delivery(delivery_id: UUID, *, delay: timedelta | None = None) -> bool:
    """Hand a committed delivery to a worker; False when the broker is unreachable (the sweeper will)."""
    try:
        deliver.send_with_options(
            args=(str(delivery_id),), delay=int(delay.total_seconds() * 1000) if delay is not None else None
        )
    except BROKER_DOWN:
        log.warning("webhook.not_queued", delivery_id=str(delivery_id))
        return False
    return True


@async_actor(actor_name="webhooks.send_due", periodic=cron("* * * * *"), max_retries=0)
async def send_due() -> None:
    """Queue every delivery whose time has come; each minute, and once more 30 s later, like the task sweeper."""
    follow_up(send_due)
    async with runtime().session() as session:
        due = await Deliveries(session, get_settings()).due()
    if due:
        log.info("webhook.due_queued", count=await queue_each(due, queue_delivery), due=len(due))
