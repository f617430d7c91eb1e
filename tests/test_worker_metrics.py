"""Worker metrics, the dashboard and alert rules that read them, and the worker's idle poll.

A `dramatiq` process group started by its own Procfile line (the housekeeper: the
`maintenance` queue) serves Prometheus text on its WORKER_METRICS_PORT; the web app serves
its own at /metrics. Every metric the shipped alert rules and Grafana dashboard query must
be one of those two really exposes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.supervisor import read_procfile
from app.workers.brokers import WakingRedisBroker
from app.workers.heartbeat import RedisHeartbeats
from app.workers.metrics import group_registry
from tests.processes import ROOT, eventually, live_members
from tests.servers import STARTUP_TIMEOUT, Process, free_port, spawn

ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "dashboard.json"
#: Not the Procfile's default: the test shows the worker polls at what WORKER_POLL_MS says.
POLL_MS = 250

#: PromQL's own words (functions, aggregations, keywords): what is left of an expression is metric names.
PROMQL_WORDS = frozenset(
    {
        "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "time",
        "absent", "clamp_min", "max_over_time", "and", "or", "unless", "bool", "offset", "vector", "topk",
    }
)  # fmt: skip


def metric_names_in(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, groupings, ranges and strings removed)."""
    expression = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    expression = re.sub(r"\{[^}]*\}", "", expression)
    expression = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expression)
    expression = re.sub(r"\[[^\]]*\]", "", expression)
    return {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expression) if word not in PROMQL_WORDS}


def exposed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every sample in Prometheus text."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def processed(worker_metrics: str, actor: str) -> float:
    return sum(
        value
        for labels, value in exposed(worker_metrics).get("dramatiq_messages_total", [])
        if labels["actor_name"] == actor
    )


def start_procfile_process(name: str, env: dict[str, str]) -> Process:
    """The Procfile's `name` line, run as the supervisor runs it (`/bin/sh -c`)."""
    command = dict(read_procfile(ROOT / "Procfile"))[name]
    return spawn(f"procfile-{name}", ["/bin/sh", "-c", command], ROOT, env)


class Housekeeper:
    """A housekeeper process group on Redis keys of its own: the run's shared live server also serves
    the maintenance queue, and a message it took would never be counted here."""

    def __init__(self, process: Process, metrics_url: str, namespace: str) -> None:
        self.process = process
        self.metrics_url = metrics_url
        self.namespace = namespace
        self.broker = WakingRedisBroker(url=os.environ["REDIS_URL"], namespace=namespace, middleware=[])
        self.heartbeats = RedisHeartbeats.of(os.environ["REDIS_URL"], namespace)

    def metrics(self) -> str:
        response = httpx.get(self.metrics_url, timeout=5)
        response.raise_for_status()
        return response.text

    def send(self, actor: str, **options: Any) -> None:
        """A message for one of the housekeeper's actors, on its own keys."""
        self.broker.enqueue(
            dramatiq.Message(queue_name="maintenance", actor_name=actor, args=(), kwargs={}, options=options)
        )


@pytest.fixture(scope="module")
def housekeeper(migrated: None) -> Iterator[Housekeeper]:
    port = free_port()
    namespace = f"{os.environ['REDIS_NAMESPACE']}-housekeeper"
    process = start_procfile_process(
        "housekeeper",
        {
            "WORKER_POLL_MS": str(POLL_MS),
            "MAINTENANCE_WORKER_METRICS_PORT": str(port),
            "LOG_LEVEL": "INFO",
            "REDIS_NAMESPACE": namespace,
        },
    )
    worker = Housekeeper(process, f"http://127.0.0.1:{port}/metrics", namespace)

    def serving() -> bool:
        assert process.popen.poll() is None, process.output()[-3000:]
        try:
            worker.metrics()
            return True
        except httpx.HTTPError:
            return False

    try:
        eventually(serving, timeout=STARTUP_TIMEOUT, what="the housekeeper's metrics port", interval=0.5)
        yield worker
    finally:
        process.stop()  # its keys start with the run's namespace: the run forgets them at its end
        # Not only the line's shell: the dramatiq under it and its processes end too (a deadlock in the logging of
        # its SIGTERM handler once kept the metrics fork process, and so the worker, running for good).
        group = process.popen.pid
        try:
            eventually(lambda: not live_members(group), timeout=30, what="every process of the housekeeper's group")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@pytest.fixture(scope="module")
def web_metrics(migrated: None) -> str:
    """The web app's /metrics after it answered a request (request metrics appear with the first one)."""
    from litestar.testing import TestClient

    from app.web.app import create_app

    with TestClient(create_app()) as client:
        assert client.get("/login").status_code == 200  # /health and /metrics are not counted
        response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


@pytest.mark.services
def test_a_procfile_worker_polls_as_worker_poll_ms_says(housekeeper: Housekeeper) -> None:
    """Dramatiq's own setting, dramatiq_worker_timeout, set by the Procfile: no patched defaults."""

    def own_beat() -> Any:
        return next(
            (w for w in housekeeper.heartbeats.alive() if _in_group(w.pid, housekeeper.process.popen.pid)),
            None,
        )

    beat = eventually(own_beat, timeout=30, what="the housekeeper's heartbeat")
    assert beat.queues == ("maintenance",)
    assert beat.poll_ms == POLL_MS
    assert "worker.poll_differs" not in housekeeper.process.output()


