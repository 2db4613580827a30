"""Raw asyncpg statements inside the session's own connection and transaction (PostgreSQL).

The per-request hot path (key lookup, quota counter, packet/tag/event/stream inserts, the
webhook fan-out check) runs a handful of fixed statements. Through SQLAlchemy each costs about
0.27 ms of CPU; on the same asyncpg connection about 0.07 ms (`bench/driver_cost.py` measures
both in every benchmark run). These helpers run such statements on the driver connection that
the session's transaction already holds, so they commit or roll back with everything else.

- `connection(session)` returns that asyncpg connection (starting the transaction if the
  session has not sent a statement yet), or None on SQLite, where callers use SQLAlchemy.
- Errors are translated to SQLAlchemy's exception classes (`OperationalError` for a lost
  connection, which also invalidates the pooled connection; `IntegrityError`, `DataError`,
  `DBAPIError` otherwise), so the problem handlers answer exactly as for the ORM paths.
- JSON parameters are sent as text: SQLAlchemy registers text codecs for json/jsonb on every
  connection it opens.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import JSON, Table, Uuid, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.base import Base
from handoffrail_server.db.rows import values as column_values

#: session.info key: (innermost SessionTransaction, asyncpg connection) last handed out
_KEY = "handoffrail.pg_connection"

_LOST_CONNECTION = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, terminated backend
    OSError,
    TimeoutError,
)


def _current_transaction(session: AsyncSession) -> Any:
    # The innermost one: `session.connection()` inside a new savepoint is what emits its
    # SAVEPOINT (SQLAlchemy starts them lazily), so a cache hit must be for that very savepoint.
    sync = session.sync_session
    return sync.get_nested_transaction() or sync.get_transaction()


async def connection(session: AsyncSession) -> asyncpg.Connection | None:
    """The asyncpg connection of the session's transaction, or None when not on PostgreSQL."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    cached = session.info.get(_KEY)
    current = _current_transaction(session)
    if cached is not None and current is not None and cached[0] is current:
        driver: asyncpg.Connection = cached[1]
        return driver
    sa_connection = await session.connection()
    raw = await sa_connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily with the first statement it executes
    # (private API, pinned by uv.lock; tests/integration/test_fast_path.py guards it): a raw
    # statement before that would run outside the transaction.
    if adapted._transaction is None:
        async with translated(session):
            await adapted._start_transaction()
    driver = raw.driver_connection
    session.info[_KEY] = (_current_transaction(session), driver)
    return driver


def _translate(error: BaseException, *, lost: bool) -> sa_exc.DBAPIError:
    if lost:
        return sa_exc.OperationalError(None, None, error, connection_invalidated=True)
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return sa_exc.IntegrityError(None, None, error)
    if isinstance(error, asyncpg.DataError):
        return sa_exc.DataError(None, None, error)
    return sa_exc.DBAPIError(None, None, error)


@asynccontextmanager
async def translated(session: AsyncSession) -> AsyncIterator[None]:
    """Re-raise driver errors as SQLAlchemy's; a lost connection is dropped from the pool."""
    try:
        yield
    except (asyncpg.PostgresError, *_LOST_CONNECTION) as error:
        lost = isinstance(error, _LOST_CONNECTION) or _driver_closed(session)
        if lost:
            await _discard_connection(session)
        raise _translate(error, lost=lost) from error


def _driver_closed(session: AsyncSession) -> bool:
    cached = session.info.get(_KEY)
    return cached is not None and bool(cached[1].is_closed())


async def _discard_connection(session: AsyncSession) -> None:
    """Drop the session's dead connection from the pool; the rollback that follows is a no-op."""
    session.info.pop(_KEY, None)
    try:
        sa_connection = await session.connection()
        raw = await sa_connection.get_raw_connection()
        adapted: Any = raw.dbapi_connection
        adapted._transaction = None  # nothing left to roll back on a closed connection
        await sa_connection.invalidate()
    except Exception:  # noqa: S110 - best effort: the original error is what matters
        pass


@cache
def _json_columns(model: type[Base]) -> frozenset[str]:
    table = model.__table__
    assert isinstance(table, Table)
    return frozenset(column.key for column in table.columns if isinstance(column.type, JSON))


@cache
def _defaults(model: type[Base]) -> dict[str, Any]:
    """Python-side scalar column defaults (what a Core insert would fill in)."""
    table = model.__table__
    assert isinstance(table, Table)
    return {
        column.key: column.default.arg
        for column in table.columns
        if column.default is not None and column.default.is_scalar
    }


@cache
def _insert_sql(model: type[Base], keys: tuple[str, ...]) -> str:
    table = model.__table__
    assert isinstance(table, Table)
    placeholders = ", ".join(f"${index}" for index in range(1, len(keys) + 1))
    columns = ", ".join(keys)
    sql = f"INSERT INTO {table.name} ({columns}) VALUES ({placeholders})"  # noqa: S608  # nosec B608 - model identifiers, bound values
    return sql


def _arguments(model: type[Base], row: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    json_columns = _json_columns(model)
    return [json.dumps(row[key]) if key in json_columns else row[key] for key in keys]


async def insert(
    session: AsyncSession, driver: asyncpg.Connection, objects: Sequence[Base]
) -> None:
    """INSERT transient ORM objects of one model (unset columns take their database default)."""
    if not objects:
        return
    model = type(objects[0])
    defaults = _defaults(model)
    rows = [{**defaults, **column_values(obj)} for obj in objects]
    keys = tuple(sorted(rows[0]))
    if any(tuple(sorted(row)) != keys for row in rows):
        keys = tuple(sorted({key for row in rows for key in row}))
        rows = [{key: row.get(key) for key in keys} for row in rows]
    statement = _insert_sql(model, keys)
    async with translated(session):
        if len(rows) == 1:
            await driver.execute(statement, *_arguments(model, rows[0], keys))
        else:
            await driver.executemany(statement, [_arguments(model, row, keys) for row in rows])


@cache
def _read_columns(model: type[Base]) -> tuple[tuple[str, str, str], ...]:
    """(attribute, column, kind) of every mapped column; kind: json, uuid or plain."""
    mapper: Any = inspect(model)
    columns = []
    for attribute in mapper.column_attrs:
        column = attribute.columns[0]
        kind = "plain"
        if isinstance(column.type, JSON):
            kind = "json"
        elif isinstance(column.type, Uuid):
            kind = "uuid"
        columns.append((attribute.key, column.key, kind))
    return tuple(columns)


def select_list(model: type[Base]) -> str:
    """The column list (mapped columns only) for raw SELECT / RETURNING of `model`."""
    return ", ".join(column for _attribute, column, _kind in _read_columns(model))


def to_model(model: type[Base], record: Any) -> Any:
    """A transient `model` instance from a raw row selected with `select_list(model)`."""
    values: dict[str, Any] = {}
    for attribute, column, kind in _read_columns(model):
        value = record[column]
        if value is not None:
            if kind == "json" and isinstance(value, str):
                value = json.loads(value)
            elif kind == "uuid" and not isinstance(value, uuid.UUID):
                value = uuid.UUID(str(value))
        values[attribute] = value
    return model(**values)


def column_of(model: type[Base], attribute: str) -> tuple[str, bool]:
    """(column name, is JSON) of a mapped attribute."""
    for key, column, kind in _read_columns(model):
        if key == attribute:
            return column, kind == "json"
    raise KeyError(attribute)
