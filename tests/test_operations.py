"""What operators rely on: readiness, the processes of services mode, the CLI."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from litestar.testing import TestClient

from app.config import get_settings
from app.web.app import create_app
from tests.accounts import PASSWORD, new_identity, operator_cli
from tests.processes import eventually, live_members
from tests.servers import BIN, LiveServer, free_port, spawn, spawn_web, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def test_ready_when_database_broker_and_workers_answer(live_server: LiveServer) -> None:
    response = httpx.get(live_server.url + "/health/ready", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": "ok"}}


def test_the_web_process_serves_on_uvloop(migrated: None) -> None:
    """`python -m app.web.serve` (the Procfile's and the image's web process) runs its event loop on uvloop
    (granian's `uvloop` extra), as granian's CLI picks it: about a tenth less CPU a request than asyncio's own.
    The app says which loop serves it when it starts. (Stopping on uvloop: test_live_events.py's draining test.)"""
    web = spawn_web("web-loop", free_port(), ROOT, {"LOG_LEVEL": "INFO"})
    try:
        line = eventually(
            lambda: next((line for line in web.output().splitlines() if "web.started" in line), None),
            timeout=60,
            what="the web process's start line",
        )
    finally:
        web.stop()
    assert "uvloop.Loop" in line, line


def test_not_ready_names_what_failed_but_not_how(migrated: None) -> None:
    """Anyone may ask: the answer names the failed component; the exception (host, port, driver) is only logged."""
    unreachable = "postgresql://postgres@127.0.0.1:1/none"
    settings = msgspec.structs.replace(get_settings(), database_url=unreachable)
    with TestClient(create_app(settings)) as client:
        response = client.get("/health/ready")
        metrics = client.get("/metrics")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["database"] == "error: unavailable"
    assert body["checks"]["broker"] == "ok"
    assert metrics.status_code == 200
    for answer in (response.text, metrics.text):
        for leak in ("127.0.0.1", "Errno", "Error", "refused", "postgres"):  # what the exception says
            assert leak not in answer, (leak, answer[:2000])


def test_diagnostics_are_for_superusers_only(migrated: None) -> None:
    """Even where diagnostics are on (development, or DIAGNOSTICS_ENABLED=true in production)."""
    for app_env in ("development", "production"):
        settings = msgspec.structs.replace(get_settings(), app_env=app_env, diagnostics_enabled=True)
        with TestClient(create_app(settings)) as client:
            assert client.post("/api/v1/diagnostics/round-trip").status_code == 401
            identity = new_identity()
            assert client.post("/api/v1/auth/register", json=identity).status_code == 201
            login = {"username": identity["username"], "password": PASSWORD}
            member = {"Authorization": f"Bearer {client.post('/api/v1/auth/login', json=login).json()['access_token']}"}
            refused = client.post("/api/v1/diagnostics/round-trip", headers=member)
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            promoted = operator_cli("users", "promote", identity["username"])
            assert promoted.returncode == 0, promoted.stdout + promoted.stderr
            admin = {"Authorization": f"Bearer {client.post('/api/v1/auth/login', json=login).json()['access_token']}"}
            accepted = client.post("/api/v1/diagnostics/round-trip", headers=admin)
            assert accepted.status_code == 202, accepted.text
    off = msgspec.structs.replace(get_settings(), diagnostics_enabled=False)
    with TestClient(create_app(off)) as client:
        assert client.post("/api/v1/diagnostics/round-trip", headers=admin).status_code == 404


@pytest.mark.parametrize(("base_url", "hsts"), [("https://jobs.example", True), ("http://127.0.0.1:8000", False)])
def test_hsts_only_when_the_public_address_is_https(migrated: None, base_url: str, hsts: bool) -> None:
    settings = msgspec.structs.replace(get_settings(), public_base_url=base_url)
    with TestClient(create_app(settings)) as client:
        for path in ("/", "/health/live", "/api/v1/task-kinds"):
            header = client.get(path).headers.get("strict-transport-security")
            assert header == ("max-age=31536000; includeSubDomains" if hsts else None), (path, header)


def test_compose_publishes_the_mail_ui_on_this_machine_only() -> None:
    """Mailpit shows every email the app sends, reset links included."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    ports = compose["services"]["mailpit"]["ports"]
    assert ports, compose["services"]["mailpit"]
    assert all(str(port).startswith("127.0.0.1:") for port in ports), ports


@pytest.mark.services
def test_services_mode_runs_web_worker_and_scheduler_and_stops_them_together(migrated: None) -> None:
    """What `make run` does with DATABASE_URL and REDIS_URL set: app.supervisor runs the Procfile."""
    port = free_port()
    command = [str(BIN / "python"), "-m", "app.supervisor", "Procfile"]
    honcho = spawn("supervisor", command, ROOT, env={"LOG_LEVEL": "INFO", "PORT": str(port)})
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
    for name in ("web", "worker", "mailer", "housekeeper", "scheduler"):
        assert f"{name} stopped" in output, output
    # Nothing any line started is left running (a `dramatiq` CLI outlived its line's shell before).
    groups = {name: int(pid) for name, pid in re.findall(r"started (\w+) \(pid (\d+)\)", output)}
    assert {name: members for name, group in groups.items() if (members := live_members(group))} == {}
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health/live", timeout=2)
    assert code is not None
