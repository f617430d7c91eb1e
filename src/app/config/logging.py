"""One structlog setup for every process: JSON lines in production, readable lines in development.

Context (request id, user id, task id) is carried in structlog's contextvars and merged
into every line; the standard library's loggers (dramatiq, granian, sqlalchemy) are
rendered through the same processors so that a process writes one format only.
"""

from __future__ import annotations

import importlib.util
import logging
import logging.config
import sys
import threading
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from app.config.redaction import redact_secrets
from app.config.settings import Settings


def _pre_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,  # no emailed link's token in any line (app.config.redaction)
    ]


def _render(settings: Settings) -> list[Processor]:
    if settings.json_logs:
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    colors = sys.stderr.isatty()
    # Tracebacks without the frames' local variables: those hold passwords, tokens and request scopes.
    tracebacks = (
        structlog.dev.RichTracebackFormatter(show_locals=False, color_system="truecolor" if colors else None)
        if importlib.util.find_spec("rich") is not None
        else structlog.dev.plain_traceback
    )
    return [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=tracebacks)]


def level(settings: Settings) -> int:
    return logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)


def structlog_processors(settings: Settings) -> list[Processor]:
    """The processor chain of structlog loggers, ending in the renderer."""
    return [*_pre_chain(), *_render(settings)]


def stdlib_formatter(settings: Settings) -> dict[str, Any]:
    """A logging.config formatter entry rendering standard-library records like structlog's."""
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [*_pre_chain(), structlog.stdlib.add_logger_name],
        "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_render(settings)],
    }


def stdlib_logging_config(settings: Settings, stream: Any = "ext://sys.stderr") -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"standard": stdlib_formatter(settings)},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "standard", "stream": stream}},
        "root": {"handlers": ["stderr"], "level": level(settings)},
    }


class OneWriterAtATime:
    """A stream whose writes hold one lock, for structlog's logger and logging's handler alike.

    Each of them locks only itself. In a `dramatiq` worker process stderr is a pipe to the CLI whose
    every write is a message: a long one (a traceback over 16 KiB) is sent in two parts, and another
    thread's line sent between them broke the stream, so the CLI lost every later line of that
    process (a test waiting for a warning saw none; stray bytes of a message's length in the log).

    A signal handler that logs (Dramatiq's, on SIGTERM) runs in the thread it interrupts, maybe in the
    middle of that thread's own write: it must neither wait for the lock that thread holds (with a plain
    lock, a worker's metrics fork process whose SIGTERM came during a write deadlocked, and the worker
    never exited: test runs and `make run` left it behind) nor write inside the message being sent. Its
    line waits (`_pending`) and goes right after that message.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.RLock()
        self._writing = False  # this lock's holder is inside a write of the stream
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            if self._writing:  # a signal handler interrupted this thread's write: after it, not inside it
                self._pending.append(text)
                return len(text)
            self._writing = True
            try:
                written = self._stream.write(text)
                self._write_pending()
            finally:
                self._writing = False
            return written

    def flush(self) -> None:
        with self._lock:
            if self._writing:
                return
            self._writing = True
            try:
                self._write_pending()
                self._stream.flush()
            finally:
                self._writing = False

    def _write_pending(self) -> None:
        while self._pending:
            self._stream.write(self._pending.pop(0))

    def isatty(self) -> bool:
        return self._stream.isatty()


def configure_logging(settings: Settings) -> None:
    """Configure structlog and route the standard library's logging through it (workers, CLI)."""
    stream = OneWriterAtATime(sys.stderr)
    structlog.configure(
        processors=structlog_processors(settings),
        wrapper_class=structlog.make_filtering_bound_logger(level(settings)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(stdlib_logging_config(settings, stream))
