"""Login storm: does password hashing keep the event loop free? /health/live latency while 50 users sign in.

One web process of the real app in services mode (its own Postgres database and
redis-server, granian via `litestar run`), with the default argon2id settings. 50 users
are seeded directly in the database, all with one real hash of the same password (a
hash carries its own salt and costs the same to verify). A separate process (so that
its work does not share this one's interpreter) sends the 50 logins at once, one per user,
over 50 connections, ROUNDS times. Meanwhile this process asks for /health/live over one
kept-alive connection every PROBE_GAP_S and times each answer; the baseline is the same
probe against the same process while it is idle, just before the storm.

`python -m bench.login_storm storm URL ROUNDS USER...` is the storm process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import Section, percentiles, run_alone, table

USERS = 50
ROUNDS = 3
IDLE_PROBES = 300
PROBE_GAP_S = 0.01
ROUND_GAP_S = 1.0
TARGET_P99_MS = 50.0
PERCENTILES = (50, 90, 99)
_ROOT = Path(__file__).resolve().parents[1]


# --- the storm process -----------------------------------------------------------------------


async def _storm(url: str, rounds: int, users: list[str]) -> dict[str, object]:
    import httpx

    from bench.service_stack import PASSWORD

    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    windows: list[tuple[float, float]] = []
    statuses: dict[str, int] = {}
    durations: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def login(username: str) -> None:
            began = time.perf_counter()
            response = await client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
            durations.append((time.perf_counter() - began) * 1000)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

        for number in range(rounds):
            if number:
                await asyncio.sleep(ROUND_GAP_S)
            began = time.time()
            await asyncio.gather(*(login(username) for username in users))
            windows.append((began, time.time()))
    return {"windows": windows, "statuses": statuses, "durations": durations}


def storm(url: str, rounds: int, users: list[str]) -> None:
    print(json.dumps(asyncio.run(_storm(url, rounds, users))), flush=True)


# --- the probe -------------------------------------------------------------------------------


def _probe(url: str, stop: threading.Event, limit: int | None = None) -> list[tuple[float, float]]:
    """(wall time, milliseconds) of sequential GET /health/live until `stop` is set or `limit` probes are done."""
    import httpx

    samples: list[tuple[float, float]] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set() and (limit is None or len(samples) < limit):
            at = time.time()
            began = time.perf_counter()
            response = client.get("/health/live")
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"/health/live answered {response.status_code}")
            samples.append((at, elapsed))
            time.sleep(PROBE_GAP_S)
    return samples


def measure() -> tuple[list[float], list[float], dict[str, object], float]:
    from bench.service_stack import seed, service_stack

    time_cost, memory_kib, parallelism, threads = _hashing_defaults()
    argon2 = {  # the defaults, stated: the caller's environment may hold the tests' cheap ones
        "ARGON2_TIME_COST": str(time_cost),
        "ARGON2_MEMORY_KIB": str(memory_kib),
        "ARGON2_PARALLELISM": str(parallelism),
        "PASSWORD_HASH_THREADS": str(threads),
    }
    users = [f"storm{number:02d}" for number in range(USERS)]
    with service_stack("login_storm", argon2) as stack:
        seed(stack.database_url, users, 0)
        stack.start_web()
        url = stack.url
        _probe(url, threading.Event(), limit=50)  # warm-up: connections, first-request work
        idle = [ms for _, ms in _probe(url, threading.Event(), limit=IDLE_PROBES)]
        command = [sys.executable, "-m", "bench.login_storm", "storm", url, str(ROUNDS), *users]
        storming = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, text=True)
        stop_probe = threading.Event()
        found: list[list[tuple[float, float]]] = []
        prober = threading.Thread(target=lambda: found.append(_probe(url, stop_probe)))
        prober.start()
        output, _ = storming.communicate(timeout=600)
        stop_probe.set()
        prober.join()
        if storming.returncode != 0:
            raise RuntimeError(f"the storm process failed with {storming.returncode}")
    result: dict[str, object] = json.loads(output)
    windows = [(float(a), float(b)) for a, b in result["windows"]]  # type: ignore[attr-defined]
    during = [ms for at, ms in found[0] if any(a <= at <= b for a, b in windows)]
    storm_seconds = sum(b - a for a, b in windows)
    return idle, during, result, storm_seconds


def run() -> Section:
    time_cost, memory_kib, parallelism, threads = _hashing_defaults()
    nice = _hashing_nice()
    idle, during, result, storm_seconds = measure()
    statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
    logins = statuses.get("200", 0)
    failed = sum(statuses.values()) - logins
    rate = logins / storm_seconds
    idle_cuts, storm_cuts = percentiles(idle, PERCENTILES), percentiles(during, PERCENTILES)
    login_cuts = percentiles(result["durations"], (50, 99))  # type: ignore[arg-type]
    figures = {f"idle_p{p}_ms": v for p, v in idle_cuts.items()}
    figures |= {f"storm_p{p}_ms": v for p, v in storm_cuts.items()}
    figures |= {
        "logins_per_s": rate,
        "login_p50_ms": login_cuts[50],
        "login_p99_ms": login_cuts[99],
        "failed_logins": float(failed),
        "p99_ratio": storm_cuts[99] / idle_cuts[99],
    }
    rows = [
        [label, f"{len(samples)}", *(f"{cuts[p]:.1f}" for p in PERCENTILES), f"{max(samples):.1f}"]
        for label, samples, cuts in (
            ("idle (baseline)", idle, idle_cuts),
            (f"during the storm ({USERS} concurrent logins)", during, storm_cuts),
        )
    ]
    probes = table(["/health/live", "probes", *(f"p{p} (ms)" for p in PERCENTILES), "max (ms)"], rows, align="lrrrrr")
    verdict = "met" if storm_cuts[99] < TARGET_P99_MS else "not met"
    body = f"""\
