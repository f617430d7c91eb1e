"""The app and workers for the jobs it sends, both in the test process, in either run mode.

Embedded, the app's own workers (a TestClient runs its lifespan, which starts them and
gives actors the app's event publisher); in services mode a Dramatiq worker on the run's
Redis beside it (the live server's worker, when one runs, may take some of the jobs: the
outcome is the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dramatiq
from litestar import Litestar
from litestar.testing import TestClient

from app.web.app import create_app
from app.workers import broker


@contextlib.contextmanager
def app_with_workers(mode: str) -> Iterator[TestClient[Litestar]]:
    if mode == "embedded":
        with TestClient(create_app()) as client:
            yield client
        return
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        worker.stop()
