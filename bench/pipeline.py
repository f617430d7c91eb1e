"""Job pipeline throughput: demo tasks through the whole service against raw Dramatiq no-op actors.

Baseline: one worker process (`dramatiq.Worker`, 8 threads) drains no-op messages that the
benchmark sends to the same redis-server. Project: the same number of demo tasks
(`{steps: 1, step_ms: 0}`) submitted through `POST /api/v1/tasks` by a concurrent client
until all have succeeded, with one web process and one worker process (8 threads) in
services mode. Both rates run from the first send to the last message done.

`python -m bench.pipeline raw-worker REDIS_URL NAMESPACE THREADS` is the baseline's worker.
Run it alone with `python -m bench.pipeline` (Postgres and Redis must be running);
`BENCH_PIPELINE_TASKS=2000` runs fewer tasks (and messages) than the default 5,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import asyncpg
import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench import Section, percentiles, run_alone, table
from bench.service_stack import FAST_SIGN_UP, RawHttp, ServiceStack, service_stack

TASKS = int(os.environ.get("BENCH_PIPELINE_TASKS", "5000"))
SUBMISSIONS_ALONE = min(TASKS, 3000)  # the submissions-alone run, after 500 that warm it up
USERS = 8
CONNECTIONS = 32
WORKER_THREADS = 8
#: Far above what a run reaches (5,000 / 8 users), so the per-user cap never answers 429.
MAX_ACTIVE_TASKS = 1_000
RAW_QUEUE = "bench-noop"
RAW_NAMESPACE = "bench-raw"
TASK_BODY = {"kind": "demo", "params": {"steps": 1, "step_ms": 0}}
RUN_TIMEOUT_S = 300.0
POLL_S = 0.05

_ROOT = Path(__file__).resolve().parents[1]

#: What profiling found and what was changed, with the figures of this benchmark before and after.
PROFILE_AND_FIX = """\
**Profile and fix, first round.** Before (2,000 tasks): 15 tasks/s end to end, `POST
/api/v1/tasks` p50 950 ms; CPU per task 13.4 ms web, 26.3 ms worker. `py-spy record --gil`
showed SQLAlchemy's ORM as 58% of the worker's and 43% of the web process's busy time, and
backends `idle in transaction` between round trips. Changed: an event insert takes its
advisory locks in the same statement (a CTE feeding the INSERT); the active-task cap is
checked under the user's event lock with an index on `(user_id, status)`; the runner counts
the claim as a progress write and writes a held-back report with the end (two transactions
for a short task). After: 19 tasks/s, CPU per task 10.3 ms web, 16.3 ms worker.

**Second round (issue 19).** `py-spy record --gil` on the worker while this benchmark ran
(2,000 tasks): 35% of its busy samples in `Session.execute`, half of those in SQLAlchemy's
*compiler*: the notification insert (`postgresql.insert(...).on_conflict_do_nothing()`, like
SQLite's) is not cacheable (`inherit_cache = False`, its cache key is None), so it was compiled
afresh at every task's end; the rest was ORM DML (`update(Task)...returning(Task)` built ORM
objects, and the progress fix-up and the email flag were written back by a flush). In the web
process the create spent its time in the ORM flush of a new `Task`. Round trips per task, counted
from the code (Postgres; a pool checkout's ping, BEGIN and COMMIT included): submission 7 (ping,
BEGIN, lock, count, task INSERT, event INSERT, COMMIT), claim 7 (ping, BEGIN, claim, lock, count
again, event, COMMIT), end 8 (ping, BEGIN, UPDATE, event, notification, its event, the owner's
email flag, COMMIT): 22. Changed, with every guarantee kept:
- submission: after the user's lock, one Core statement counts the active tasks, inserts the
  task only under the cap and inserts its `task.updated` event from the inserted row (CTEs;
  its snapshot is taken after the lock, so the cap holds; the event id is drawn under the lock);
  no ORM object (`create` returns the TaskOut). 5 round trips.
- claim: the claim's RETURNING takes the owner's event locks itself (the count that follows is a
  statement of its own, so it sees every claim committed before the lock); on SQLite, one writer,
  the count again is skipped. 6 round trips.