Whether signing in keeps the event loop free. One web process of the real service in
services mode (granian via `litestar run`, one worker, its own database and redis-server)
with the default password hashing: argon2id t={time_cost}, {memory_kib // 1024} MiB, p={parallelism},
at most {threads} hashes at a time (`PASSWORD_HASH_THREADS`), in worker threads
(`app.domain.accounts.passwords`). {USERS} users are seeded in the database with one real
hash of the same password; a separate process sends the {USERS} logins at once (one per
user, so the per-user failure limit plays no part; only failures count towards it anyway),
{ROUNDS} times with {ROUND_GAP_S:.0f} s between. Meanwhile one client asks for `/health/live` on
a kept-alive connection every {PROBE_GAP_S * 1000:.0f} ms and times each answer; only probes
sent while logins were in flight count. The baseline is {IDLE_PROBES} probes of the same
process when idle, just before.

Target: p99 of `/health/live` under {TARGET_P99_MS:.0f} ms during the storm. Result:
**{storm_cuts[99]:.1f} ms** (idle: {idle_cuts[99]:.1f} ms, {figures["p99_ratio"]:.1f}x): {verdict}.
{logins} logins succeeded ({failed} failed) at **{rate:.1f} logins/s**; a login took
{login_cuts[50]:,.0f} ms at the median and {login_cuts[99]:,.0f} ms at p99 (they queue for the
hashing threads).

{probes}

Profile and fix. Hashing already ran off the event loop (anyio worker threads, at most
`PASSWORD_HASH_THREADS` at once), and argon2-cffi releases the GIL while it hashes, yet
before the fix the first run of this benchmark measured `/health/live` at p50 25.7 ms,
p90 101 ms and p99 230 ms during the storm (idle: p50 5.2 ms, p99 79.5 ms; 3.0 logins/s):
not blocking but starvation. Four hashes with four lanes each are sixteen busy threads on
a two-core machine, and the loop thread got its turn on a core like any of them. Now
(`app.domain.accounts.passwords`) hashing runs in a thread pool of its own whose threads
lower their own CPU priority (nice +{nice}, which argon2's lane threads inherit), so
the kernel runs the loop thread first whenever it has work; the hashes take the rest of the
CPU. In a direct check (the loop timing 5 ms sleeps while 24 verifies run) the loop's lag
went from p50 2.4 ms and p99 55 ms to p50 0.24 ms and p99 18-25 ms, with the same
logins/s. The storm also showed that each waiting login held a pooled database
connection (the user's read left its transaction open through the queue for the hashing
threads, up to 27 s here against the pool's 30 s timeout): the read's transaction now ends
before the check (`AccountService.authenticate`). In successive runs after each fix:
p99 230 ms (3.0 logins/s), then 127-140 ms (1.8-2.0 logins/s, other tests running), then
73 ms (3.4 logins/s). What remains of the p99 is the CPU the loop thread still shares with
sixteen busy lanes (at nice +19 instead of +10 the direct check's p99 lag fell to about
10 ms, but hashes would then all but stop on a host whose other processes, Postgres or the
workers, keep the CPU busy) and this machine's other load, which the idle baseline shows
as well; logins/s falls when other processes want the CPU, since the hashes yield to them.
"""
    return Section(title="Login storm (argon2 off the event loop)", body=body, figures=figures)


def _hashing_nice() -> int:
    from app.domain.accounts.passwords import HASHING_NICE

    return HASHING_NICE


def _hashing_defaults() -> tuple[int, int, int, int]:
    """The service's default argon2 time cost, memory (KiB), parallelism, and hashing threads."""
    from app.config.settings import Settings

    defaults = Settings()
    return (
        defaults.argon2_time_cost,
        defaults.argon2_memory_kib,
        defaults.argon2_parallelism,
        defaults.password_hash_threads,
    )


if __name__ == "__main__":
    run_alone(run, {"storm": lambda url, rounds, *users: storm(url, int(rounds), list(users))})
