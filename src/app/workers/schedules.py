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
import redis
import structlog

from app.config import get_settings
from app.workers.errors import BROKER_DOWN

log = structlog.get_logger(__name__)


#: How long a scheduled run's claim is kept: far longer than two schedulers' clocks ever differ.
CLAIM_SECONDS = 24 * 3600


class ScheduleClaims:
    """Each scheduled run is sent by one scheduler, however many run (services mode).

    Every scheduler sends every due actor at each cron minute; before sending, it claims
    the run (the actor and its minute, in UTC) with one atomic Redis `SET NX`, and only the
    one that made the claim sends. The minute, not periodiq's full timestamp: schedulers on
    machines whose clocks differ by a second, or with other time zones, name the same run.
    Redis out of reach: the run is sent anyway (the periodic jobs are safe to run twice, and
    a run not sent at all would wait for the next one).
    """

    def __init__(self, redis_url: str, namespace: str) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = f"{namespace}:schedule:"

    @staticmethod
    def run_name(actor_name: str, scheduled_at: str) -> str:
        minute = pendulum.parse(scheduled_at).in_timezone("UTC").format("YYYY-MM-DDTHH:mm")  # type: ignore[union-attr]
        return f"{actor_name}@{minute}"

    def claim(self, actor_name: str, scheduled_at: str) -> bool:
        """True when this scheduler is the first to send this run."""
        try:
            return bool(
                self._client.set(self._prefix + self.run_name(actor_name, scheduled_at), 1, nx=True, ex=CLAIM_SECONDS)
            )
        except redis.RedisError as exc:
            log.warning("schedule.claim_failed", actor=actor_name, error=str(exc))
            return True


_claims: ScheduleClaims | None = None


def schedule_claims() -> ScheduleClaims | None:
    """The process's claims, services mode only (embedded, the one web process is the only scheduler)."""
    global _claims
    settings = get_settings()
    if _claims is None and settings.redis_url:
        _claims = ScheduleClaims(settings.redis_url, settings.redis_namespace)
    return _claims


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
        claims = schedule_claims()
        if claims is not None and not claims.claim(self.actor_name, options["scheduled_at"]):
            log.info("schedule.sent_by_another", actor=self.actor_name, scheduled_at=options["scheduled_at"])
            return self.message_with_options(args=args, kwargs=kwargs, **options)
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
