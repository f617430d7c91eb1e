"""Log context for jobs: the request id of the request that sent a job follows it to the worker.

Also `async_actor`: async actors run on the event loop thread of Dramatiq's AsyncIO
middleware, but a coroutine started there does not inherit the worker thread's
contextvars, so the context bound for the message is re-bound inside the coroutine.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import MessageProxy
from dramatiq.middleware import CurrentMessage, Middleware

from app.workers.queues import MAINTENANCE, queue_for
from app.workers.schedules import PeriodicActor

P = ParamSpec("P")
R = TypeVar("R")

#: The message an async actor is running for (Dramatiq's CurrentMessage does not reach the loop thread).
current_message: contextvars.ContextVar[dramatiq.Message[Any] | None] = contextvars.ContextVar(
    "current_message", default=None
)

#: Context keys that travel with a message from the sender to the worker.
CARRIED_KEYS = ("request_id", "user_id", "task_id")


class LogContext(Middleware):
    """Copies the sender's log context into message options and binds it while the message runs."""

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        context = structlog.contextvars.get_contextvars()
        for key in CARRIED_KEYS:
            if key in context and key not in message.options:
                message.options[key] = str(context[key])

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        carried = {key: message.options[key] for key in CARRIED_KEYS if key in message.options}
        structlog.contextvars.bind_contextvars(message_id=message.message_id, actor=message.actor_name, **carried)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


def async_actor(
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], dramatiq.Actor[P, R]]:
    """Declare an async actor that runs on the AsyncIO middleware's loop with the message's log context.

    An actor without a `queue_name` goes to the queue of its kind (app.workers.queues):
    periodic ones to `maintenance`, the others by their name's domain.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> dramatiq.Actor[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            loop_thread = get_event_loop_thread()
            if loop_thread is None:
                raise RuntimeError("The AsyncIO middleware is not running: async actors need it.")
            context = structlog.contextvars.get_contextvars()
            message = CurrentMessage.get_current_message()

            async def with_context() -> R:
                structlog.contextvars.bind_contextvars(**context)
                current_message.set(message)
                return await fn(*args, **kwargs)

            return loop_thread.run_coroutine(with_context())

        if "periodic" in options:
            options.setdefault("actor_class", PeriodicActor)
            options.setdefault("queue_name", MAINTENANCE)
        options.setdefault("queue_name", queue_for(options.get("actor_name", fn.__name__)))
        return dramatiq.actor(run, **options)

    return decorate
