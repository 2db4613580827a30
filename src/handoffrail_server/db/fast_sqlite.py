"""Raw inserts on the aiosqlite connection of the session's transaction (SQLite).

SQLAlchemy's aiosqlite adapter sends every statement through aiosqlite's worker thread in
several hops (cursor, execute, fetch, close), each a queue hand-over and a GIL switch: ~50 hops
for one packet create, more CPU than the statements themselves. The fixed inserts of a state
change (packet, tags, history event) go here as one `execute_fetchall` / `executemany` call
each, on the connection and transaction the session already holds, so they commit or roll back
(savepoints included) with everything else.

Values are converted by the column types' own bind processors (UUIDs as hex, datetimes as
SQLite text, JSON through the dialect's serializer), so the rows are byte for byte what a
SQLAlchemy insert writes; Python-side column defaults are filled in as a Core insert would.
Driver errors are re-raised as SQLAlchemy's classes for the problem handlers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.base import Base
from handoffrail_server.db.fast import rows_of


async def connection(session: AsyncSession) -> Any | None:
    """The aiosqlite connection of the session's transaction (begun if it was not yet), or None
    when not on SQLite."""
    if session.get_bind().dialect.name != "sqlite":
        return None
    sa_connection = await session.connection()
    raw = await sa_connection.get_raw_connection()
    return raw.driver_connection


@cache
def _insert_sql(model: type[Base], keys: tuple[str, ...]) -> str:
    table = model.__table__
    assert isinstance(table, Table)
    placeholders = ", ".join("?" for _ in keys)
    sql = f"INSERT INTO {table.name} ({', '.join(keys)}) VALUES ({placeholders})"  # noqa: S608  # nosec B608 - model identifiers, bound values
    return sql


@cache
def _processors(
    model: type[Base], dialect: Dialect, keys: tuple[str, ...]
) -> tuple[Callable[[Any], Any] | None, ...]:
    table = model.__table__
    assert isinstance(table, Table)
    return tuple(table.columns[key].type.bind_processor(dialect) for key in keys)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise sqlite3 errors as SQLAlchemy's (as its own adapter would)."""
    try:
        yield
    except sqlite3.IntegrityError as error:
        raise sa_exc.IntegrityError(None, None, error) from error
    except sqlite3.OperationalError as error:
        raise sa_exc.OperationalError(None, None, error) from error
    except sqlite3.DatabaseError as error:
        raise sa_exc.DBAPIError(None, None, error) from error


async def insert(session: AsyncSession, driver: Any, objects: Sequence[Base]) -> None:
    """INSERT transient ORM objects of one model in one call (unset columns: their default)."""
    if not objects:
        return
    model = type(objects[0])
    keys, rows = rows_of(objects)
    processors = _processors(model, session.get_bind().dialect, keys)
    parameters = [
        tuple(
            process(row[key]) if process is not None and row[key] is not None else row[key]
            for key, process in zip(keys, processors, strict=True)
        )
        for row in rows
    ]
    sql = _insert_sql(model, keys)
    async with translated():
        if len(parameters) == 1:
            await driver.execute_fetchall(sql, parameters[0])
        else:
            await driver.executemany(sql, parameters)
