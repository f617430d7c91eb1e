"""Test set-up for both run modes.

`TEST_MODE=embedded` (default): SQLite in a temporary var/ folder, in-memory broker,
workers inside the web process. `TEST_MODE=services`: a fresh Postgres database for
this run (dropped at the end), a dedicated Redis database, separate worker processes.
The environment is set in `pytest_configure`, before any test module imports `app`,
because `app.workers` reads the settings once at import.

Under CI=true a Postgres or Redis that does not answer fails the run; elsewhere the
services run stops with a message saying what to start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.servers import LiveServer, services_reachable, start_live_server
from tests.smtp import SmtpServer

MODE = os.environ.get("TEST_MODE", "embedded")
ROOT = Path(__file__).resolve().parents[1]
ADMIN_DATABASE_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_state: dict[str, str] = {}
_servers: dict[str, SmtpServer] = {}


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that hands tests to pytest-xdist's workers: it runs none itself."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def _lazy_certificates() -> None:
    """Certificates looked up when a TLS peer needs them, not read whole by every HTTP client made.

    httpx parses its whole CA bundle (SSL_CERT_FILE where set, certifi's otherwise) each time a
    client is made: 20 ms of CPU, and the tests make thousands (one per request in polling
    helpers, fifty at once in the parallel tests). A directory of hashed certificates (OpenSSL's
    own, where the system has one) is read lazily, and the tests speak plain HTTP to 127.0.0.1.
    """
    capath = ssl.get_default_verify_paths().capath
    if capath and os.path.isdir(capath):
        os.environ.pop("SSL_CERT_FILE", None)
        os.environ["SSL_CERT_DIR"] = capath


def pytest_report_header(config: pytest.Config) -> str:
    """How fast this machine runs Python now, to read the run's time by.

    The suite is CPU-bound (about 200 processes, Chromium and the tests themselves on two cores),
    and a shared virtual machine's speed changes from hour to hour: on one machine in one day, a
    loop like this one took twice as long at some hours as at others, and `make test` 3.6 to 7.7
    minutes with the same code. The fastest of 20 short rounds: the runs and the linters start
    side by side, and a round alone on a core is the machine's speed, not their contention.
    """
    rounds = []
    for _ in range(20):
        started = time.perf_counter()
        total = 0
        for number in range(50_000):
            total += number
        rounds.append(time.perf_counter() - started)
    return f"machine speed: a Python loop of 1,000,000 additions takes {min(rounds) * 20 * 1000:.0f} ms"


def pytest_configure(config: pytest.Config) -> None:
    _lazy_certificates()
    # pytest-xdist's --dist loadfile hands out the files with the most tests first unless told not to;
    # LONGEST_FILES (below) orders them by time instead: a ten-test file of waits outlasts a hundred quick ones.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if MODE == "services":
        _require_services()
    # Under pytest-xdist (`make test`: -n), each worker process configures itself here: a var/ folder,
    # an SMTP server, a database and Redis keys of its own, so workers share nothing but the servers.
    if _xdist_controller(config):
        return
    var_dir = tempfile.mkdtemp(prefix="app-test-var-")
    _state["var_dir"] = var_dir
    os.environ.update(
        {
            "APP_ENV": "test",
            "VAR_DIR": var_dir,
            "LOG_LEVEL": "WARNING",
            "SSE_HEARTBEAT_SECONDS": "1",
            "SSE_SLOW_CLIENT_SECONDS": "2",
            "WORKER_HEARTBEAT_SECONDS": "0.5",
            "WORKER_THREADS": "4",
            # A worker stops once its threads' and consumers' next poll returns (Dramatiq: twice WORKER_POLL_MS);
            # sends wake idle consumers at once whatever the poll. At the default 1 s, every app a test starts
            # and stops in embedded mode took 2 s to stop; CLI workers read dramatiq_worker_timeout.
            "WORKER_POLL_MS": "100",
            "dramatiq_worker_timeout": "100",
            "LITESTAR_APP": "app.web.app:create_app",
            # Small pools: a services-mode test may run a web process and three worker processes,
            # each with a write and a read engine (pool + overflow, and pool): 4 x 12 connections
            # stay well inside Postgres's default max_connections of 100.
            "DATABASE_POOL_SIZE": "4",
            "DATABASE_MAX_OVERFLOW": "4",
            # Cheap password hashing and generous abuse limits; tests that need the limits set their own.
            "ARGON2_TIME_COST": "1",
            "ARGON2_MEMORY_KIB": "8192",
            "ARGON2_PARALLELISM": "1",
            "REGISTRATIONS_PER_HOUR": "100000",
            "FORGOT_PASSWORD_PER_HOUR": "100000",
            # Every test client has one address: per-address counts would add up across the run.
            "LOGIN_FAILURES_PER_ADDRESS": "100000",
            "TOKEN_FAILURES_PER_ADDRESS": "100000",
            # Webhooks reach the test's own receiver on 127.0.0.1 (tests/test_webhooks.py), retried quickly.
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_RETRY_SECONDS": "0.2,0.2,0.2",
            # A failed attempt's task waits 0.2 s, then 0.4 s (2 s, then 4 s by default) before the next.
            "TASK_RETRY_MIN_SECONDS": "0.2",
            "TASK_RETRY_MAX_SECONDS": "1",
        }
    )
    smtp = SmtpServer().__enter__()
    _servers["smtp"] = smtp
    os.environ.update(
        {"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "SMTP_STARTTLS": "false", "SMTP_TLS": "false"}
    )
    if MODE == "services":
        name = f"app_test_{uuid.uuid4().hex[:10]}"
        _state["database"] = name
        _run_admin_sql(f'CREATE DATABASE "{name}"')
        base = ADMIN_DATABASE_URL.rsplit("/", 1)[0]
        os.environ.update(
            {
                "DATABASE_URL": f"{base}/{name}",
                "REDIS_URL": TEST_REDIS_URL,
                # Every run its own keys: concurrent runs on one machine do not take each other's jobs.
                "REDIS_NAMESPACE": name,
                "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
            }
        )
    else:
        os.environ.update({"DATABASE_URL": "", "REDIS_URL": "", "SECRET_KEY": ""})


def _require_services() -> None:
    """Postgres and Redis answer, or the run ends here: a failure under CI=true, a message elsewhere."""
    problem = services_reachable(ADMIN_DATABASE_URL, TEST_REDIS_URL)
    if problem:
        message = f"services mode needs Postgres and Redis: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.exit(f"FAILED: {message}", returncode=1)
        pytest.exit(f"Skipping the services-mode run ({message}); start them or run `make test-embedded`.", 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    if smtp := _servers.pop("smtp", None):
        smtp.__exit__(None, None, None)
    if name := _state.get("database"):
        _run_admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _forget_redis_keys(name)
    if var_dir := _state.get("var_dir"):
        shutil.rmtree(var_dir, ignore_errors=True)


#: The test files that take longest in each mode, longest first (seconds in a full `make test`, from a file's
#: first test's start to its last one's end, 2026-12-05). pytest-xdist hands files to its workers in collection
#: order, one more to a worker as it finishes one: these go first, so that no worker starts a minute-long file
#: when the others are nearly done.
LONGEST_FILES = {
    "embedded": [
        "test_browser.py",  # 59 s
        "test_oidc.py",  # 41
        "test_accessibility.py",  # 39
        "test_config.py",  # 34
        "test_tasks_ops.py",  # 31
        "test_fair_share.py",  # 29
        "test_later_and_recurring.py",  # 29
        "test_live_events.py",  # 22
        "test_email_links.py",  # 21
        "test_login_limits.py",  # 19
        "test_openapi_document.py",  # 18
        "test_webhooks.py",  # 17
        "test_account_hygiene.py",  # 13
        "test_hostile_input.py",  # 12
        "test_live_events_replay.py",  # 11
        "test_task_waits.py",  # 11
        "test_accounts_cli.py",  # 10
    ],
    "services": [
        "test_task_failures.py",  # 84 s
        "test_rabbitmq.py",  # 75
        "test_fair_share.py",  # 63
        "test_browser.py",  # 62
        "test_webhooks.py",  # 53
        "test_chaos.py",  # 44
        "test_later_and_recurring.py",  # 40
        "test_oidc.py",  # 37
        "test_live_events.py",  # 30
        "test_revocation.py",  # 28
        "test_recovery.py",  # 24
        "test_supervisor.py",  # 23
        "test_workers.py",  # 20
        "test_tasks_ops.py",  # 20
        "test_account_hygiene.py",  # 18
        "test_operations.py",  # 18
        "test_task_caps.py",  # 14
        "test_login_limits.py",  # 14
        "test_live_events_fanout.py",  # 13
    ],
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other = "embedded" if MODE == "services" else "services"
    reason = f"runs only in {other} mode (this run: TEST_MODE={MODE}; `make test` runs both)"
    for item in items:
        if other in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
    longest = {name: rank for rank, name in enumerate(LONGEST_FILES[MODE])}
    # A stable sort: each file's tests keep their order; the other files follow in theirs.
    items.sort(key=lambda item: longest.get(item.path.name, len(longest)))


def _run_admin_sql(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(ADMIN_DATABASE_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def _forget_redis_keys(namespace: str) -> None:
    """Delete this run's keys (broker queues, stores, heartbeats) and nobody else's."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    for pattern in (f"{namespace}*", f"{namespace.upper()}*"):
        for key in client.scan_iter(match=pattern, count=500):
            client.delete(key)


def create_database(prefix: str) -> str:
    """A new empty database of this run's kind; returns its URL."""
    if MODE == "services":
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        _run_admin_sql(f'CREATE DATABASE "{name}"')
        return f"{ADMIN_DATABASE_URL.rsplit('/', 1)[0]}/{name}"
    return f"sqlite:///{Path(_state['var_dir']) / f'{prefix}-{uuid.uuid4().hex[:8]}.db'}"


def copy_database(url: str, prefix: str) -> str:
    """A new database holding what `url`'s holds (a migrated template: cheaper than migrating again).

    Postgres copies it with CREATE DATABASE ... TEMPLATE, which needs nothing connected to it.
    """
    if MODE == "services":
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        _run_admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{url.rsplit("/", 1)[1]}"')
        return f"{url.rsplit('/', 1)[0]}/{name}"
    source = Path(url.removeprefix("sqlite:///"))
    target = source.with_name(f"{prefix}-{uuid.uuid4().hex[:8]}.db")
    for suffix in ("", "-wal"):  # a WAL left behind holds committed pages too
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    return f"sqlite:///{target}"


def drop_database(url: str) -> None:
    if MODE == "services":
        _run_admin_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture(scope="session")
def smtp() -> SmtpServer:
    """The run's SMTP server (aiosmtpd): every email the service sends in tests arrives here."""
    return _servers["smtp"]


@pytest.fixture(scope="session")
def mode() -> str:
    return MODE


@pytest.fixture(scope="session")
def migrated() -> None:
    """The run's database, upgraded to the newest migration through the operators' CLI."""
    import subprocess

    _state["migrated"] = "yes"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "litestar"), "database", "upgrade", "--no-prompt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="session")
