"""/health/live and /health/ready, for load balancers, orchestrators and `make run`'s users.

Anyone may call them, so a failed check answers with a fixed phrase ("error: unavailable")
and the exception itself (which can name hosts, users, paths or driver versions) goes
to the log (`health.check_failed`), where operators look.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.web.http.blocking import in_thread
from app.web.http.metrics import rabbitmq_counts
from app.workers.heartbeat import HeartbeatStore
from app.workers.queues import TASKS

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 3.0
UNAVAILABLE = "error: unavailable"
NO_WORKER = "error: no worker has sent a heartbeat recently"


class _NoWorker(Exception):
    """No worker heartbeat is fresh: the answer is NO_WORKER, nothing to log."""


async def _check_database(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return "ok"


async def _check_broker(broker: dramatiq.Broker) -> str:
    if isinstance(broker, RabbitmqBroker):
        await in_thread(rabbitmq_counts, broker, TASKS)
    elif (client := getattr(broker, "client", None)) is not None:  # Redis; the in-memory broker has none
        await in_thread(client.ping)
    return "ok"


async def _check_workers(heartbeats: HeartbeatStore) -> str:
    alive = await in_thread(heartbeats.alive)
    if not alive:
        raise _NoWorker
    return "ok"


async def _outcome(name: str, check: Any) -> str:
    """The check's answer: "ok", or a fixed phrase saying how it failed (the exception is logged, never answered)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return str(await check)
    except TimeoutError:
        log.warning("health.check_failed", check=name, error=f"no answer within {CHECK_TIMEOUT:.0f} s")
        return f"error: no answer within {CHECK_TIMEOUT:.0f} s"
    except _NoWorker:
        return NO_WORKER
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        log.warning("health.check_failed", check=name, error=f"{type(exc).__name__}: {exc}")
        return UNAVAILABLE


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get(
        "/live",
        operation_id="healthLive",
        summary="The process serves requests",
        description="200 while the process serves requests; it checks nothing else.",
        responses={
            HTTP_200_OK: ResponseSpec(
                dict[str, str],
                description="The process serves.",
                examples=[Example(summary="Serving", value={"status": "ok"})],
            )
        },
        opt={"skip_logging": True},
    )
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        operation_id="healthReady",
        summary="Database, broker and workers answer",
        description="200 when the database, the broker and at least one worker answer; 503 naming the ones that "
        "failed (each check answers `ok` or a fixed phrase; the cause is logged, never answered).",
        responses={
            HTTP_200_OK: ResponseSpec(
                dict[str, Any],
                description="Every check passed.",
                examples=[
                    Example(
                        summary="Every check passed",
                        value={"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": "ok"}},
                    )
                ],
            ),
            HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(
                dict[str, Any],
                description="A check failed: `checks` names it (the same shape as the 200, not a problem document).",
                examples=[
                    Example(
                        summary="No worker has sent a heartbeat",
                        value={"status": "error", "checks": {"database": "ok", "broker": "ok", "workers": NO_WORKER}},
                    )
                ],
            ),
        },
        opt={"skip_logging": True},
    )
    async def ready(
        self,
        db_engine: NamedDependency[AsyncEngine],
        broker: NamedDependency[dramatiq.Broker],
        heartbeats: NamedDependency[HeartbeatStore],
    ) -> Response[dict[str, Any]]:
        names = ("database", "broker", "workers")
        results = await asyncio.gather(
            _outcome("database", _check_database(db_engine)),
            _outcome("broker", _check_broker(broker)),
            _outcome("workers", _check_workers(heartbeats)),
        )
        checks = dict(zip(names, results, strict=True))
        healthy = all(result == "ok" for result in results)
        return Response(
            {"status": "ok" if healthy else "error", "checks": checks},
            status_code=HTTP_200_OK if healthy else HTTP_503_SERVICE_UNAVAILABLE,
        )
