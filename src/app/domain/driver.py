"""The hot paths' transactions on Postgres, run straight through asyncpg.

SQLAlchemy's execution of a statement (its cache key, execution context and result, the
greenlet hops of its asyncpg adapter, the session around it) cost the client more CPU than
asyncpg's own work: a transaction of an UPDATE ... RETURNING and an INSERT took 1.0 ms of
client CPU through an AsyncSession and 0.55 ms straight through asyncpg (docs/benchmarks.md,
issue 19). Every task costs three: its submission, its claim and its end.

`transaction(engine)` takes a connection from the engine's pool (checked as any checkout
is) and runs a transaction on it (BEGIN in the round trip of its first statement where it
can: `Transaction.begin_with`); `Transaction.execute` runs the same Core
statements a session would, compiled once per statement object: the SQL SQLAlchemy would
send (`$n` parameters with their casts), the parameters' order, and the bind and result
processors of their types (JSON, GUID, DateTimeUTC...), so values go in and come out as
through a session. asyncpg keeps the connection's prepared statements. Errors are
SQLAlchemy's (`DBAPIError.instance`), and a connection that broke is invalidated, as a
session would do. Only for statements built once (module constants or cached builders):
the compiled form is kept per statement object.

SQLite keeps its sessions: `writing(sessions)` gives a session with its transaction there,
so the same code runs on both (see `Executor`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

_NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})
#: How many statements keep their compiled form; far above what the hot paths use (a dozen).
_CACHE_SIZE = 256


@dataclass(frozen=True)
class _Compiled:
    statement: Any  # kept, so that its id is not reused while this entry lives
    sql: str
    names: tuple[str, ...]
    binds: tuple[Callable[[Any], Any] | None, ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    defaults: Mapping[str, Any]  # the values of bound literals (`literal(...)`), by name


_compiled: dict[tuple[int, tuple[str, ...]], _Compiled] = {}


def _compile(statement: Any, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
    compiled = _compile_or_none(statement, dialect, keys)
    if compiled is None:
        raise ValueError(f"not a statement for the driver (expanding or Python-side defaults): {statement}")
    return compiled


#: Statements that are not for the driver, by id (kept, so that the id is not reused meanwhile).
_refused: dict[int, Any] = {}


def _compile_or_none(statement: Any, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled | None:
    """The compiled form, or None for a statement whose SQL changes with its values (an expanding IN) or
    that needs Python-side defaults: those go through SQLAlchemy."""
    key = (id(statement), keys)
    found = _compiled.get(key)
    if found is not None and found.statement is statement:
        return found
    if _refused.get(id(statement)) is statement:
        return None
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) or None)
    sql = compiled.string
    if "POSTCOMPILE" in sql or getattr(compiled, "insert_prefetch", None):
        if len(_refused) >= _CACHE_SIZE:
            _refused.clear()
        _refused[id(statement)] = statement
        return None
    names = tuple(compiled.positiontup or ())
    binds = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in compiled._result_columns
    )
    defaults = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
    if len(_compiled) >= _CACHE_SIZE:
        _compiled.clear()
    entry = _Compiled(statement, sql, names, binds, results, defaults)
    _compiled[key] = entry
    return entry


class Rows:
    """The rows of one statement, with the part of SQLAlchemy's Result that the hot paths use."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def all(self) -> list[tuple[Any, ...]]:
        return self.rows

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def one(self) -> tuple[Any, ...]:
        if len(self.rows) != 1:
            raise NoResultFound(f"{len(self.rows)} rows where one was expected")
        return self.rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> Iterator[Any]:
        return (row[0] for row in self.rows)


