"""Engine construction: SQLite gets WAL, foreign keys and a busy timeout; PostgreSQL a pool.

SQLite write transactions start with `BEGIN IMMEDIATE` so two writers queue on the busy timeout
instead of failing with "database is locked" when a reader tries to upgrade its lock.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.pool import PoolResetState

from handoffrail_server.db import fast_sqlite
from handoffrail_server.db import group_commit as group_commits
from handoffrail_server.db.fast import dump_json, load_json
from handoffrail_server.db.uow import limit_connections, take_turn

SQLITE_BUSY_TIMEOUT_MS = 15_000
#: asyncpg's prepared-statement cache unless `HR_DB_STATEMENT_CACHE_SIZE` says otherwise
STATEMENT_CACHE_SIZE = 100


def configured_statement_cache_size() -> int:
    """`HR_DB_STATEMENT_CACHE_SIZE` for engines built without the settings at hand (one-shot
    commands, migrations): `0` behind PgBouncer in transaction mode must hold for them too.
    A value that is not a whole number ≥ 0 is the settings' to refuse; here it is the default."""
    value = os.environ.get("HR_DB_STATEMENT_CACHE_SIZE", "").strip()
    return int(value) if value.isascii() and value.isdigit() else STATEMENT_CACHE_SIZE


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    pool_recycle: int = 1800,
    statement_cache_size: int | None = None,
    pre_ping: bool = False,
    echo: bool = False,
    group_commit: bool = False,
) -> AsyncEngine:
    """Create the async engine for `url` (already normalised by settings). Statement
    parameters never appear in SQLAlchemy's messages or logs (`hide_parameters`): they hold
    packet contents and key hashes. `statement_cache_size` None: the configured one.
    `group_commit`: PostgreSQL units of work hand their lone last write to `db.group_commit`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        pool: dict[str, Any] = {}
        if parsed.database not in (None, "", ":memory:") and "memory" not in str(parsed):
            # a file: each connection is a thread of aiosqlite's, and one opened and closed per
            # request beyond the pool (SQLAlchemy's default of 5) costs more than the request
            # (an in-memory database has one connection, SQLAlchemy's StaticPool). Never less
            # than SQLAlchemy's 5 + 10: a unit of work may hold one connection while the write
            # queue or a read outside its transaction takes another.
            pool = {
                "pool_size": max(pool_size, 5),
                "max_overflow": max(max_overflow, 10),
                "pool_timeout": pool_timeout,
            }
        engine = create_async_engine(
            parsed,
            echo=echo,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_serializer=dump_json,  # orjson: the packet documents are most of a write
            json_deserializer=load_json,  # and of a read
            pool_reset_on_return=None,  # the `reset` event below rolls back only when needed
            **pool,
        )
        _configure_sqlite(engine)
        return engine
    if statement_cache_size is None:
        statement_cache_size = configured_statement_cache_size()
    connect_args: dict[str, Any] = {
        "statement_cache_size": statement_cache_size,
        "server_settings": {"application_name": "handoffrail"},
    }
    if statement_cache_size == 0:
        # PgBouncer in transaction mode (Neon, Supabase pooled endpoints): no prepared statements.
        parsed = parsed.update_query_dict({"prepared_statement_cache_size": "0"})
    engine = create_async_engine(
        parsed,
        echo=echo,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=pool_recycle,
        pool_pre_ping=pre_ping,
        connect_args=connect_args,
        json_serializer=dump_json,
        json_deserializer=load_json,
    )
    limit_connections(engine, pool_size, pool_timeout)
    if group_commit:
        group_commits.enable(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        take_turn()  # a unit of work's turn among this process's writers (db.uow)
        fast_sqlite.begin_immediate(connection.connection.dbapi_connection)

    @event.listens_for(sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
        # what `pool_reset_on_return="rollback"` does, without a hop after every commit
        if state.asyncio_safe and fast_sqlite.needs_rollback(dbapi_connection):
            dbapi_connection.rollback()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory: no expiry on commit so services can return loaded rows."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
