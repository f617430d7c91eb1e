"""When a schedule runs: its cron expression (5 fields) read in its IANA time zone, through cronsim.

cronsim follows Debian's cron through DST changes: a time the clocks skip (02:30 on the night
they go forward) runs once right after the change, a time they repeat runs once. Times are
whole minutes; the next run is always strictly after the moment asked about.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cronsim import CronSim, CronSimError

from app.domain.text import control_problem

MAX_CRON = 100
MAX_TIMEZONE = 64
#: Runs looked at to tell how close together an expression's runs come (`too_frequent`).
_GAPS_LOOKED_AT = 60


@lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA time zone `name`, or None when there is none by that name."""
    if not name or len(name) > MAX_TIMEZONE or control_problem(name) or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def timezone_problem(name: str) -> str | None:
    if zone(name) is None:
        return "must be an IANA time zone name, e.g. UTC, Europe/Berlin or America/New_York"
    return None


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a 5-field cron expression that ever runs (None: it is one)."""
    if len(expression) > MAX_CRON:
        return f"must be at most {MAX_CRON} characters"
    if control_problem(expression):
        return "must not contain control characters"
    if len(expression.split()) != 5:
        return "must have 5 fields: minute hour day-of-month month day-of-week, e.g. `30 2 * * *`"
    try:
        it = CronSim(expression, datetime(2000, 1, 1))
        next(it)
    except CronSimError as exc:
        return f"is not a valid cron expression: {str(exc).lower()}"
    except StopIteration:
        return "never matches a date"
    return None


def _start(expression: str, timezone: str, moment: datetime) -> CronSim:
    tz = zone(timezone) or UTC
    # Whole seconds: cronsim steps from the start's second, and every match is a whole minute anyway.
    return CronSim(expression, moment.astimezone(tz).replace(microsecond=0))


def next_run(expression: str, timezone: str, after: datetime) -> datetime | None:
    """The first time strictly after `after` that `expression` names in `timezone`, in UTC; None: none (ever)."""
    try:
        return next(_start(expression, timezone, after)).astimezone(UTC)
    except StopIteration:
        return None


def latest_run(expression: str, timezone: str, at: datetime) -> datetime | None:
    """The last time at or before `at` that `expression` names in `timezone`, in UTC (None: none in 50 years)."""
    tz = zone(timezone) or UTC
    start = (at.astimezone(tz) + timedelta(seconds=1)).replace(microsecond=0)
    try:
        return next(CronSim(expression, start, reverse=True)).astimezone(UTC)
    except StopIteration:
        return None


def too_frequent(expression: str, timezone: str, minimum: timedelta, now: datetime) -> bool:
    """True when two of the expression's next runs come closer together than `minimum`."""
    if minimum <= timedelta(minutes=1):
        return False  # a 5-field expression never runs more often than each minute
    it = _start(expression, timezone, now)
    previous = None
    for _ in range(_GAPS_LOOKED_AT):
        try:
            current = next(it)
        except StopIteration:
            return False
        if previous is not None and current.astimezone(UTC) - previous.astimezone(UTC) < minimum:
            return True
        previous = current
    return False


def describe(expression: str) -> str:
    """The expression in words ("At 02:30 every day"); the expression itself when it cannot be put so."""
    try:
        return str(CronSim(expression, datetime(2000, 1, 1)).explain())
    except Exception:  # noqa: BLE001 - words are a courtesy: an expression that cronsim cannot explain shows as itself
        return expression