- end: Core UPDATE returning the TaskOut's columns (the progress fill-up in the same SET); the
  notification in one cacheable text statement (`INSERT ... ON CONFLICT (dedupe_key) DO NOTHING`,
  the same SQL on both databases) that also marks its email pending when the owner wants one;
  both events (`task.updated`, `notification.created`) in one INSERT (`EventLog.record_several`,
  ids in the order given). 6 round trips. Progress writes and requeues are Core too.
So 17 round trips per task instead of 22; `Postgres transactions` stays 6 (three pool pings and
three transactions). Measured alternately on this machine (before, after, before, after; 2,000
tasks, load average 4-8 from other work): tasks/s end to end 77 and 112 -> 128 and 161;
submissions/s 161 and 212 -> 242 and 256; `POST /api/v1/tasks` p50 189 and 140 -> 127 and 125 ms;
CPU per task, web 3.8 and 3.4 -> 2.8 and 2.9 ms, worker 5.9 and 5.2 -> 3.6 and 3.5 ms, Postgres
4.4 and 3.9 -> 3.4 and 3.1 ms.

**Third round: a claim's cost grew with the queue.** On 2026-12-04 a run of 5,000 tasks finished
3 a second, not 112, with Postgres at 560 ms of CPU per task: the claim counted the owner's running
tasks once for every queued candidate (a correlated subquery per row), and each count read the
index entries of every finished task of that owner again until a vacuum marked them dead (`EXPLAIN
ANALYZE`: 140 ms per claim with 4,465 tasks queued, 25 heap fetches per candidate). Runs of 2,000
tasks, whose queue stays shorter, hid it. The claim (`app.domain.tasks.fairness.startable`) now
counts the running tasks once, grouped by owner (per capped kind in the same pass), and joins the
counts to the candidates: the same run does 111 tasks/s with Postgres at 4.5 ms per task.

**Fourth round: the pool's check.** Each of the three transactions began with a `SELECT 1` on the
connection taken from the pool (`_check_on_checkout`). A connection given back within the last
half second is now taken as it is (HikariCP's alive bypass window; a connection asyncpg saw close
is still refused without a round trip), so under load no check is sent: `Postgres transactions`
per task 5.9 -> 3.0. Full runs of `make bench` before and after (2026-12-04 22:25, 2026-12-05):
tasks/s end to end 114 -> 126 and 132, CPU per task web 3.70 -> 3.20 and 2.99 ms, worker 5.23 ->
4.55 and 4.40 ms, Postgres 4.89 -> 4.27 and 4.26 ms.

The target, 25% of raw Dramatiq (about 500 tasks/s here), is still out of reach on two cores: a
task costs about 10 ms of CPU in all (an authenticated HTTP request, three transactions, four
events written and published) against 0.2-0.3 ms for a no-op message, which bounds two cores at
roughly 200 tasks/s with nothing else running. What is left: one Redis PUBLISH per event, the
broker send in a thread, and in the web process Litestar's middleware and request body handling,
which now outweigh the create itself.

**Fifth round (2026-12-05).** `py-spy record --gil` on the worker under 8 connections of
submissions: the end of a task (`TaskRunner._write_end`: its UPDATE, the webhook outbox row,
the notification, both events, the PUBLISH) is a fifth of the worker's busy time, and about 6%
went to building that UPDATE anew for every task and computing its cache key; it is now built
once per shape with bind parameters (`_end_statement`). In the web process, with 32 connections
and no worker: 1.9-2.2 ms of CPU per submission at 440-490 submissions/s; taking out the
project's own five middlewares (client address, request id, security headers, NUL guard, the
unread-body drain) changed neither (2.0 ms); the broker send, in a worker thread with its
Redis round trips (the enqueue script, then the wake-up PUBLISH), is a sixth of the GIL's busy
samples. What is left is spread thin over the request (Litestar's routing, body and signature
handling, the middleware Litestar brings: sessions, authentication, CSRF, logging,
compression, metrics), SQLAlchemy and asyncpg for the one transaction, and the send: no single
step that a profile shows as avoidable, and two cores shared by the client, the web process,
the worker, Postgres and Redis bound the pipeline at about 200 tasks/s for 10 ms of CPU a task.
The transactions, event rows, locks and sends that are left are what the guarantees listed under
"Service against its peer" are made of; 25% of raw Dramatiq would need a task to cost under
4 ms of CPU in all, less than its three transactions alone cost Postgres and the worker here.

