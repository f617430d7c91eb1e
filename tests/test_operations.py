"""What operators rely on: readiness, the processes of services mode, the CLI."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from app.config import get_settings
from app.web.app import create_app
from tests.servers import BIN, LiveServer, free_port, spawn, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def test_ready_when_database_broker_and_workers_answer(live_server: LiveServer) -> None:
    response = httpx.get(live_server.url + "/health/ready", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": "ok"}}


def test_not_ready_names_what_failed(migrated: None) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:1/none"
    settings = msgspec.structs.replace(get_settings(), database_url=unreachable)
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["database"].startswith("error:")
    assert body["checks"]["broker"] == "ok"


@pytest.mark.services
def test_services_mode_runs_web_worker_and_scheduler_and_stops_them_together(migrated: None) -> None:
    """What `make run` does with DATABASE_URL and REDIS_URL set: honcho runs the Procfile."""
    port = free_port()
    command = [str(BIN / "honcho"), "start", "--procfile", "Procfile", "--port", str(port)]
    honcho = spawn("honcho", command, ROOT, env={"LOG_LEVEL": "INFO"})
    server = LiveServer(url=f"http://127.0.0.1:{port}", processes=[honcho])
    try:
        wait_ready(server)  # ready means a worker process sent its heartbeat
        deadline = time.monotonic() + 20
        while "Registered periodic actors" not in honcho.output():
            assert time.monotonic() < deadline, honcho.output()
            time.sleep(0.2)
        assert "maintenance.purge_events" in honcho.output()
    finally:
        code = honcho.stop(signal.SIGINT, timeout=30)  # Ctrl-C
    output = honcho.output()
    for name in ("web", "worker", "scheduler"):
        assert f"{name}.1 stopped" in output or f"{name}.1 | " in output, output
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health/live", timeout=2)
    assert code is not None
