"""Serve the web app with granian, from a supervisor that never imports the app: `python -m app.web.serve`.

`litestar run` imports the whole app in its CLI process only to launch granian, and hands
granian a logging setup that makes granian's main process import it too: three copies of
the app's modules in one process tree (docs/benchmarks.md, "Idle memory"). Here granian's
main process holds granian, the settings and the log formatter only; its worker builds the
app with the factory (`app.web.app:create_app`), serves it over ASGI and runs its lifespan,
as under `litestar run`. SIGTERM or SIGINT stops it gracefully: granian stops accepting,
the worker runs the app's shutdown (open event streams end) and is killed only if it has
not finished after WORKERS_KILL_TIMEOUT_S.

The options are those the app runs with under `litestar run`: HOST and PORT (127.0.0.1:8000),
GRANIAN_BACKPRESSURE (the Procfile's 20000), one worker, granian's own lines rendered like every
other log line (app.config.logging). `make run` in embedded mode keeps `litestar run`.
"""

from __future__ import annotations

import os
from typing import Any

#: The app factory granian's worker calls (the same LITESTAR_APP names).
TARGET = "app.web.app:create_app"
#: As `litestar run` passes: seconds a worker may take to stop before it is killed.
WORKERS_KILL_TIMEOUT_S = 5


def log_config() -> dict[str, Any]:
    """granian's logging: its lines through the app's structlog formatter (JSON in production)."""
    from app.config import get_settings
    from app.config.logging import level, stdlib_formatter

    settings = get_settings()
    formatter = stdlib_formatter(settings)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"generic": formatter, "access": formatter},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "_granian": {"handlers": ["console"], "level": level(settings), "propagate": False},
            "granian.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces

    backpressure = os.environ.get("GRANIAN_BACKPRESSURE")
    Granian(
        TARGET,
        factory=True,
        interface=Interfaces.ASGI,
        address=os.environ.get("HOST") or "127.0.0.1",
        port=int(os.environ.get("PORT") or 8000),
        workers=1,
        backpressure=int(backpressure) if backpressure else None,
        log_dictconfig=log_config(),
        workers_kill_timeout=WORKERS_KILL_TIMEOUT_S,
    ).serve()


if __name__ == "__main__":
    main()