def live_server(migrated: None) -> Iterator[LiveServer]:
    """The real service over HTTP: granian serving the app (and, in services mode, a dramatiq worker)."""
    with start_live_server(ROOT, services=MODE == "services") as server:
        yield server


@pytest.fixture(autouse=True)
async def isolated_tables() -> AsyncIterator[None]:
    """Each test starts from empty tables (the schema stays; Redis keeps only transport state)."""
    yield
    if not _state.get("migrated"):
        return
    from sqlalchemy.exc import DBAPIError

    from app.config import get_settings
    from app.domain.database import create_engine
    from app.domain.models import metadata

    settings = get_settings()
    engine = create_engine(settings)
    try:
        # Jobs a test started may still be finishing: a deadlock with them is retried, not a failure.
        for attempt in range(5):
            try:
                # DELETE, children first: a test leaves a few rows, and Postgres's TRUNCATE costs
                # 25 ms of new files even for empty tables (1.5 ms for these DELETEs), and waits
                # for every transaction of the run's live server on those tables.
                async with engine.begin() as connection:
                    for table in reversed(metadata.sorted_tables):
                        await connection.execute(table.delete())
                break
            except DBAPIError as exc:
                if "deadlock" not in str(exc) or attempt == 4:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


@pytest.fixture
async def db_session() -> AsyncIterator[object]:
    from app.config import get_settings
    from app.domain.database import create_engine, session_factory

    engine = create_engine(get_settings())
    try:
        async with session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()
