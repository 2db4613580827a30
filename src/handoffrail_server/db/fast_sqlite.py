"""Raw inserts on the aiosqlite connection of the session's transaction (SQLite).

SQLAlchemy's aiosqlite adapter sends every statement through aiosqlite's worker thread in
several hops (cursor, execute, fetch, close), each a queue hand-over and a GIL switch (~45 µs
of CPU), more than the statements themselves cost. The fixed statements of a state change
(packet, tags, history event, stream event, the webhook-subscriber lookup) go here as one
function run in that thread (`run`: one hop for all of them), on the connection and
transaction the session already holds, so they commit or roll back (savepoints included) with
everything else.

Values are converted by the column types' own bind processors (UUIDs as hex, datetimes as
SQLite text, JSON through the dialect's serializer), so the rows are byte for byte what a
SQLAlchemy insert writes; Python-side column defaults are filled in as a Core insert would.
Driver errors are re-raised as SQLAlchemy's classes for the problem handlers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.util import await_, greenlet_spawn

from handoffrail_server.db import sqlite_reader
from handoffrail_server.db.base import Base
from handoffrail_server.db.fast import read_columns, rows_of
from handoffrail_server.db.rows import transient


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


@contextmanager
def translating() -> Iterator[None]:
    """Re-raise sqlite3 errors as SQLAlchemy's (as its own adapter would)."""
    try:
        yield
    except sqlite3.IntegrityError as error:
        raise sa_exc.IntegrityError(None, None, error) from error
    except sqlite3.OperationalError as error:
        raise sa_exc.OperationalError(None, None, error) from error
    except sqlite3.DatabaseError as error:
        raise sa_exc.DBAPIError(None, None, error) from error


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """`translating` around awaited driver calls."""
    with translating():
        yield


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement with `?` placeholders, run once per parameter tuple."""

    sql: str
    parameters: Sequence[tuple[Any, ...]] = ((),)


def _bound_row(
    row: dict[str, Any],
    keys: tuple[str, ...],
    processors: tuple[Callable[[Any], Any] | None, ...],
) -> tuple[Any, ...]:
    return tuple(
        process(row[key]) if process is not None and row[key] is not None else row[key]
        for key, process in zip(keys, processors, strict=True)
    )


def insert_statement(session: AsyncSession, objects: Sequence[Base]) -> Statement:
    """The INSERT of transient ORM objects of one model (unset columns: their default)."""
    model = type(objects[0])
    keys, rows = rows_of(objects)
    processors = _processors(model, session.get_bind().dialect, keys)
    return Statement(_insert_sql(model, keys), [_bound_row(row, keys, processors) for row in rows])


@cache
def _result_processors(
    model: type[Base], dialect: Dialect
) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    table = model.__table__
    assert isinstance(table, Table)
    types = (
        (attribute, table.columns[column].type) for attribute, column, _ in read_columns(model)
    )
    return tuple(
        (attribute, kind.dialect_impl(dialect).result_processor(dialect, None))
        for attribute, kind in types
    )


def to_model(session: AsyncSession, model: type[Base], row: Sequence[Any]) -> Any:
    """A transient `model` instance from a raw row selected with `fast.select_list(model)`,
    each value through its column type's result processor (as SQLAlchemy reads it)."""
    processors = _result_processors(model, session.get_bind().dialect)
    return transient(
        model,
        **{
            attribute: value if process is None or value is None else process(value)
            for (attribute, process), value in zip(processors, row, strict=True)
        },
    )


def bound(session: AsyncSession, model: type[Base], values: dict[str, Any]) -> tuple[Any, ...]:
    """`values` (column key → value) as the columns' bind processors pass them to SQLite."""
    keys = tuple(values)
    return _bound_row(values, keys, _processors(model, session.get_bind().dialect, keys))


