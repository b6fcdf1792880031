"""Engine setup for the two supported stores: SQLite (embedded, WAL) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_DB_URL = "sqlite+aiosqlite:///./var/assistant.db"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    # NORMAL in WAL mode survives a process crash (kill -9) without an fsync per commit;
    # FULL also survives power loss at the cost of an fsync per commit.
    sqlite_synchronous: str = "NORMAL"
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 10.0
    # Connections older than this are replaced, before a server or proxy drops them idle.
    pool_recycle_s: float = 1800.0
    echo: bool = False


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database
    if not database or database == ":memory:":
        return None
    return Path(database)


def create_engine(url: str, options: EngineOptions | None = None) -> AsyncEngine:
    opts = options or EngineOptions()
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    backend = make_url(url).get_backend_name()
    # Statement parameters (message text, names) stay out of error messages and logs.
    kwargs: dict[str, Any] = {"echo": opts.echo, "hide_parameters": True}
    if backend == "postgresql":
        kwargs.update(
            pool_size=opts.pool_size,
            max_overflow=opts.max_overflow,
            pool_timeout=opts.pool_timeout_s,
            pool_recycle=opts.pool_recycle_s,
            pool_pre_ping=True,
        )
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        _set_sqlite_pragmas(engine.sync_engine, opts)
    return engine


def _set_sqlite_pragmas(engine: Engine, opts: EngineOptions) -> None:
    synchronous = opts.sqlite_synchronous.upper()
    if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"unknown SQLite synchronous mode {opts.sqlite_synchronous!r}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def create_thread_engine(url: str, options: EngineOptions | None = None) -> Engine | None:
    """A synchronous engine on the same SQLite file, for transactions that run whole on one
    thread; None for other databases and for in-memory SQLite (a second engine would open a
    second, empty database).

    Through aiosqlite every statement, begin and commit is its own hand-over to the driver's
    thread and back to the event loop; a transaction run whole on a thread is one.
    """
    if _sqlite_path(url) is None:
        return None
    opts = options or EngineOptions()
    engine = create_sync_engine(
        make_url(url).set(drivername="sqlite"), echo=opts.echo, hide_parameters=True
    )
    _set_sqlite_pragmas(engine, opts)
    return engine
