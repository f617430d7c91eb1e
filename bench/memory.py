"""Idle memory: resident memory of the web process and of a worker, against a bare interpreter and a hello app.

Every process is started the way an operator starts it, each with its children: the web
app with `python -m app.web.serve` as the Procfile and the image run it (granian's main
process, which does not import the app, and its one worker), and for comparison with
`litestar run` (the CLI process, granian's main process and its one worker), a
worker with `dramatiq app.workers --processes 1 --threads 8` (the CLI and its worker
process), a minimal Litestar app (`hello_app` below, one route, granian's plugin) with
`litestar run` too, and a bare `python -c` interpreter. The service runs in services mode
against its own database and redis-server. After start-up each serves a few requests
(the worker runs a few tasks), then after a pause its memory is read from /proc: VmRSS
summed over the process tree (pages shared between a parent and its forked children are
counted in each), and Pss (each shared page split between the processes that map it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from litestar import Litestar, get
from litestar_granian import GranianPlugin

from bench import Section, run_alone, table

if TYPE_CHECKING:
    from tests.servers import Process

    from bench.service_stack import ServiceStack

SETTLE_S = 3.0
REQUESTS = 20
TASKS = 5
_ROOT = Path(__file__).resolve().parents[1]


@get("/health/live", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"status": "ok"}


#: The baseline app: Litestar with one route and nothing else, served like the service.
hello_app = Litestar(route_handlers=[hello], plugins=[GranianPlugin()], logging_config=None)


class Footprint:
    def __init__(self, label: str, pid: int) -> None:
        from bench.service_stack import process_tree, pss_kib, rss_kib

        pids = process_tree(pid)
        self.label = label
        self.members = [(_name(p, root=p == pid), rss_kib(p)) for p in pids]
        self.rss_kib = sum(kib for _, kib in self.members)
        self.pss_kib = sum(pss_kib(p) for p in pids)

    def member(self, name: str) -> int:
        """The VmRSS (KiB) of the tree's processes with this name."""
        return sum(kib for member, kib in self.members if member == name)

    def breakdown(self) -> str:
        return ", ".join(f"{name} {_mib(kib)}" for name, kib in self.members)


def _name(pid: int, *, root: bool) -> str:
    """A short name for a process: what it runs (granian's processes rename themselves)."""
    try:
        words = [w for w in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if w]
    except OSError:
        return "?"
    line = " ".join(words)
    if "app.web.serve" in line:
        return "web process"
    if "granian" in line:
        return "granian worker" if "worker-" in line else "granian main"
    if "litestar" in line:
        return "litestar CLI"
    if "dramatiq" in line:
        return "dramatiq CLI" if root else "dramatiq worker"
    return "python"


def _exercise_web(url: str) -> None:
    """Sign in and read: the first requests load what the hot paths need."""
    import httpx

    from bench.service_stack import login

    token = login(url, "reader")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for number in range(TASKS):
            body = {"kind": "demo", "params": {"steps": 3, "step_ms": 10}, "title": f"memory {number}"}
            client.post("/api/v1/tasks", json=body).raise_for_status()
        for _ in range(REQUESTS):
            client.get("/api/v1/tasks?limit=20").raise_for_status()
        client.get("/health/ready").raise_for_status()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = client.get("/api/v1/tasks?status=succeeded").json()
            if page["total"] >= TASKS:
                return
            time.sleep(0.2)
    raise RuntimeError("the worker did not finish the tasks within 60 s")


def _exercise_hello(url: str) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(REQUESTS):
            client.get("/health/live").raise_for_status()


def _start_web(stack: ServiceStack, command: str) -> Process:
    """The app's web process on the stack, started with `command` (`serve` or `litestar`), once it is live."""
    from tests.servers import BIN

    from bench.service_stack import free_port, wait_live

    stack.port = free_port()
    stack.url = f"http://{stack.host}:{stack.port}"
    if command == "serve":  # as the Procfile and the image run it
        args = [sys.executable, "-m", "app.web.serve"]
    else:
        args = [str(BIN / "litestar"), "run", "--host", stack.host, "--port", str(stack.port)]
    web = stack.spawn("web", args, {"HOST": stack.host, "PORT": str(stack.port)})
    wait_live(stack.url, web)
    return web


def measure() -> tuple[list[Footprint], list[tuple[str, int]]]:
    from tests.servers import BIN, spawn

    from bench.service_stack import free_port, seed, service_stack, stop, wait_live

    found: list[Footprint] = []
    bare = spawn("bare", [sys.executable, "-c", "import time; time.sleep(3600)"], _ROOT)
    try:
        time.sleep(1.0)
        found.append(Footprint("bare `python -c` interpreter", bare.popen.pid))
    finally:
        stop(bare)

    port = free_port()
    hello_args = [str(BIN / "litestar"), "--app", "bench.memory:hello_app", "run", "--port", str(port)]
    hello_proc = spawn("hello", hello_args, _ROOT, {"LITESTAR_APP": "bench.memory:hello_app", "PYTHONPATH": str(_ROOT)})
    try:
        hello_url = f"http://127.0.0.1:{port}"
        wait_live(hello_url, hello_proc)
        _exercise_hello(hello_url)
        time.sleep(SETTLE_S)
        found.append(Footprint("minimal Litestar app, `litestar run` (CLI + granian + 1 worker)", hello_proc.popen.pid))
    finally:
        stop(hello_proc)

    with service_stack("memory") as stack:
        seed(stack.database_url, ["reader"], 0)
        worker = stack.start_worker(8)
        for command, label in (
            ("serve", "`python -m app.web.serve` (one process, granian embedded)"),
            ("litestar", "`litestar run` (CLI + granian + 1 worker)"),
        ):
            web = _start_web(stack, command)
            stack.wait_ready()
            _exercise_web(stack.url)
            time.sleep(SETTLE_S)
            found.append(Footprint(f"the app's web process, {label}", web.popen.pid))
            stack.processes.remove(web)
            stop(web)
        found.append(Footprint("a worker, `dramatiq app.workers --processes 1 --threads 8`", worker.popen.pid))
        imports = _import_costs({**os.environ, **stack.env})
    return found, imports


