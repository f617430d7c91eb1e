"""Two schedulers (two `periodiq app.workers` processes, on one machine or two) send each scheduled run once.

Every scheduler sends every due periodic actor; ScheduleClaims lets only the first of them
send a run (see app.workers.schedules). Found by issue 19: a second scheduler doubled every
sweep, purge and due-email pass.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from periodiq import PeriodiqMiddleware, cron

from app.config import get_settings
from app.workers.schedules import PeriodicActor, ScheduleClaims

pytestmark = pytest.mark.services


def test_of_fifty_schedulers_claiming_one_run_at_once_exactly_one_sends_it() -> None:
    settings = get_settings()
    namespace = f"claims-{uuid.uuid4().hex[:8]}"
    schedulers = [ScheduleClaims(settings.redis_url, namespace) for _ in range(50)]
    # The same run as each scheduler names it: its own clock's second and its own time zone.
    names = ["2026-01-01T10:01:00+00:00", "2026-01-01 10:01:00.5+00:00", "2026-01-01T11:01:00+01:00"]
    with ThreadPoolExecutor(50) as pool:
        claimed = list(pool.map(lambda i: schedulers[i].claim("tasks.sweep", names[i % 3]), range(50)))
    assert claimed.count(True) == 1
    # The next minute, and another actor in the same minute, are runs of their own.
    assert schedulers[0].claim("tasks.sweep", "2026-01-01T10:02:00+00:00")
    assert schedulers[1].claim("tasks.purge", "2026-01-01T10:01:00+00:00")


def test_a_run_sent_by_one_scheduler_is_not_sent_again_by_the_next() -> None:
    stub = StubBroker()
    stub.add_middleware(PeriodiqMiddleware())

    def tick() -> None: ...

    actor = dramatiq.actor(
        tick,
        actor_class=PeriodicActor,
        actor_name=f"tick_{uuid.uuid4().hex[:8]}",
        broker=stub,
        periodic=cron("* * * * *"),
    )
    actor.send_with_options(scheduled_at="2026-01-01T10:01:00+00:00")
    actor.send_with_options(scheduled_at="2026-01-01 10:01:00+00:00")  # as another scheduler names it
    actor.send_with_options(scheduled_at="2026-01-01T10:02:00+00:00")
    actor.send()  # not a scheduled send: never claimed
    queue = stub.queues["default"]
    sent = [dramatiq.Message.decode(queue.get_nowait()) for _ in range(queue.qsize())]
    assert [m.options.get("scheduled_at") for m in sent] == [
        "2026-01-01T10:01:00+00:00",
        "2026-01-01T10:02:00+00:00",
        None,
    ]
