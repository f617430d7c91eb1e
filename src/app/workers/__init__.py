"""The job side: the Dramatiq broker, its actors and schedules.

`dramatiq app.workers` runs workers and `periodiq app.workers` the schedules in services
mode; embedded, the web app starts both inside its own process (see `embedded`).
Importing this module sets the global broker before any actor is declared.
"""

import dramatiq

from app.config import get_settings

# First: a bad setting ends `dramatiq app.workers` and `periodiq app.workers` with its one-line
# message before the models and their libraries are imported (0.7 s of CPU, then wasted).
settings = get_settings()

import app.domain.models  # noqa: E402, F401  (every model registered, so relationships and foreign keys resolve)
from app.config.logging import configure_logging  # noqa: E402
from app.workers.brokers import build_broker, heartbeat_store  # noqa: E402

configure_logging(settings)
heartbeats = heartbeat_store(settings)
broker = build_broker(settings, heartbeats)
dramatiq.set_broker(broker)

from app.workers import actors  # noqa: E402  (actors bind to the broker set above)

__all__ = ["actors", "broker", "heartbeats", "settings"]
