"""The database engine, shared by the web app and the workers (each builds its own)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import Settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite;
    # the busy timeout makes a second writer (a worker thread, a CLI) wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def engine_options(settings: Settings) -> dict[str, Any]:
    if settings.is_sqlite:
        return {"echo": settings.database_echo}
    return {
        "echo": settings.database_echo,
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_pre_ping": True,
        "pool_recycle": 1800,
    }


def create_engine(settings: Settings) -> AsyncEngine:
    """An async engine for DATABASE_URL (asyncpg) or the embedded SQLite file (aiosqlite)."""
    if settings.is_sqlite:
        settings.var_path.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(settings.sqlalchemy_url, **engine_options(settings))
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