class Transaction:
    """A Postgres transaction on one asyncpg connection; statements as `AsyncSession.execute` takes them."""

    def __init__(self, connection: PoolProxiedConnection, dialect: Dialect) -> None:
        self._connection = connection
        self._driver: Any = connection.driver_connection
        self._dialect = dialect
        self.rolled_back = False

    async def begin_with(self, sql: str) -> None:
        """Run `sql`, statements without parameters (such as taking advisory locks); when the transaction
        has not begun yet, BEGIN goes in the same round trip (Postgres' simple query protocol: a round trip
        was a tenth of a task submission's CPU). `sql` is the caller's own text: no value from outside."""
        text = sql if self._driver.is_in_transaction() else f"BEGIN; {sql}"
        await self._run(sql, (), self._driver.execute(text))

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] = _NO_PARAMETERS
    ) -> Rows:
        """Run `statement` with `parameters` (a mapping; a list of them: once per item, no rows returned)."""
        if not self._driver.is_in_transaction():  # BEGIN has not gone with an earlier statement
            await self._run("BEGIN", (), self._driver.execute("BEGIN"))
        if isinstance(parameters, Mapping):
            compiled = _compile(statement, self._dialect, ())
            arguments = self._arguments(compiled, parameters)
            records = await self._run(compiled.sql, arguments, self._driver.fetch(compiled.sql, *arguments))
            return Rows(_processed(compiled, records))
        if not parameters:
            return Rows([])
        compiled = _compile(statement, self._dialect, tuple(parameters[0]))
        many = [self._arguments(compiled, item) for item in parameters]
        await self._run(compiled.sql, many, self._driver.executemany(compiled.sql, many))
        return Rows([])

    async def scalar(self, statement: Executable, parameters: Mapping[str, Any] = _NO_PARAMETERS) -> Any:
        return (await self.execute(statement, parameters)).scalar_one_or_none()

    async def flush(self) -> None:
        """Nothing waits to be written: there is no unit of work (for code shared with sessions)."""

    async def rollback(self) -> None:
        """Undo everything: the transaction is rolled back at the end of its block, not committed."""
        self.rolled_back = True

    @staticmethod
    def _arguments(compiled: _Compiled, parameters: Mapping[str, Any]) -> list[Any]:
        return _arguments(compiled, parameters)

    async def _run(self, sql: str, arguments: Any, call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            raise await _translated(self._connection, self._dialect, sql, arguments, exc) from exc


def _arguments(compiled: _Compiled, parameters: Mapping[str, Any]) -> list[Any]:
    values = {**compiled.defaults, **parameters} if compiled.defaults else parameters
    return [
        values[name] if process is None else process(values[name])
        for name, process in zip(compiled.names, compiled.binds, strict=True)
    ]


def _processed(compiled: _Compiled, records: Sequence[Any]) -> list[tuple[Any, ...]]:
    """asyncpg's records as tuples of the values a session would give (its types' result processors)."""
    results = compiled.results
    if results and len(results) == (len(records[0]) if records else 0):
        return [
            tuple(value if process is None else process(value) for process, value in zip(results, record, strict=True))
            for record in records
        ]
    return [tuple(record) for record in records]


async def fetch(
    engine: AsyncEngine, statement: Executable, parameters: Mapping[str, Any] | None
) -> list[tuple[Any, ...]] | None:
    """The rows of one statement on a connection of `engine`'s pool, outside any transaction (for an
    autocommit read engine: app.domain.database.read); None when the statement is not for the driver.

    A connection that broke raises SQLAlchemy's error marked `connection_invalidated`, and the pool
    then discards every connection it made before (as SQLAlchemy's own execution does), so a read run
    again gets a new one. A read cut off mid-statement (a cancel) does not give its connection back.
    """
    if _refused.get(id(statement)) is statement:
        return None
    connection = await greenlet_spawn(engine.sync_engine.pool.connect)
    try:
        # Compiled once a connection is out: the first one sets the dialect from the server's settings
        # (how a string literal is escaped, as in LIKE ... ESCAPE '\').
        compiled = _compile_or_none(statement, engine.dialect, ())
        if compiled is None:
            return None
        arguments = _arguments(compiled, parameters or _NO_PARAMETERS)
        try:
            records = await connection.driver_connection.fetch(compiled.sql, *arguments)  # type: ignore[union-attr]
        except Exception as exc:
            error = await _translated(connection, engine.dialect, compiled.sql, arguments, exc)
            if isinstance(error, DBAPIError) and error.connection_invalidated:
                engine.sync_engine.pool._invalidate(connection, exc)  # and every connection made before it
            raise error from exc
        except BaseException:  # cancelled mid-statement: the connection is not used again
            if connection.is_valid:
                await _to_completion(greenlet_spawn(connection.invalidate))
            raise
    finally:
        await _to_completion(greenlet_spawn(connection.close))
    return _processed(compiled, records)


async def _translated(
    connection: PoolProxiedConnection, dialect: Dialect, sql: str, arguments: Any, exc: Exception
) -> Exception:
    """`exc` of asyncpg as SQLAlchemy raises it (IntegrityError, OperationalError...); a broken connection
    is invalidated, so the pool does not hand it out again."""
    adapted = connection.dbapi_connection
    try:
        adapted._handle_exception(exc)  # type: ignore[union-attr]  # raises the DBAPI error of the adapter
    except Exception as dbapi_error:  # noqa: BLE001 - translated below
        error = dbapi_error
    else:  # pragma: no cover - it always raises
        error = exc
    dbapi = dialect.loaded_dbapi
    disconnect = isinstance(error, dbapi.Error) and dialect.is_disconnect(error, adapted, None)
    if disconnect:
        await greenlet_spawn(connection.invalidate, error)
    if not isinstance(error, dbapi.Error):
        return error
    return DBAPIError.instance(sql, arguments, error, dbapi.Error, connection_invalidated=disconnect, dialect=dialect)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Transaction]:
    """A transaction on a connection of `engine`'s pool (Postgres): committed at the end of the block,
    rolled back if the block raises or called `Transaction.rollback`.

    SQLAlchemy does not know of this transaction (its pool rolls back only the transactions it began), so
    a connection still in it after its end failed (broken, or cut off by a cancel) is invalidated, never
    given back to the pool in the middle of a transaction.
    """
    # From the pool itself: the checkout's events and checks run, without the Connection and
    # AsyncConnection that `engine.connect()` wraps around it (3% of a submission's CPU).
    # BEGIN is sent with the block's first statement (`Transaction.begin_with`) or before it.
    connection = await greenlet_spawn(engine.sync_engine.pool.connect)
    try:
        tx = Transaction(connection, engine.dialect)
        driver = tx._driver
        try:
            try:
                yield tx
            except BaseException:
                if driver.is_in_transaction():
                    with contextlib.suppress(BaseException):  # the block's error is the one raised
                        await driver.execute("ROLLBACK")
                raise
            if driver.is_in_transaction():
                end = "ROLLBACK" if tx.rolled_back else "COMMIT"
                await tx._run(end, (), driver.execute(end))
        finally:
            if driver.is_in_transaction() and connection.is_valid:
                await greenlet_spawn(connection.invalidate)
    finally:
        await _to_completion(greenlet_spawn(connection.close))  # back to the pool (closed if invalidated)


