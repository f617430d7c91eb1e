"""The database engines, shared by the web app and the workers (each builds its own).

`create_engine` is for everything that writes: sessions with transactions, connections
checked before use (`_check_on_checkout`: one round trip, none for a connection given back
within the last half second). `create_read_engine` is for the web's hot reads (who is
calling, a page of tasks): autocommit connections (no BEGIN/ROLLBACK around a single
SELECT) and no ping, so a read costs one round trip; `read` repeats a read once when its
connection turned out to be broken (a Postgres restart), which a ping would have found.

Embedded (SQLite), a read does not go through aiosqlite: every aiosqlite call is a hop to
the connection's own thread and back (cursor, execute, fetch, close: four per read), each
waiting for the GIL behind a busy event loop, and its overflow connections each started
and stopped a thread. `create_read_engine` gives a SQLite engine `SqliteReads` instead: a
few threads, each with its own synchronous connection (SQLAlchemy's SingletonThreadPool),
and a read is one hop to one of them, statement, rows and their types done there. WAL lets
those connections read beside the writer; sqlite3 keeps each connection's prepared
statements (its statement cache), so a read that comes back is not compiled again.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import sqlalchemy
from sqlalchemy import Engine, Executable, Row, SingletonThreadPool, event
from sqlalchemy.exc import DBAPIError, InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import Settings
from app.domain.driver import fetch


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite;
    # the busy timeout makes a second writer (a worker thread, a CLI) wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


#: Where a pooled connection's record notes that it was just opened (nothing to check yet).
_FRESH = "app.fresh"
#: Where it notes when it was last given back to the pool (time.monotonic()).
_RETURNED_AT = "app.returned_at"
#: A connection given back this recently is not checked again at checkout (HikariCP's
#: aliveBypassWindowMs, 500 ms): under load a connection goes out again within milliseconds, and
#: its check was a round trip of three per task. asyncpg still sees a server that went away
#: (the connection is closed: checked without a round trip); only a connection that died
#: silently within the window reaches a request, which fails once as it would mid-use.
ALIVE_WITHOUT_CHECK_SECONDS = 0.5


def _mark_fresh(_dbapi_connection: Any, record: Any) -> None:
    record.info[_FRESH] = True


def _mark_returned(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _check_on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's pessimistic disconnect handling, in one round trip (Postgres).

    `pool_pre_ping` did the same check with asyncpg as BEGIN, an empty query and ROLLBACK:
    three round trips on every checkout. Here a connection found closed (asyncpg saw the
    server go) costs none, and another one `SELECT 1` outside a transaction. A broken
    connection raises InvalidatePoolError, as the pre-ping does: the pool drops every
    connection older than now and hands out a new one, so a Postgres restart costs no
    request an error once the server is back. Any other error is raised as it is.
    """
    if record.info.pop(_FRESH, False):
        return  # just connected: the pre-ping skips these too
    driver = dbapi_connection.driver_connection
    if driver.is_closed():
        raise InvalidatePoolError("the connection was closed")
    if time.monotonic() - record.info.get(_RETURNED_AT, float("-inf")) < ALIVE_WITHOUT_CHECK_SECONDS:
        return
    try:
        dbapi_connection.run_async(lambda connection: connection.execute("SELECT 1"))
    except Exception as exc:
        if driver.is_closed():
            raise InvalidatePoolError(f"the connection broke: {exc!r}") from exc
        raise


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def engine_options(settings: Settings) -> dict[str, Any]:
    # JSON columns (task params and results, event data) are written and read with msgspec, several
    # times faster than the standard library's json that SQLAlchemy uses by default (its encoder was
    # 1.7% of a worker's busy time, py-spy).
    json = {"json_serializer": _json_text, "json_deserializer": msgspec.json.decode}
    if settings.is_sqlite:
        return {"echo": settings.database_echo, **json}
    return {
        "echo": settings.database_echo,
        **json,
        # Up to POOL_SIZE + MAX_OVERFLOW connections, each opened when load first needs it and then kept
        # (until pool_recycle): an overflow connection was closed as soon as it was given back and opened
        # again at the next burst, a new backend with its statements prepared again (32 submissions at
        # once: 5-8% fewer a second than with the connections kept).
        "pool_size": settings.database_pool_size + settings.database_max_overflow,
        "max_overflow": 0,
        "pool_recycle": 1800,
    }


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine for DATABASE_URL (asyncpg) or the embedded SQLite file (aiosqlite)."""
    if settings.is_sqlite:
        settings.var_path.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(settings.sqlalchemy_url, **engine_options(settings))
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine.sync_engine, "connect", _mark_fresh)
        event.listen(engine.sync_engine, "checkout", _check_on_checkout)
        event.listen(engine.sync_engine, "checkin", _mark_returned)
    return engine


#: Embedded reads: threads, each with its own SQLite connection (see SqliteReads).
SQLITE_READ_THREADS = 4


class SqliteReads:
    """Reads of the embedded SQLite file, one thread hop each: a thread per connection.

    A read runs whole (checkout, statement, rows with their types) on one of
    SQLITE_READ_THREADS threads, each holding its own connection for as long as it lives
    (SingletonThreadPool). The threads start on first use and stop when the async engine
    they belong to is disposed; a later read starts them again.
    """

    def __init__(self, settings: Settings) -> None:
        url = settings.sqlalchemy_url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1)
        self.engine: Engine = sqlalchemy.create_engine(
            url,
            echo=settings.database_echo,
            json_deserializer=msgspec.json.decode,
            isolation_level="AUTOCOMMIT",  # no BEGIN around a lone SELECT
            poolclass=SingletonThreadPool,
            pool_size=SQLITE_READ_THREADS,
            pool_reset_on_return=None,
            connect_args={"check_same_thread": False},  # closed by `close`, from the loop's thread
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._threads: ThreadPoolExecutor | None = None

    def _rows(self, statement: Executable, parameters: Mapping[str, Any] | None) -> Sequence[Row[Any]]:
        with self.engine.connect() as connection:
            return connection.execute(statement, parameters).all()

    async def read(self, statement: Executable, parameters: Mapping[str, Any] | None) -> Sequence[Row[Any]]:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(SQLITE_READ_THREADS, thread_name_prefix="sqlite-read")
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._rows, statement, parameters)

    def close(self, *_: Any) -> None:
        """Stop the threads and close their connections (the async engine was disposed)."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True)
        self.engine.dispose()