@pytest.mark.services
def test_the_worker_counts_the_messages_it_processes(housekeeper: Housekeeper) -> None:
    before = processed(housekeeper.metrics(), "tasks.sweep")
    for _ in range(3):
        housekeeper.send("tasks.sweep")
    eventually(
        lambda: processed(housekeeper.metrics(), "tasks.sweep") >= before + 3,
        timeout=60,
        what="three more tasks.sweep messages counted",
        interval=0.3,
    )
    samples = exposed(housekeeper.metrics())
    durations = [labels for labels, _ in samples["dramatiq_message_duration_milliseconds_count"]]
    assert {"queue_name": "maintenance", "actor_name": "tasks.sweep"} in durations
    beats = {labels["queue"]: value for labels, value in samples["app_worker_heartbeat_timestamp_seconds"]}
    assert set(beats) == {"maintenance"}


@pytest.mark.services
def test_the_worker_counts_the_messages_that_fail(housekeeper: Housekeeper) -> None:
    """No token: the actor raises TypeError; retried once, then given up (dead-lettered)."""
    housekeeper.send("diagnostics.round_trip", max_retries=1, min_backoff=10, max_backoff=10)

    def counted(name: str) -> float:
        """Over every queue label: Dramatiq counts a retry on the delay queue (`maintenance.DQ`)."""
        samples = exposed(housekeeper.metrics()).get(name, [])
        return sum(value for labels, value in samples if labels["actor_name"] == "diagnostics.round_trip")

    # Each counter is its own file that the exporter reads: one scrape saw the reject and only one error (the
    # second written a moment later), so wait for both.
    eventually(
        lambda: counted("dramatiq_message_rejects_total") and counted("dramatiq_message_errors_total") == 2,
        timeout=60,
        what="the message given up after its two errors",
        interval=0.3,
    )
    # Dramatiq counts each enqueue of a retried message: onto the delay queue, and back when it is due.
    assert counted("dramatiq_message_retries_total") >= 1
    assert counted("dramatiq_message_rejects_total") == 1


@pytest.mark.services
def test_the_alert_rules_read_only_exposed_metrics(housekeeper: Housekeeper, web_metrics: str) -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "QueueBacklog",
        "WorkerFailureRate",
        "WorkerHeartbeatMissing",
        "WebServerErrors",
    }
    available = set(exposed(housekeeper.metrics())) | set(exposed(web_metrics))
    for rule in rules:
        assert {"expr", "for", "labels", "annotations"} <= set(rule), rule["alert"]
        used = metric_names_in(rule["expr"])
        assert used, rule["alert"]
        assert used <= available, f"{rule['alert']} reads {sorted(used - available)}, which nothing exposes"


@pytest.mark.services
def test_the_dashboard_queries_only_exposed_metrics(housekeeper: Housekeeper, web_metrics: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    expressions = {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in panels}
    assert all(expressions.values()), "every panel has a query"
    available = set(exposed(housekeeper.metrics())) | set(exposed(web_metrics))
    used = {name for exprs in expressions.values() for expr in exprs for name in metric_names_in(expr)}
    assert used <= available, f"the dashboard reads {sorted(used - available)}, which nothing exposes"
    assert {
        "app_queue_depth",
        "dramatiq_messages_total",
        "dramatiq_message_errors_total",
        "dramatiq_message_duration_milliseconds_bucket",
        "app_worker_heartbeat_timestamp_seconds",
        "app_requests_total",
        "app_request_duration_seconds_bucket",
        "app_sse_connections",
    } <= used


def test_expressions_are_read_for_metric_names() -> None:
    expression = (
        'sum by (queue) (rate(dramatiq_messages_total{queue_name=~"$queue"}[5m])) / '
        'clamp_min(max without (instance) (app_queue_depth{queue="tasks"}), 1) > 0.5'
    )
    assert metric_names_in(expression) == {"dramatiq_messages_total", "app_queue_depth"}


def test_a_scrape_while_a_process_creates_its_metric_file_reads_the_others(tmp_path: Path) -> None:
    """A process creates its file (opens it, then sizes it) on its first value of a kind; a scrape in between
    answered 500 for the whole group (seen in CI). The file being created holds nothing yet: skipped."""
    from prometheus_client import generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    written = MmapedDict(str(tmp_path / "counter_101.db"))
    labels = ["queue_name", "actor_name"]
    key = mmap_key("dramatiq_messages", "dramatiq_messages_total", labels, ["maintenance", "tasks.sweep"], "Messages")
    written.write_value(key, 3.0, 0.0)
    written.close()
    (tmp_path / "counter_102.db").touch()  # opened by its process, not sized yet

    text = generate_latest(group_registry(tmp_path)).decode()

    assert processed(text, "tasks.sweep") == 3


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False