async def _to_completion(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run `cleanup` to its end even if this task is cancelled meanwhile (then re-raise the cancel), as
    SQLAlchemy's AsyncConnection does for its close: a checkin cut short would lose the pool a connection."""
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as error:
            cancelled = error
    task.result()
    if cancelled is not None:
        raise cancelled


#: What the hot paths write with: a driver transaction on Postgres, a session in a transaction on SQLite.
Executor = AsyncSession | Transaction


def is_postgres(executor: Executor) -> bool:
    if isinstance(executor, Transaction):
        return True
    return executor.bind is not None and executor.bind.dialect.name == "postgresql"


def orm_session(executor: Executor) -> AsyncSession:
    """`executor` as a session, for the work that loads and changes ORM objects (never a hot path's)."""
    if not isinstance(executor, AsyncSession):
        raise TypeError("this needs a session, not a driver transaction")
    return executor


@asynccontextmanager
async def writing(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[Executor]:
    """A transaction for a hot path: through the driver on Postgres (`transaction`), a session's on SQLite.

    Committed at the end of the block, unless it raises or called `rollback()`."""
    engine = sessions.kw["bind"]
    if isinstance(engine, AsyncEngine) and engine.dialect.name == "postgresql":
        async with transaction(engine) as tx:
            yield tx
        return
    async with sessions() as session, session.begin():
        yield session
