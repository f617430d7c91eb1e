"""Worker metrics: Dramatiq's Prometheus middleware, with one exporter per worker process group.

`dramatiq app.workers` with WORKER_METRICS_PORT set serves Prometheus text at
`http://HOST:WORKER_METRICS_PORT/metrics`, summed over the group's processes: Dramatiq's
message counters, in-progress gauges and durations (`dramatiq_*`, labelled by queue and
actor) and the time of each queue's latest worker heartbeat
(`app_worker_heartbeat_timestamp_seconds`). Embedded, the workers live in the web process,
which never boots a Dramatiq worker process: this middleware is not installed there.

Dramatiq's middleware keeps its multiprocess files in one directory per machine and serves
on one port per machine (both read from the environment when it is imported). The Procfile
runs three process groups on one machine, so each group here takes its port from its
settings and keeps its files in a directory of its own, named after the group's main
process: a restarted group starts from empty files, and groups never add up each other's.

prometheus_client picks in-memory or file-backed values when it is first imported, by the
environment at that moment: nothing a worker process imports before it boots may import it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.middleware.prometheus import Prometheus

from app.config import Settings, get_settings
from app.workers.heartbeat import WorkerInfo
from app.workers.queues import QUEUES

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

HEARTBEAT_METRIC = "app_worker_heartbeat_timestamp_seconds"


def group_directory(settings: Settings) -> Path:
    """Where this process group's metric files live: both its worker processes and its exporter are
    children of the group's main `dramatiq` process, whose pid names the directory."""
    return settings.var_path / "worker-metrics" / f"{settings.worker_metrics_port}-{os.getppid()}"


class WorkerMetrics(Prometheus):
    """Dramatiq's Prometheus middleware, with a directory and port per process group and heartbeat times.

    It records only in a process that booted as a `dramatiq` worker process (the
    `process_boot` signal): a web or test process that runs a Worker of its own on this
    broker records nothing and serves nothing.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.directory: Path | None = None
        self.heartbeats: Any = None

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics]

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        directory = group_directory(self.settings)
        directory.mkdir(parents=True, exist_ok=True)
        # Dramatiq points prometheus_client at its machine-wide directory and defines its metrics;
        # a metric writes its file when its first labelled value is made, in the directory the
        # environment names then: this group's.
        super().after_process_boot(broker)  # type: ignore[no-untyped-call]
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # prometheus_client prefers it to the lower-case one
        import prometheus_client  # after the environment names the directory (see the module's docstring)

        self.heartbeats = prometheus_client.Gauge(
            HEARTBEAT_METRIC,
            "Unix time of the latest heartbeat of a worker process serving the queue",
            ["queue"],
            registry=None,
            multiprocess_mode="max",
        )
        self.directory = directory

    def record_beat(self, info: WorkerInfo) -> None:
        """For `Heartbeat(on_beat=...)`: the time of this process's beat, for each queue it serves."""
        if self.heartbeats is None:
            return
        for queue in info.queues or QUEUES:
            self.heartbeats.labels(queue).set(info.seen_at)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.directory is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), str(self.directory))  # type: ignore[no-untyped-call]

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.directory is not None:
            super().after_nack(broker, message)  # type: ignore[no-untyped-call]

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if self.directory is not None:
            super().after_enqueue(broker, message, delay)  # type: ignore[no-untyped-call]

    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.directory is not None:
            super().before_delay_message(broker, message)  # type: ignore[no-untyped-call]

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if self.directory is not None:
            super().before_process_message(broker, message)  # type: ignore[no-untyped-call]

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if self.directory is not None:
            super().after_process_message(broker, message, result=result, exception=exception)  # type: ignore[no-untyped-call]

    after_skip_message = after_process_message


def group_registry(directory: Path) -> CollectorRegistry:
    """A registry that reads the group's metric files, skipping any file a process is creating.

    prometheus_client creates a process's file (open, then size it) when the process makes its
    first value of a kind; a scrape that globbed the file in between read no header and failed
    the whole answer with a 500 (seen in CI). A file without its header holds no value yet.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    class WrittenFilesCollector(MultiProcessCollector):
        def collect(self) -> Any:
            files = [str(f) for f in directory.glob("*.db") if _has_header(f)]
            return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]

    registry = CollectorRegistry()
    WrittenFilesCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def _has_header(file: Path) -> bool:
    """Whether the file is past its creation: sized, so its used-length header can be read."""
    try:
        return file.stat().st_size >= 8
    except FileNotFoundError:  # a dead process's live gauge, removed since the glob
        return False


def serve_worker_metrics() -> int:
    """The exporter: Dramatiq runs it in a process of its own beside the group's worker processes.

    Serves the group's metric files until the group stops, then removes the directories that
    earlier runs on this port left behind (only once the port is ours: no live group uses them).
    """
    from prometheus_client import start_http_server

    settings = get_settings()
    directory = group_directory(settings)
    directory.mkdir(parents=True, exist_ok=True)
    _server, thread = start_http_server(
        settings.worker_metrics_port, addr=settings.host, registry=group_registry(directory)
    )
    for earlier in directory.parent.glob(f"{settings.worker_metrics_port}-*"):
        if earlier != directory:
            shutil.rmtree(earlier, ignore_errors=True)
    thread.join()
    return 0
