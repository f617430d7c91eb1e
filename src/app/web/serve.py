"""Serve the web app with granian in one process: `python -m app.web.serve`.

granian's embedded server (`granian.server.embed`) runs the app's ASGI callable on this
process's own asyncio loop, behind granian's Rust HTTP stack: one process instead of a
supervisor and a forked worker. The supervisor held granian's native module and the log
formatter a second time (36 MiB of 175 idle, docs/benchmarks.md "Idle memory") and
restarting a dead worker is the job of whatever runs the process (app.supervisor, the
container runtime, systemd), as for the Dramatiq workers. `litestar run` would import the
whole app in a CLI process only to launch granian; `make run` in embedded mode keeps it.

SIGTERM or SIGINT stops it gracefully: the app's own handler (web/http/draining.py, chained
in front of the one installed here) ends the open event streams, granian stops accepting,
the app's shutdown runs, and the worker task is cancelled only if it has not finished after
WORKERS_KILL_TIMEOUT_S. The exit status is 1 when the app could not start (its lifespan
failed), so a supervisor sees the failure.

The options are those the app runs with under `litestar run`: HOST and PORT (127.0.0.1:8000),
GRANIAN_BACKPRESSURE (the Procfile's 20000), granian's own lines rendered like every other
log line (app.config.logging). The loop is uvloop's where it is installed, as granian's own CLI
picks it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

#: As `litestar run` passes: seconds the app may take to stop before its task is cancelled.
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


async def serve() -> int:
    # First: it reads the settings, so a bad one ends the process with its one line before the app's imports.
    log_dictconfig = log_config()
    from granian.constants import Interfaces
    from granian.server.embed import Server

    from app.web.app import create_app

    backpressure = os.environ.get("GRANIAN_BACKPRESSURE")
    server = Server(
        create_app,
        factory=True,
        interface=Interfaces.ASGI,
        address=os.environ.get("HOST") or "127.0.0.1",
        port=int(os.environ.get("PORT") or 8000),
        backpressure=int(backpressure) if backpressure else None,
        log_dictconfig=log_dictconfig,
    )
    server.workers_kill_timeout = WORKERS_KILL_TIMEOUT_S
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()
    return 1 if server.interrupt_children else 0


def _new_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (granian's `uvloop` extra), as `litestar run` picks it:
    about a tenth less CPU a request than asyncio's own (docs/benchmarks.md, ninth round)."""
    try:
        import uvloop
    except ImportError:  # Windows, PyPy: asyncio's loop
        return None
    return uvloop.new_event_loop


def main() -> None:
    with asyncio.Runner(loop_factory=_new_loop()) as runner:
        status = runner.run(serve())
    sys.exit(status)


if __name__ == "__main__":
    main()