#: The SqliteReads of each SQLite read engine (keyed by its sync engine, gone with it).
_sqlite_reads: weakref.WeakKeyDictionary[Engine, SqliteReads] = weakref.WeakKeyDictionary()


def create_read_engine(settings: Settings) -> AsyncEngine:
    """An engine for single-statement reads: autocommit, no ping on checkout (see `read`).

    On SQLite, `read` runs its statements through a SqliteReads of the same file instead.
    """
    options = engine_options(settings)
    options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    if not settings.is_sqlite:
        # A fixed set of connections: under load a read waits for one (a read is short).
        options.update(pool_size=settings.database_pool_size, max_overflow=0)
    if settings.is_sqlite:
        settings.var_path.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(settings.sqlalchemy_url, **options)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        reads = SqliteReads(settings)
        _sqlite_reads[engine.sync_engine] = reads
        event.listen(engine.sync_engine, "engine_disposed", reads.close)
    return engine


async def read(
    engine: AsyncEngine, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> Sequence[Sequence[Any]]:
    """The rows of one read-only statement on an engine from `create_read_engine`: one round trip.

    A pooled connection that broke since its last use (the server restarted) fails at once;
    the pool then discards it and every connection as old, and the statement runs once more
    on a new one. A database still out of reach raises as before (a 503 at the door).
    Callers keep their statements (with bind parameters) and reuse them: building and
    caching a statement costs more than running it. Embedded, the read is SqliteReads'.
    """
    if (sqlite_reads := _sqlite_reads.get(engine.sync_engine)) is not None:
        return await sqlite_reads.read(statement, parameters)
    try:
        return await _read_once(engine, statement, parameters)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await _read_once(engine, statement, parameters)


async def _read_once(
    engine: AsyncEngine, statement: Executable, parameters: Mapping[str, Any] | None
) -> Sequence[Sequence[Any]]:
    if engine.dialect.name == "postgresql":
        # Straight through asyncpg where the statement allows (app.domain.driver: SQLAlchemy's
        # execution and result were a sixth of a list request's CPU).
        rows = await fetch(engine, statement, parameters)
        if rows is not None:
            return rows
    async with engine.connect() as connection:
        return (await connection.execute(statement, parameters)).all()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
