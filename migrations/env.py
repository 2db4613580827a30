"""Alembic environment: async engine, batch mode on SQLite, advisory lock on PostgreSQL.

Alembic alone does not make concurrent `upgrade head` safe (two processes both see the old
version and both run DDL). On PostgreSQL we take a transaction-scoped advisory lock first, so
concurrent runs queue; the second one then sees the new version and does nothing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from handoffrail_server.db.base import Base
from handoffrail_server.db.engine import create_engine
from handoffrail_server.db.models import __all__ as _models  # noqa: F401  (registers tables)
from handoffrail_server.settings import normalize_database_url

#: arbitrary constant shared by every HandoffRail process: "hrmigrat" as a 63-bit integer
MIGRATION_LOCK_ID = 0x68726D6967726174

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return normalize_database_url(url)
    from handoffrail_server.settings import load_settings

    return load_settings().database_url


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Search structures are made by hand in migrations (FTS5 table, tsvector column).
    if type_ == "table" and name is not None and name.startswith("packet_fts"):
        return False
    if type_ == "column" and name == "search_vector":
        return False
    return not (type_ == "index" and name == "ix_packet_search_vector")


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )


def _run_sync(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_database_url(), pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
    else:
        asyncio.run(_run_online())