#: What the web worker imports, in order, for `_import_costs`: granian first (as its main process
#: holds it before forking), then the libraries the app is made of, then the app.
IMPORTS = (
    "granian",
    "app.config.logging",
    "sqlalchemy.ext.asyncio",
    "litestar",
    "redis.asyncio",
    "advanced_alchemy.extensions.litestar",
    "jwt",
    "app.workers",
    "app.web.app",
)
_IMPORT_COSTS = """\
import importlib, re, sys
def rss(): return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = rss()
for name in sys.argv[1:]:
    importlib.import_module(name)
    now = rss()
    print(name, now - before)
    before = now
"""


def _import_costs(env: dict[str, str]) -> list[tuple[str, int]]:
    """VmRSS (KiB) each of IMPORTS adds to a fresh interpreter, imported one after the other."""
    import subprocess

    args = [sys.executable, "-c", _IMPORT_COSTS, *IMPORTS]
    out = subprocess.run(args, cwd=_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return [(name, int(kib)) for name, kib in (line.split() for line in out.splitlines())]


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def run() -> Section:
    (bare, hello, web, web_cli, worker), imports = measure()
    web_process, hello_worker = web.member("web process"), hello.member("granian worker")
    cli_worker, cli = web_cli.member("granian worker"), web_cli.member("litestar CLI")
    figures = {
        "bare_rss_mib": bare.rss_kib / 1024,
        "hello_rss_mib": hello.rss_kib / 1024,
        "web_rss_mib": web.rss_kib / 1024,
        "web_litestar_run_rss_mib": web_cli.rss_kib / 1024,
        "worker_rss_mib": worker.rss_kib / 1024,
        "hello_pss_mib": hello.pss_kib / 1024,
        "web_pss_mib": web.pss_kib / 1024,
        "web_litestar_run_pss_mib": web_cli.pss_kib / 1024,
        "worker_pss_mib": worker.pss_kib / 1024,
        "web_process_rss_mib": web_process / 1024,
        "web_litestar_run_worker_rss_mib": cli_worker / 1024,
        "hello_worker_rss_mib": hello_worker / 1024,
        "web_to_hello_rss_ratio": web.rss_kib / hello.rss_kib,
        "worker_to_bare_rss_ratio": worker.rss_kib / bare.rss_kib,
    }
    trees = (bare, hello, web, web_cli, worker)
    costs = ", ".join(f"`{name}` {_mib(kib)}" for name, kib in imports)
    rows = [[f.label, _mib(f.rss_kib), _mib(f.pss_kib), f.breakdown()] for f in trees]
    results = table(
        ["Process tree", "VmRSS, sum (MiB)", "Pss, sum (MiB)", "VmRSS per process (MiB)"], rows, align="lrrl"
    )
    body = f"""\
Resident memory when idle, after start-up and a little work. Each process tree is started as an
operator starts it and its memory read from `/proc/<pid>/status` (VmRSS) and
`/proc/<pid>/smaps_rollup` (Pss) for every process in it: the web app with `python -m
app.web.serve` as the Procfile and the image run it (one process: granian's embedded server
serving the app on the process's own event loop), in services mode against its own Postgres
database and redis-server, after a login, {TASKS} task submissions, {REQUESTS} task listings and
a readiness check; the same with `litestar run` (`make run` in embedded mode: the CLI process
that imports the app to launch granian, granian's main process, one granian worker); a worker
with `dramatiq app.workers --processes 1 --threads 8` (the CLI and its worker process) after
running those {TASKS} demo tasks. The baselines, in the same run: a bare `python -c`
interpreter, and a minimal Litestar app (one route, granian's plugin; `hello_app` in
`bench/memory.py`) started with `litestar run` and asked {REQUESTS} times. Figures are taken
{SETTLE_S:.0f} s after the last request. VmRSS counts pages shared between a parent and its
forked children once per process; Pss splits them, so its sum is the tree's real share of the
machine's memory. The target (issue 19) is a web process tree under 150 MiB of VmRSS.

{results}

The process that serves requests is {_mib(web_process)} MiB under `python -m app.web.serve`
and {_mib(cli_worker)} MiB as granian's worker under `litestar run` ({_mib(hello_worker)} MiB for the minimal
app). Under `litestar run` the CLI process, which only launches and watches granian, holds
{_mib(cli)} MiB more, and granian's main process imports the app's modules too, to unpickle
the log formatter it was handed; `python -m app.web.serve` has neither (until 2026-12 it ran
granian's main process beside its worker: 36 MiB more, mostly granian's native module twice).

Where the worker's memory goes: VmRSS each import adds to a fresh interpreter, one after the
other ({costs}): {_mib(sum(kib for _, kib in imports))} MiB over a bare interpreter, and building the
app (`create_app`: engines, templates, the API document) and the first requests add the rest.
The libraries are what the app serves with.

Ratios (VmRSS sums): the web process tree is **{figures["web_to_hello_rss_ratio"]:.1f}x** the
minimal Litestar app served with `litestar run`; a worker tree is
**{figures["worker_to_bare_rss_ratio"]:.1f}x** a bare interpreter.
"""
    return Section(title="Idle memory (web process and worker)", body=body, figures=figures)


if __name__ == "__main__":
    run_alone(run)
