"""Jobs on RabbitMQ (BROKER_URL=amqp://...): the same service with Dramatiq's RabbitMQ broker."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.accounts import signed_in_headers
from tests.servers import BIN, LiveServer, free_port, spawn, wait_ready

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.services
def test_a_task_runs_through_rabbitmq(migrated: None) -> None:
    if not _rabbitmq_answers():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("RabbitMQ does not answer on 127.0.0.1:5672 (CI must have it)")
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672; start it to run this test")
    env = {"BROKER_URL": AMQP, "REDIS_NAMESPACE": f"rabbit{uuid.uuid4().hex[:8]}"}
    port = free_port()
    web = spawn("web-amqp", [str(BIN / "litestar"), "run", "--host", "127.0.0.1", "--port", str(port)], ROOT, env)
    worker = spawn(
        "worker-amqp", [str(BIN / "dramatiq"), "app.workers", "--processes", "1", "--threads", "2"], ROOT, env
    )
    server = LiveServer(url=f"http://127.0.0.1:{port}", processes=[web, worker])
    try:
        wait_ready(server)
        with httpx.Client(base_url=server.url, timeout=20) as client:
            client.headers.update(signed_in_headers(client))
            task = client.post("/api/v1/tasks", json={"kind": "demo", "params": {"steps": 3, "step_ms": 10}}).json()
            deadline = time.monotonic() + 30
            while (current := client.get(f"/api/v1/tasks/{task['id']}").json())["status"] != "succeeded":
                assert current["status"] in ("queued", "running"), current
                assert time.monotonic() < deadline, (current, server.logs())
                time.sleep(0.1)
        # The web process sent the message to RabbitMQ and the worker took it from there: no Redis queue
        # of this namespace was involved (the web app would not have sent it anywhere else).
        assert current["result"] == {"steps": 3}
    finally:
        for process in (worker, web):
            process.stop()