**Sixth round (2026-12-05): the claim read the whole queue.** `EXPLAIN ANALYZE` of the claim with
3,284 tasks queued: 4.5 ms and 3,162 buffers, since it read and sorted every queued task to find
the fairest; that was most of Postgres's 4.3 ms per task, and it grew with a greedy user's queue
for every other user. The claim now walks a partial index of the queued tasks one owner at a
time (a recursive skip scan) and each owner with room offers its oldest startable tasks
(`app.domain.tasks.fairness`, migration 0015): 1-2 ms with 8,000 queued. Its first full `make
bench` ran at 22 tasks/s with Postgres at 83 ms per task: the bench's database is new, so the
worker's prepared statements got generic plans made while the table was empty, and those plans
walked every queued task for each owner through the `(status, enqueued_at)` index, and again for
each queued task in the pick's join (`auto_explain`: claims of 15-27 s; 280 s for one claim with
8,000 queued and statistics from before the burst). The partial index's condition is now an
expression of the status, which that index cannot answer, and the pick's recheck and the UPDATE
carry no `status = 'queued'` to drive such a scan (1.5 ms with the same stale statistics;
`tests/test_claim_cost.py` counts the rows the plan reads). The pipeline alone, before and
after: 126 -> 195 tasks/s end to end, Postgres 4.27 -> 2.13 ms of CPU per task, worker 4.55 ->
3.22 ms.

**Seventh round (2026-12-05): round trips and publishes.** `pg_stat_statements` (with
`track_planning`) over 3,000 tasks: the claim is not planned again per execution in the
pipeline (54 plans for 3,016 calls: generic plans after each connection's first five), so
forcing generic plans would save nothing here; what `pg_stat_activity` sampled instead were
transactions `idle in transaction` while holding a user's event lock (the web process's event
loop, busy with 32 connections, slow to send its next statement) and others waiting for that
lock. `py-spy --gil` on the worker: SQLAlchemy's execution (session, compiled parameters,
greenlet, the asyncpg adapter) about a third of its busy time, the Redis publishes a ninth.
Changed, every guarantee kept: a transaction publishes one wake-up per channel (the end of a
task recorded `task.updated` and `notification.created` and published both; readers read the
table at any message), as a plain PUBLISH (Litestar's backend sends a Lua script, meant for
several channels); the claim's recount of its owner's running tasks is read by the insert of
its `running` event (`EventLog.record_unless`: nothing written over a cap, and the pick is
given back), one round trip fewer; the claim returns whether the task has a webhook (a task
gets one with its submission or never), so an end without one skips the outbox's statement;
the end's notification and its events are one statement (`EventLog.record_several_after`);
JSON is written with msgspec; the web's commits no longer copy the engine for
advanced-alchemy's cache listener (2% of a submission); blocking broker sends go through
asyncio's executor (45 instead of anyio's 90 us of CPU a call). Round trips to Postgres per
task (BEGIN and COMMIT included) 16 -> 13, Redis commands 15 -> 8. Before and after, the same
runs of 3,000 tasks: worker 3.3 -> 2.7-2.9 ms of CPU per task, its drain alone 310-330 ->
350-400 tasks/s; the peer benchmark alone 1.57x -> 1.69-1.74x.

**Eighth round (2026-12-05): the worker's statements straight through asyncpg.** Measured by
hand on this machine: a transaction of an UPDATE ... RETURNING and an INSERT cost the client
1.0 ms of CPU through an AsyncSession, 0.86 through an AsyncConnection, 0.55-0.59 through
asyncpg itself (SQLAlchemy's share: the cache key and execution context per statement, the
greenlet hops of its asyncpg adapter, the result, the session's begin and commit). The worker's
transactions (claim, progress, requeue, heartbeat, end) now run on Postgres through
`app.domain.driver`: the same Core statements, compiled once with SQLAlchemy's dialect (SQL,
parameter order, bind and result processors of their types), run with asyncpg's prepared
statements in an asyncpg transaction on a connection of the engine's pool; errors are
SQLAlchemy's and a broken or cut-off connection is invalidated, never pooled mid-transaction
(`tests/test_driver.py`). The claim's "not passed over" list became one array parameter (an
expanding IN changed the statement's text with the list's length). Same round trips. The peer
benchmark alone, before and after: worker 3.35 -> 2.20-2.67 ms of CPU per task; end to end
1.82x before, 1.69x, 1.88x and 1.77x after (the machine's noise; the web, 3.5-4.0 ms per task,
now bounds the run). Then the API's submission too (`POST /api/v1/tasks` in a driver transaction, no
session; the count of a user's unfinished tasks no longer an "expanding" IN, whose SQL SQLAlchemy
rendered again at every execution: 2.5% of the web's CPU).