async def read_outside(session: AsyncSession, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
    """The rows of a read, outside the session's transaction when it has not begun one (on
    the event loop's thread: `db.sqlite_reader`; else a pooled connection of its own, one hop;
    no `BEGIN IMMEDIATE` either way, and so no writer's turn: `db.uow`); inside it otherwise,
    where it sees the transaction's own writes."""
    engine = session.bind
    if session.in_transaction() or not isinstance(engine, AsyncEngine):
        lite = await connection(session)
        assert lite is not None  # SQLite
        with translating():
            rows: list[Any] = await lite.execute_fetchall(sql, parameters)
        return rows
    inline = sqlite_reader.read(engine, sql, parameters)
    if inline is not None:
        return inline
    raw = await engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        with translating():
            return list(await driver.execute_fetchall(sql, parameters))
    finally:
        await greenlet_spawn(raw.close)


def _run_in_thread(
    connection: sqlite3.Connection, writes: Sequence[Statement], query: Statement | None
) -> list[Any]:
    for statement in writes:
        if len(statement.parameters) == 1:
            connection.execute(statement.sql, statement.parameters[0])
        else:
            connection.executemany(statement.sql, statement.parameters)
    if query is None:
        return []
    return connection.execute(query.sql, query.parameters[0]).fetchall()


async def run(
    driver: Any, writes: Sequence[Statement], query: Statement | None = None
) -> list[Any]:
    """Run `writes`, then `query`, in one hop to the connection's thread; the query's rows.

    aiosqlite runs every call of a connection in that connection's own thread, in order; this
    hands it one function (its `_execute`, what its public methods use) instead of a call per
    statement. A failing statement stops the rest; the transaction decides what stays.
    """
    with translating():
        rows: list[Any] = await driver._execute(_run_in_thread, driver._conn, writes, query)
    return rows


def run_in_transaction(connection: sqlite3.Connection, writes: Sequence[Statement]) -> None:
    """In the connection's thread, inside its transaction: `writes`, in order."""
    _run_in_thread(connection, writes, None)


def run_if_changed_here(
    connection: sqlite3.Connection, change: Statement, writes: Sequence[Statement]
) -> list[Any]:
    """In the connection's thread: `change` (an UPDATE … RETURNING), then `writes` only if it
    returned rows; its rows."""
    rows = connection.execute(change.sql, change.parameters[0]).fetchall()
    if rows:
        _run_in_thread(connection, writes, None)
    return rows


async def run_if_changed(driver: Any, change: Statement, writes: Sequence[Statement]) -> list[Any]:
    """`change` (an UPDATE … RETURNING), then `writes` only if it returned rows, in one hop to
    the connection's thread; the rows it returned (none: it matched nothing, nothing written)."""
    with translating():
        rows: list[Any] = await driver._execute(run_if_changed_here, driver._conn, change, writes)
    return rows


async def insert(session: AsyncSession, driver: Any, objects: Sequence[Base]) -> None:
    """INSERT transient ORM objects of one model in one call (unset columns: their default)."""
    if objects:
        await run(driver, [insert_statement(session, objects)])


def begin_immediate_here(connection: sqlite3.Connection) -> None:
    """In the connection's thread: `BEGIN IMMEDIATE` (a transaction left open by a call whose
    caller was cancelled meanwhile is rolled back first)."""
    if connection.in_transaction:
        connection.rollback()
    connection.execute("BEGIN IMMEDIATE")


def _rollback_if_open(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.rollback()


def begin_immediate(adapted: Any) -> None:
    """`BEGIN IMMEDIATE` on SQLAlchemy's aiosqlite connection adapter, from its `begin` event
    (sync code in SQLAlchemy's greenlet): one hop instead of three (cursor, execute, close).

    A caller cancelled (or failed) while the BEGIN waits in the connection's thread (for the
    write lock of another process, say) leaves it to run there after the connection went back
    to the pool, holding SQLite's write lock in the pool until that connection is used again,
    and every other writer waits for it until its busy timeout. So a rollback is queued right
    behind it, without waiting: the thread runs its calls in order, so it comes after that
    BEGIN and before whatever the connection's next user asks."""
    driver = adapted._connection  # the aiosqlite connection inside the adapter
    try:
        with translating():
            await_(driver._execute(begin_immediate_here, driver._conn))
    except BaseException:
        if driver._connection is not None:  # still open: its thread runs what is queued
            driver._tx.put_nowait((None, partial(_rollback_if_open, driver._conn)))
        raise


def needs_rollback(adapted: Any) -> bool:
    """Whether the connection is inside a transaction (read without a hop to its thread).

    A pooled connection is reset (rolled back) on its return even after a commit, one more hop
    per unit of work; the pool's `reset` event asks this first. A transaction a cancelled call
    opens later in the thread is rolled back by the next `begin_immediate`."""
    connection: sqlite3.Connection | None = adapted._connection._connection
    return connection is not None and connection.in_transaction
