"""Periodic jobs. `periodiq app.workers` runs them in services mode; embedded, `run_schedules`.

periodiq's own scheduler needs SIGALRM and so the main thread of its own process; the
in-process loop below uses periodiq's cron specs and message options instead, so the
same actors and the same PeriodiqMiddleware serve both modes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import dramatiq
import pendulum
import structlog

from app.workers.errors import BROKER_DOWN

log = structlog.get_logger(__name__)


class PeriodicActor(dramatiq.Actor[Any, Any]):
    """A periodic actor whose scheduled sends outlive a broker outage.

    periodiq's scheduler sends each due actor with a `scheduled_at` option, and an
    exception there ends the `periodiq` process for good (and with it `make run`, whose
    honcho stops every process when one exits). A scheduled send that fails is logged
    instead: the next tick sends again, and every periodic job is safe to run late.
    """

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: Any = None,
        **options: Any,
    ) -> dramatiq.Message[Any]:
        if "scheduled_at" not in options:
            return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
        try:
            return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
        except BROKER_DOWN as exc:
            log.warning("schedule.send_failed", actor=self.actor_name, error=str(exc))
            return self.message_with_options(args=args, kwargs=kwargs, **options)


def periodic_actors(broker: dramatiq.Broker) -> list[dramatiq.Actor[Any, Any]]:
    return [actor for actor in broker.actors.values() if "periodic" in actor.options]


async def run_schedules(
    broker: dramatiq.Broker, stop: asyncio.Event, clock: Callable[[], pendulum.DateTime] = pendulum.now
) -> None:
    """Send each periodic actor at the times its cron spec names, until `stop` is set."""
    actors = periodic_actors(broker)
    if not actors:
        return
    while not stop.is_set():
        due_at = min(actor.options["periodic"].next_valid_date(clock()) for actor in actors)
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, (due_at - clock()).total_seconds()))
            return
        except TimeoutError:
            pass
        for actor in actors:
            if actor.options["periodic"].validate(due_at):
                log.info("schedule.send", actor=actor.actor_name, scheduled_at=str(due_at))
                actor.send_with_options(scheduled_at=str(due_at))
