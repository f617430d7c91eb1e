"""`make run` in services mode keeps serving when a worker or the scheduler dies (issue 18).

Found by issue 18: honcho stopped the whole stack, web included, as soon as one worker
process died. `python -m app.supervisor` (what `make run` runs) starts the dead process
again and logs it; the others are left alone.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from app.config import get_settings
from app.supervisor import STOP_SECONDS, read_procfile, with_env_file
from app.workers.heartbeat import WorkerInfo
from tests.processes import ROOT, eventually, live_members, live_workers
from tests.servers import BIN, LiveServer, free_port, spawn, wait_ready

pytestmark = pytest.mark.services


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = parent(pid)
    return False


def task_workers(supervisor: int) -> dict[int, WorkerInfo]:
    """The live workers of the `tasks` queue that `supervisor` started, by pid, from their heartbeats."""
    return {
        info.pid: info
        for info in live_workers(get_settings().redis_url)
        if info.queues == ("tasks",) and descends_from(info.pid, supervisor)
    }


def test_the_procfile_is_read_as_honcho_reads_it(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("# comment\n\nweb: litestar run --port ${PORT:-8000}\nworker: dramatiq app.workers\n")
    assert read_procfile(procfile) == [
        ("web", "litestar run --port ${PORT:-8000}"),
        ("worker", "dramatiq app.workers"),
    ]
    names = [name for name, _ in read_procfile(ROOT / "Procfile")]
    assert names == ["web", "worker", "mailer", "housekeeper", "scheduler"]


def test_the_processes_see_values_set_only_in_dot_env(tmp_path: Path) -> None:
    """As with honcho: `WORKER_POLL_MS=250` in .env reaches the Procfile's `${WORKER_POLL_MS:-1000}`."""
    env_file = tmp_path / ".env"
    env_file.write_text("WORKER_POLL_MS=250\nPORT=9000\n")
    merged = with_env_file({"PORT": "8123", "PATH": "/bin"}, env_file)
    assert merged == {"WORKER_POLL_MS": "250", "PORT": "8123", "PATH": "/bin"}  # the environment wins
    assert with_env_file({"PATH": "/bin"}, tmp_path / "missing.env") == {"PATH": "/bin"}


def test_a_killed_worker_is_started_again_and_the_web_app_keeps_serving(migrated: None) -> None:
    port = free_port()
    command = [str(BIN / "python"), "-m", "app.supervisor", "Procfile"]
    supervisor = spawn("supervisor", command, ROOT, env={"LOG_LEVEL": "INFO", "PORT": str(port)})
    server = LiveServer(url=f"http://127.0.0.1:{port}", processes=[supervisor])
    try:
        wait_ready(server)
        (pid, first) = eventually(
            lambda: next(iter(task_workers(supervisor.popen.pid).items()), None), timeout=60, what="a tasks worker"
        )
        # The `dramatiq` main process and its worker process: the whole group, as a crash or the OOM killer would.
        group = os.getpgid(pid)
        os.killpg(group, signal.SIGKILL)
        eventually(lambda: not live_members(group), timeout=10, what="the worker's processes to be gone")
        for _ in range(10):  # the web app answers all along
            assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200
            time.sleep(0.2)
        again = eventually(
            lambda: [
                info for info in task_workers(supervisor.popen.pid).values() if info.id != first.id and info.pid != pid
            ],
            timeout=120,
            what="a new tasks worker",
        )
        assert again
        assert "worker exited with code" in supervisor.output()
        assert supervisor.popen.poll() is None
    finally:
        supervisor.stop(signal.SIGINT, timeout=30)
    assert "web stopped" in supervisor.output()


def test_stopping_waits_for_every_process_a_line_started_and_kills_what_stays(tmp_path: Path) -> None:
    """A Procfile line runs in a shell that ends at once on SIGTERM while what it started may still be
    stopping (a Dramatiq CLI and its workers): the supervisor waits for the whole process group, and
    kills what still runs after STOP_SECONDS. Seen before: `make run` (and every test run) left the
    housekeeper's `dramatiq` running after the supervisor had said "housekeeper stopped"."""
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        # Stops 2 s after its SIGTERM, saying so.
        "slow: sh -c 'trap \"sleep 2; echo slow is done; exit 0\" TERM; while :; do sleep 0.1; done'\n"
        # Ignores SIGTERM (as does `sleep`, which inherits that).
        "stubborn: sh -c 'trap \"\" TERM; while :; do sleep 0.1; done'\n"
    )
    supervisor = spawn("supervisor-stop", [str(BIN / "python"), "-m", "app.supervisor", str(procfile)], tmp_path)
    try:
        groups = eventually(
            lambda: (
                (found := dict(re.findall(r"started (\w+) \(pid (\d+)\)", supervisor.output()))).keys()
                == {"slow", "stubborn"}
                and all(len(live_members(int(pid))) >= 2 for pid in found.values())  # the shell and what it started
                and {name: int(pid) for name, pid in found.items()}
            ),
            timeout=30,
            what="both lines started",
        )
        assert supervisor.stop(signal.SIGINT, timeout=STOP_SECONDS + 20) == 0
    finally:
        supervisor.stop(signal.SIGKILL)
    output = supervisor.output()
    assert output.index("slow is done") < output.index("slow stopped"), output
    assert "stubborn did not stop within" in output, output
    assert {name: live_members(group) for name, group in groups.items()} == {"slow": [], "stubborn": []}