**Where the time goes after the eighth round** (`py-spy record --gil`, 25 s of each process during
the peer benchmark's service rounds; shares of the process's GIL-holding samples). The web, 2.8-3.2
ms of CPU a submission: granian and the event loop around the app 24%; Litestar's 14 middleware
layers 14% (Prometheus 3.5, the authentication middleware 2.9, logging 1.4, session 1.6, security
headers 1.3: each a feature, none a guarantee); routing, dependency injection and the body's
parsing 8%; the handler 20%, of which the submission's transaction 9% (7% in `app.domain.driver`
and asyncpg), the broker's send 7.7% (Dramatiq's enqueue Lua script, in a thread) and the wake-up
publish 3.7%; sending the answer 6%. The worker, 2.1-2.5 ms a task: the claim 25%, the end 23%
(the statements themselves 18%, SQLAlchemy's pool checkout and checkin 6%), the Redis publishes
12% (redis-py's asyncio client), Dramatiq's consumer 11%. Postgres, 2.1-2.5 ms a task, is the three
transactions, the fair claim and four event rows under their advisory locks. So the pipeline's
25% of raw Dramatiq (about 500 tasks/s on two cores, about 4 ms of machine CPU a task) is out of
reach while every task keeps its event rows and locks (Postgres alone is half of that) and the
web serves through Litestar's middleware; what remains to cut without touching a guarantee is
small per item: the pool's checkout (a pool of raw asyncpg connections), redis-py's publish
path, middleware that a bearer-authenticated API request does not need (session, CSRF).

**Ninth round (2026-12-06): what Litestar did around a submission.** `py-spy record --gil` on the web
process under submissions alone (32 connections, no worker). Litestar resolved the handler's six
app-level dependencies (constants: settings, sessions, channels...) in an anyio task group, a task
each, on every request (upstream issue litestar-org/litestar#4563): about a tenth of the process's
CPU. `app.web.http.dependencies` resolves synchronous providers in the request's own task
(coroutine providers still get a task group when there are several); every route gains. Litestar's
request-logging middleware built its INFO lines at `LOG_LEVEL=WARNING` only to drop them: it is left
out above INFO. The driver's transaction takes its connection from the pool itself, without
`engine.connect()`'s Connection and AsyncConnection. And the write pool no longer closes an overflow
connection as soon as it is given back: 32 submissions at once held more than its 10 connections, so
every burst opened new backends and prepared their statements again (py-spy: asyncpg's `connect` in
the web's samples); connections are now opened as load needs them, up to `DATABASE_POOL_SIZE +
DATABASE_MAX_OVERFLOW`, and kept. Last, the web process's event loop is uvloop's (granian's `uvloop`
extra: `litestar run` picks it, `python -m app.web.serve` makes its loop with it): about a tenth less
CPU a request. (It needed the draining to stop reading asyncio's private table of signal handlers,
which uvloop keeps in C: streams then held the process until its kill timeout; it now wraps the
Python-level handler both loops leave in front of theirs.) By hand, submissions alone: 2.0 ms of web
CPU a submission and 440 a second before the round, 1.66 ms and about 550 after it. The `make bench`
runs (2026-12-06 02:30 without uvloop, 03:12 with it; an Intel Xeon, where the runs before were on an
AMD EPYC: raw Dramatiq 2,041 there, 2,066 and 2,156 here): submissions alone 515 and 578 a second at
1.88 and 1.71 ms of web CPU; pipeline 195 -> 272 -> 308 tasks/s end to end (10% -> 13% -> 14% of raw
Dramatiq), web CPU per task 2.92 -> 1.80 -> 1.51 ms, worker 2.19 -> 1.67 -> 1.56 ms; the peer
benchmark 2.11x -> 2.46x -> 2.77x. Tried and not kept: uvloop for the worker's Dramatiq event loop (no
clear change in two pairs of pipeline runs).

**Tenth round (2026-12-06, an AMD EPYC again): the broker send's thread.** py-spy's `--gil` view
had put the send at a tenth of the web's samples, but it ran in a thread whose time is mostly spent
without the GIL: taken out altogether (a trial, not a change), a submission cost 0.88-1.07 ms of web
CPU instead of 1.93-2.08 ms, and run blocking on the loop itself 1.34-1.70 ms. So about half of a
submission was the send: its two Redis round trips (Dramatiq's enqueue script, then the wake-up
PUBLISH), the executor's hand-over to a thread and back, and the GIL passed between that thread and
the busy loop. The web now sends from its loop without a thread (`enqueue_from_loop`,
`WakingRedisBroker.enqueue_async`): the message is built and passed through the middleware's enqueue
hooks as Dramatiq's `enqueue` does, and Dramatiq's dispatch script and the wake-up go in one pipeline
on an asyncio Redis client (a script that Redis forgot, after a restart, is loaded again; the send
runs to its end if the request is cancelled; RabbitMQ's blocking client still gets a thread). Second,
`py-spy --native` showed where asyncpg's own time went: the socket write of each statement (on this
virtual machine a round trip costs more CPU than its statement's encoding), so a driver transaction
now sends BEGIN together with the user's advisory locks, one simple query instead of two round trips
(measured A/B in one process: 312-350 -> 250-302 us of client CPU for a transaction of the locks and
one statement). By hand, submissions alone: 1.75-2.1 ms of web CPU a submission and 470-625 a second
before the round, 1.22-1.44 ms and 646-771 a second after it (this machine's runs vary by a fifth).

**Where the time goes after the tenth round.** Submissions alone: the process is at its core's limit
(granian runs the app on one thread). Of its GIL-holding samples (py-spy, uvloop): granian and the
event loop a third; the middleware layers about a fifth (each a feature: Prometheus, sessions,
authentication, CSRF, compression, security headers, request ids, the NUL guard); Litestar's
routing, body parsing, signature and answer about a tenth; the handler 40%, of which the
submission's transaction 25% (three round trips: BEGIN with the user's locks, the statement that
counts under the cap and writes the task and its event, COMMIT), the broker's send 9% (one round
trip) and the live streams' wake-up 4%. A second web process serves more (web processes scale out;
`docs/operations.md`). The pipeline's 25% of raw Dramatiq (about 500 tasks/s here, under 4 ms of
machine CPU a task on two cores) stays out of reach while every task keeps its three transactions,
its four event rows and their advisory locks: Postgres alone is 2-3 ms a task, and the web and the
worker about 1.5-2 ms each.
"""


# --- baseline: raw Dramatiq ------------------------------------------------------------------


def _raw_actor(url: str, namespace: str) -> tuple[RedisBroker, dramatiq.Actor[[int], None]]:
    broker = RedisBroker(url=url, namespace=namespace)  # type: ignore[no-untyped-call]

    def noop(sequence: int) -> None:
        return None

    actor: dramatiq.Actor[[int], None] = dramatiq.actor(actor_name="bench_noop", queue_name=RAW_QUEUE, broker=broker)(
        noop
    )
    return broker, actor


def _ready_key(namespace: str) -> str:
    return f"{namespace}:bench-ready"


def serve_raw(url: str, namespace: str, threads: int) -> None:
    """The baseline's worker process: plain Dramatiq, no-op actor, until SIGTERM."""
    broker, _ = _raw_actor(url, namespace)
    worker = dramatiq.Worker(broker, worker_threads=threads)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    redis.Redis.from_url(url).set(_ready_key(namespace), "1")
    while not stop.wait(0.2):
        pass
    worker.stop()
    broker.close()


def _drained(client: redis.Redis, namespace: str) -> bool:
    return not client.hlen(f"{namespace}:{RAW_QUEUE}.msgs")


def _raw_rate(url: str) -> tuple[float, float]:
    """(messages/s, worker CPU seconds per 1,000 messages) of the raw baseline."""
    client = redis.Redis.from_url(url)
    command = [sys.executable, "-m", "bench.pipeline", "raw-worker", url, RAW_NAMESPACE, str(WORKER_THREADS)]
    process = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not client.exists(_ready_key(RAW_NAMESPACE)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the raw Dramatiq worker did not start")
            time.sleep(0.05)
        broker, actor = _raw_actor(url, RAW_NAMESPACE)
        actor.send(-1)  # warm up: the first message pays for connections
        while not _drained(client, RAW_NAMESPACE):
            time.sleep(0.01)
        cpu_before = _tree_cpu(process.pid)
        began = time.monotonic()
        for sequence in range(TASKS):
            actor.send(sequence)
        while not _drained(client, RAW_NAMESPACE):
            if time.monotonic() - began > RUN_TIMEOUT_S:
                raise RuntimeError("the raw Dramatiq worker did not drain its queue")
            time.sleep(0.005)
        seconds = time.monotonic() - began
        cpu = _tree_cpu(process.pid) - cpu_before
        broker.close()
        return TASKS / seconds, cpu / TASKS * 1000
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        client.close()


# --- CPU accounting -------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _descendants(root: int) -> list[int]:
    """`root` and every live process below it (granian's workers start a session of their own)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants (the web server's and the worker's children)."""
    return sum(_cpu(pid) for pid in _descendants(root))


# --- project: the service ----------------------------------------------------------------------


@dataclass
class PipelineRun:
    submitted_s: float  # first submission to the last 202
    finished_s: float  # first submission to the last task succeeded
    succeeded: int  # TASKS, unless the run stopped at RUN_TIMEOUT_S
    statuses: Counter[int]
    create_ms: list[float]
    cpu: dict[str, float]  # CPU seconds per process over the run
    transactions: int  # Postgres commits + rollbacks in the service's database
    redis_commands: int


async def _backend_pids(database: asyncpg.Connection, name: str) -> list[int]:
    rows = await database.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name)
    return [int(row["pid"]) for row in rows]


async def _transactions(database: asyncpg.Connection, name: str) -> int:
    value = await database.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name)
    return int(value or 0)


async def _submit(
    stack: ServiceStack, tokens: list[str], count: int, create_ms: list[float], statuses: Counter[int]
) -> None:
    """POST `count` tasks over CONNECTIONS keep-alive connections, users taken in turn."""
    numbers = itertools.count()

    async def connection() -> None:
        async with RawHttp(stack.host, stack.port) as http:
            while (n := next(numbers)) < count:
                headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
                began = time.perf_counter()
                status, body = await http.request("POST", "/api/v1/tasks", headers=headers, json=TASK_BODY)
                create_ms.append((time.perf_counter() - began) * 1000)
                statuses[status] += 1
                if status != 202:
                    raise RuntimeError(f"POST /api/v1/tasks answered {status}: {body[:300]!r}")

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))


async def _client_ceiling(stack: ServiceStack, count: int) -> float:
    """Requests/s of the same client and connections on GET /health/live (no database)."""
    numbers = itertools.count()

    async def connection() -> None:
        async with RawHttp(stack.host, stack.port) as http:
            while next(numbers) < count:
                status, _ = await http.request("GET", "/health/live")
                if status != 200:
                    raise RuntimeError(f"GET /health/live answered {status}")

    began = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return count / (time.monotonic() - began)


async def _pipeline(stack: ServiceStack, tokens: list[str]) -> PipelineRun:
    name = stack.database_url.rsplit("/", 1)[1]
    database = await asyncpg.connect(stack.database_url)
    redis_client = redis.Redis.from_url(stack.redis.url)
    try:
        assert stack.worker is not None
        groups = {"web": stack.web.popen.pid, "worker": stack.worker.popen.pid}
        postgres = await _backend_pids(database, name)
        assert stack.redis.process is not None
        redis_pid = stack.redis.process.popen.pid
        before = {label: _tree_cpu(group) for label, group in groups.items()}
        before_pg = {pid: _cpu(pid) for pid in postgres}
        before_redis, before_client = _cpu(redis_pid), time.process_time()
        transactions = await _transactions(database, name)
        commands = int(redis_client.info("stats")["total_commands_processed"])

        create_ms: list[float] = []
        statuses: Counter[int] = Counter()
        began = time.monotonic()
        submitting = asyncio.create_task(_submit(stack, tokens, TASKS, create_ms, statuses))
        submitted_s = 0.0
        polls = 0
        while True:
            await asyncio.sleep(POLL_S)
            polls += 1
            if submitting.done() and not submitted_s:
                submitted_s = time.monotonic() - began
                submitting.result()  # raises what a connection met
            done = int(await database.fetchval("SELECT count(*) FROM task WHERE status = 'succeeded'"))
            if done >= TASKS or time.monotonic() - began > RUN_TIMEOUT_S:
                break  # past the timeout, the rates are those of what finished
        finished_s = time.monotonic() - began
        if not submitted_s:
            submitting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await submitting
            submitted_s = finished_s
        postgres_after = await _backend_pids(database, name)
        cpu = {label: _tree_cpu(group) - before[label] for label, group in groups.items()}
        cpu["postgres"] = sum(_cpu(pid) - before_pg.get(pid, 0.0) for pid in postgres_after)
        cpu["redis"] = _cpu(redis_pid) - before_redis
        cpu["client"] = time.process_time() - before_client
        # The benchmark's own polls are transactions of that database too.
        transactions = await _transactions(database, name) - transactions - polls - 1
        commands = int(redis_client.info("stats")["total_commands_processed"]) - commands
        return PipelineRun(submitted_s, finished_s, done, statuses, create_ms, cpu, transactions, commands)
    finally:
        redis_client.close()
        await database.close()


@dataclass(frozen=True)
class SubmissionsAlone:
    rate: float  # 202s per second
    create_ms: list[float]
    web_cpu_ms: float  # the web process's CPU per submission


def _submissions_alone() -> SubmissionsAlone:
    """POST /api/v1/tasks with no worker running: the web process, Postgres and Redis have the machine."""
    settings = {**FAST_SIGN_UP, "MAX_ACTIVE_TASKS": str(MAX_ACTIVE_TASKS)}
    with service_stack("submissions", settings) as stack:
        stack.start_web()
        tokens = stack.sign_up(USERS)
        asyncio.run(_submit(stack, tokens, 500, [], Counter()))  # connections, prepared statements, caches
        create_ms: list[float] = []
        before, began = _tree_cpu(stack.web.popen.pid), time.monotonic()
        asyncio.run(_submit(stack, tokens, SUBMISSIONS_ALONE, create_ms, Counter()))
        elapsed, cpu = time.monotonic() - began, _tree_cpu(stack.web.popen.pid) - before
    return SubmissionsAlone(SUBMISSIONS_ALONE / elapsed, create_ms, cpu / SUBMISSIONS_ALONE * 1000)


def _measure() -> tuple[float, float, PipelineRun, float]:
    settings = {**FAST_SIGN_UP, "MAX_ACTIVE_TASKS": str(MAX_ACTIVE_TASKS)}
    with service_stack("pipeline", settings) as stack:
        stack.start_web()
        stack.start_worker(WORKER_THREADS)
        stack.wait_ready()
        raw_rate, raw_cpu = _raw_rate(stack.redis.url)
        tokens = stack.sign_up(USERS)
        ceiling = asyncio.run(_client_ceiling(stack, TASKS))
        run = asyncio.run(_pipeline(stack, tokens))
    return raw_rate, raw_cpu, run, ceiling


def run() -> Section:
    alone = _submissions_alone()
    raw_rate, raw_cpu, result, ceiling = _measure()
    alone_cuts = percentiles(alone.create_ms, (50, 99))
    rate = result.succeeded / result.finished_s
    submit_rate = result.statuses[202] / result.submitted_s
    ratio = rate / raw_rate
    cuts = percentiles(result.create_ms, (50, 99))
    per_task = {label: seconds / max(result.succeeded, 1) * 1000 for label, seconds in result.cpu.items()}
    figures = {
        "raw_msgs_per_s": raw_rate,
        "tasks_per_s": rate,
        "submissions_per_s": submit_rate,
        "ratio": ratio,
        "create_p50_ms": cuts[50],
        "create_p99_ms": cuts[99],
        "client_ceiling_per_s": ceiling,
        "submissions_alone_per_s": alone.rate,
        "submissions_alone_p50_ms": alone_cuts[50],
        "submissions_alone_web_cpu_ms": alone.web_cpu_ms,
        "transactions_per_task": result.transactions / max(result.succeeded, 1),
        "redis_commands_per_task": result.redis_commands / max(result.succeeded, 1),
        **{f"cpu_ms_per_task_{label}": value for label, value in per_task.items()},
    }
    results = table(
        ["Configuration", "rate (/s)", "seconds"],
        [
            ["raw Dramatiq: no-op actor, 1 worker process x 8 threads", f"{raw_rate:,.0f}", f"{TASKS / raw_rate:.1f}"],
            ["service: submitted through the API (last 202)", f"{submit_rate:,.0f}", f"{result.submitted_s:.1f}"],
            ["service: submitted until all succeeded", f"{rate:,.0f}", f"{result.finished_s:.1f}"],
        ],
        align="lrr",
    )
    submissions = table(
        ["POST /api/v1/tasks alone (no worker running)", "Value"],
        [
            ["submissions/s (target at least 600)", f"{alone.rate:,.0f}"],
            ["p50 / p99 (ms)", f"{alone_cuts[50]:.1f} / {alone_cuts[99]:.1f}"],
            ["CPU of web per submission (ms)", f"{alone.web_cpu_ms:.2f}"],
        ],
        align="lr",
    )
    costs = table(
        ["Per task", "Value"],
        [
            ["POST /api/v1/tasks p50 / p99 (ms)", f"{cuts[50]:.1f} / {cuts[99]:.1f}"],
            *([f"CPU of {label} (ms)", f"{value:.2f}"] for label, value in per_task.items()),
            ["raw Dramatiq worker CPU per message (ms)", f"{raw_cpu:.2f}"],
            ["Postgres transactions", f"{result.transactions / max(result.succeeded, 1):.1f}"],
            ["Redis commands", f"{result.redis_commands / max(result.succeeded, 1):.1f}"],
        ],
        align="lr",
    )
    ratios = table(
        ["Ratio", "Value"],
        [["tasks/s end to end, service / raw Dramatiq", f"{ratio:.2f} ({ratio:.0%}; target at least 25%)"]],
        align="lr",
    )
    stopped = (
        f"**This run stopped at its limit of {RUN_TIMEOUT_S:.0f} s with {result.succeeded:,} of {TASKS:,} tasks "
        "succeeded; the service's rates are those of what finished.**\n\n"
        if result.succeeded < TASKS
        else ""
    )
    body = f"""\
{stopped}Throughput of the whole job pipeline against Dramatiq itself, on the same redis-server in
the same run. Baseline: {TASKS:,} messages for a no-op actor, sent by the benchmark
process while one plain `dramatiq.Worker` process with {WORKER_THREADS} threads drains them (rate from
the first send until the queue's message hash is empty). Project: {TASKS:,} demo tasks
(`{{"steps": 1, "step_ms": 0}}`) through `POST /api/v1/tasks` with bearer tokens, into one web
process (`litestar run`, granian) and one worker process (`dramatiq app.workers --processes 1
--threads {WORKER_THREADS}`) in services mode, each with its own Postgres database and redis-server;
the rate runs from the first submission until every task has `succeeded` (the benchmark
polls the task table every {POLL_S * 1000:.0f} ms). The client keeps {CONNECTIONS} keep-alive
connections busy, spread over {USERS} users taken in turn, with `MAX_ACTIVE_TASKS` raised to
{MAX_ACTIVE_TASKS:,} (the default, 20, would answer most submissions with 429: this measures
the pipeline, not the cap, which is still checked under its lock for every submission).
Users have email notifications off. The client is a minimal HTTP/1.1 reader on asyncio
streams; the same client on `GET /health/live` reaches {ceiling:,.0f} requests/s, so it is not
what limits the submissions. CPU is per process (web server and worker with their child
processes, the service database's Postgres backends, redis-server, the client) over the
run, divided by the number of tasks; the machine has two cores for all of them.

The submissions alone, measured first on a stack of their own: the same client, users and
connections, {SUBMISSIONS_ALONE:,} submissions (after 500 not counted) to one web process with no
worker running, so that the web process, Postgres and Redis have the machine (in the pipeline the
worker takes its share of the two cores while the submissions come in).

{submissions}

{results}

{costs}

{ratios}

{PROFILE_AND_FIX}
"""
    return Section(title="Job pipeline throughput (API to succeeded)", body=body, figures=figures)


if __name__ == "__main__":
    run_alone(run, {"raw-worker": lambda url, namespace, threads: serve_raw(url, namespace, int(threads))})
