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
- JSON parameters are sent as text (`dump_json`, orjson with a fallback): SQLAlchemy registers
  text codecs for json/jsonb on every connection it opens.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import asyncpg
import orjson
from sqlalchemy import JSON, Table, Uuid, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from handoffrail_server.db.base import Base
from handoffrail_server.db.rows import transient
from handoffrail_server.db.rows import values as column_values

#: session.info key: (innermost SessionTransaction, asyncpg connection) last handed out
_KEY = "handoffrail.pg_connection"
#: session.info key: the `Lean` connection of a unit of work (db/uow.py) the session is bound to
LEAN_KEY = "handoffrail.lean_connection"

LOST_CONNECTION = (
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


class Lean:
    """A unit of work's own pooled connection (PostgreSQL), checked out on first raw use.

    Until the session opens a transaction of its own (ORM use, a savepoint), `connection()`
    checks out a connection from the engine, rebinds the session to it (ORM work later in the
    unit joins the same transaction) and hands out its driver; the unit of work commits the
    driver transaction with `commit()`: no session transaction, no greenlet hops. A unit whose
    first statement comes from the ORM leaves this unused: the session owns everything."""

    __slots__ = ("adapted", "connection", "driver", "engine", "finished")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.connection: AsyncConnection | None = None
        self.adapted: Any = None
        self.driver: asyncpg.Connection | None = None
        #: the unit's last write ran on its own, committed by PostgreSQL (`connection(last=)`)
        self.finished = False

    async def checkout(self, session: AsyncSession) -> asyncpg.Connection:
        """The driver connection, checked out (and the session bound to it) on first use."""
        if self.driver is not None:
            return self.driver
        connection = await self.engine.connect()
        sync = connection.sync_connection
        assert sync is not None  # started by `engine.connect()`
        proxied = sync.connection  # checked out just now: no I/O
        self.connection = connection
        self.adapted = proxied.dbapi_connection
        self.driver = driver = proxied.driver_connection
        session.bind = connection
        session.sync_session.bind = sync
        return driver

    async def commit(self) -> None:
        """COMMIT the driver transaction, if one is open; errors as SQLAlchemy's."""
        adapted = self.adapted
        if adapted is None or adapted._transaction is None:
            return
        try:
            await adapted._call_and_discard(adapted._transaction.commit)
        except (asyncpg.PostgresError, *LOST_CONNECTION) as error:
            lost = isinstance(error, LOST_CONNECTION) or self.closed()
            if lost and self.connection is not None:
                await self.connection.invalidate()
            raise translate(error, lost=lost) from error

    def closed(self) -> bool:
        """True when the checked-out driver connection has died."""
        return self.driver is not None and bool(self.driver.is_closed())


def idle_unit(session: AsyncSession) -> Lean | None:
    """The unit of work's `Lean` while it has written nothing and holds no connection (its
    one write may go elsewhere: `db.group_commit`)."""
    lean = _lean(session)
    if lean is None or lean.finished or lean.driver is not None:
        return None
    return lean


def _lean(session: AsyncSession) -> Lean | None:
    """The unit of work's connection while the session has no transaction of its own."""
    lean: Lean | None = session.info.get(LEAN_KEY)
    if lean is None or session.sync_session.get_transaction() is not None:
        return None
    return lean


async def _begin(session: AsyncSession, adapted: Any) -> None:
    """BEGIN on SQLAlchemy's asyncpg adapter unless its transaction has started.

    The adapter sends BEGIN lazily with the first statement it executes (private API, pinned by
    uv.lock; tests/integration/test_fast_path.py guards it): a raw statement before that would
    run outside the transaction."""
    if adapted._transaction is None:
        async with translated(session):
            await adapted._start_transaction()


def transaction_identity(session: AsyncSession) -> object:
    """What stays the same for as long as the session's database transaction lasts: the unit
    of work's connection, or else the session's outermost transaction."""
    lean = session.info.get(LEAN_KEY)
    if lean is not None:
        return lean
    return session.sync_session.get_transaction()


def wrote_nothing(session: AsyncSession) -> None:
    """The statement run after `connection(last=True)` changed no row (a compare-and-set that
    lost): the unit of work has written nothing yet and may write again."""
    lean: Lean | None = session.info.get(LEAN_KEY)
    if lean is None or not lean.finished:
        return
    if lean.adapted is None or lean.adapted._transaction is None:  # None: it went to a batch
        lean.finished = False


class UnitFinished(RuntimeError):
    """A write after the statement a unit of work declared its last (a programming error)."""


async def connection(
    session: AsyncSession, *, begin: bool = True, last: bool = False
) -> asyncpg.Connection | None:
    """The asyncpg connection of the session's transaction, or None when not on PostgreSQL.

    `begin=False` is for a plain SELECT (no row locks, nothing transaction-local): while a unit
    of work has not written yet, it runs before the BEGIN. Under READ COMMITTED a statement
    sees the same rows either way (each takes its own snapshot), and a unit that never writes
    (a read, a refused claim, a bad key) then needs neither BEGIN nor COMMIT.

    `last=True` promises that the unit of work writes nothing after this statement. If it has
    not written before either, the statement runs without BEGIN: PostgreSQL commits a lone
    statement on its own, all of it or nothing, so the unit saves the BEGIN and COMMIT round
    trips. A later write in that unit raises `UnitFinished` (and so does ORM work, at commit:
    db/uow.py), since it could no longer be atomic with the first."""
    lean = _lean(session)
    if lean is not None:
        if lean.finished and begin:
            raise UnitFinished("this unit of work already committed its last statement")
        lean_driver = await lean.checkout(session)
        if begin:
            if last and lean.adapted._transaction is None:
                lean.finished = True
            else:
                await _begin(session, lean.adapted)
        return lean_driver
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
    await _begin(session, adapted)
    driver = raw.driver_connection
    session.info[_KEY] = (_current_transaction(session), driver)
    return driver


def translate(error: BaseException, *, lost: bool) -> sa_exc.DBAPIError:
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
    except (asyncpg.PostgresError, *LOST_CONNECTION) as error:
        lost = isinstance(error, LOST_CONNECTION) or _driver_closed(session)
        if lost:
            await _discard_connection(session)
        raise translate(error, lost=lost) from error


def _driver_closed(session: AsyncSession) -> bool:
    lean: Lean | None = session.info.get(LEAN_KEY)
    if lean is not None and lean.driver is not None:
        return lean.closed()
    cached = session.info.get(_KEY)
    return cached is not None and bool(cached[1].is_closed())


async def _discard_connection(session: AsyncSession) -> None:
    """Drop the session's dead connection from the pool; the rollback that follows is a no-op."""
    session.info.pop(_KEY, None)
    try:
        lean: Lean | None = session.info.get(LEAN_KEY)
        if lean is not None and lean.connection is not None:
            lean.adapted._transaction = None  # nothing left to roll back on a closed connection
            await lean.connection.invalidate()
            return
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
def _insert_sql(model: type[Base], keys: tuple[str, ...], count: int = 1) -> str:
    """`INSERT INTO table (keys) VALUES ($1, ...), ...` for `count` rows."""
    table = model.__table__
    assert isinstance(table, Table)
    width = len(keys)
    tuples = ", ".join(
        "(" + ", ".join(f"${row * width + index}" for index in range(1, width + 1)) + ")"
        for row in range(count)
    )
    columns = ", ".join(keys)
    sql = f"INSERT INTO {table.name} ({columns}) VALUES {tuples}"  # noqa: S608  # nosec B608 - model identifiers, bound values
    return sql


def dump_json(value: Any) -> str:
    """JSON text of a JSON-typed value: orjson (several times faster than `json` on the packet
    documents), or `json` for what orjson refuses, such as integers beyond 64 bits."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


#: ASCII digits → "0", every other byte → " " (UTF-8 puts no ASCII byte inside a character)
_DIGITS_ONLY = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
#: 19 digits in a row: perhaps an integer beyond 64 bits, which orjson would read as a float
_LONG_RUN = b"0" * 19


def load_json(text: str | bytes) -> Any:
    """The value of a JSON column's text, as `json.loads` reads it: orjson (twice as fast on
    the packet documents, scan included), but `json` for what orjson reads differently or
    refuses: integers beyond 64 bits (orjson makes them floats; any run of 19 digits is taken
    for one, found by two C-speed passes rather than a regex, which costs more than `json`),
    lone surrogates, numbers beyond a double's range."""
    try:
        raw = text.encode() if isinstance(text, str) else text
    except UnicodeEncodeError:  # a lone surrogate in the text itself
        return json.loads(text)
    if _LONG_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON (orjson; `json` for integers beyond 64 bits)."""
    try:
        return len(orjson.dumps(value))
    except TypeError:  # orjson.JSONEncodeError
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _arguments(model: type[Base], row: dict[str, Any], keys: tuple[str, ...]) -> list[Any]:
    json_columns = _json_columns(model)
    return [dump_json(row[key]) if key in json_columns else row[key] for key in keys]


def rows_of(objects: Sequence[Base]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """(sorted keys, rows) of transient objects of one model, defaults filled in."""
    defaults = _defaults(type(objects[0]))
    rows = [{**defaults, **column_values(obj)} for obj in objects]
    keys = tuple(sorted(rows[0]))
    if any(tuple(sorted(row)) != keys for row in rows):
        keys = tuple(sorted({key for row in rows for key in row}))
        rows = [{key: row.get(key) for key in keys} for row in rows]
    return keys, rows


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement with its own `$1..$n` placeholders and their arguments."""

    sql: str
    args: tuple[Any, ...] = ()
    #: indexes in `args` of stream event positions (group commit renumbers them)
    positions: tuple[int, ...] = ()
    #: indexes in `args` that group commit sets to the statement's place in its batch (0
    #: alone), selected as `MEMBER_COLUMN` to tell whose the returned rows are
    member: tuple[int, ...] = ()


#: the column of a statement's rows that names its place in a batch (`Statement.member`)
MEMBER_COLUMN = "handoffrail_batch_member"


def insert_statement(objects: Sequence[Base]) -> Statement:
    """One multi-row INSERT of transient objects of one model (unset columns: their default)."""
    model = type(objects[0])
    keys, rows = rows_of(objects)
    args = [value for row in rows for value in _arguments(model, row, keys)]
    return Statement(_insert_sql(model, keys, len(rows)), tuple(args))


@cache
def casts(model: type[Base]) -> dict[str, str]:
    """PostgreSQL type of each column, without lengths (`$n::varchar`: the column's own length
    is still checked on assignment), for parameters outside a VALUES list."""
    table = model.__table__
    assert isinstance(table, Table)
    dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves __init__ untyped
    return {
        column.key: re.sub(r"\(.*\)", "", column.type.compile(dialect=dialect)).lower()
        for column in table.columns
    }


def insert_from(
    objects: Sequence[Base], source: str, from_source: dict[str, str] | None = None
) -> Statement:
    """`INSERT INTO table (keys) SELECT $1::type, ... FROM source`: the row of one transient
    object, inserted once per row of `source` (a CTE name), so not at all when it is empty;
    the keys of `from_source` take that column of the source's row instead of the object's."""
    model = type(objects[0])
    keys, rows = rows_of(objects)
    assert len(rows) == 1, "one row per statement"
    taken = from_source or {}
    types = casts(model)
    table = model.__table__
    assert isinstance(table, Table)
    bound = [key for key in keys if key not in taken]
    number = {key: index for index, key in enumerate(bound, start=1)}
    selected = ", ".join(
        f"{source}.{taken[key]}" if key in taken else f"${number[key]}::{types[key]}"
        for key in keys
    )
    sql = f"INSERT INTO {table.name} ({', '.join(keys)}) SELECT {selected} FROM {source}"  # noqa: S608  # nosec B608 - model identifiers, bound values
    return Statement(sql, tuple(_arguments(model, rows[0], tuple(bound))))


async def insert(
    session: AsyncSession, driver: asyncpg.Connection, objects: Sequence[Base]
) -> None:
    """INSERT transient ORM objects of one model (unset columns take their database default)."""
    if not objects:
        return
    model = type(objects[0])
    keys, rows = rows_of(objects)
    statement = _insert_sql(model, keys)
    async with translated(session):
        if len(rows) == 1:
            await driver.execute(statement, *_arguments(model, rows[0], keys))
        else:
            await driver.executemany(statement, [_arguments(model, row, keys) for row in rows])


_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=512)
def _shifted(sql: str, offset: int) -> str:
    if not offset:
        return sql
    return _PLACEHOLDER.sub(lambda match: f"${int(match.group(1)) + offset}", sql)


def together(writes: Sequence[Statement], then: Statement) -> Statement:
    """`WITH w0 AS (write), w1 AS (...) <then>`: several writes and a query as one statement.

    Data-modifying CTEs all run, on one snapshot, even when `then` does not read them; foreign
    keys are checked at the end of the whole statement, so a child row may name a parent row
    inserted beside it. Placeholders are renumbered in order."""
    parts: list[str] = []
    args: list[Any] = []
    positions: list[int] = []
    member: list[int] = []
    for index, write in enumerate(writes):
        parts.append(f"w{index} AS ({_shifted(write.sql, len(args))})")
        positions.extend(len(args) + position for position in write.positions)
        member.extend(len(args) + place for place in write.member)
        args.extend(write.args)
    sql = _shifted(then.sql, len(args))
    positions.extend(len(args) + position for position in then.positions)
    member.extend(len(args) + place for place in then.member)
    args.extend(then.args)
    if parts:
        sql = f"WITH {', '.join(parts)} {sql}"
    return Statement(sql, tuple(args), tuple(positions), tuple(member))


async def fetch(session: AsyncSession, driver: asyncpg.Connection, statement: Statement) -> Any:
    """Run `statement` and return its rows (asyncpg records), errors translated."""
    async with translated(session):
        return await driver.fetch(statement.sql, *statement.args)


@cache
def read_columns(model: type[Base]) -> tuple[tuple[str, str, str], ...]:
    """(attribute, column, kind) of every mapped column, in `select_list` order; kind: json,
    uuid or plain."""
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


@cache
def select_list(model: type[Base]) -> str:
    """The column list (mapped columns only) for raw SELECT / RETURNING of `model`."""
    return ", ".join(column for _attribute, column, _kind in read_columns(model))


def to_model(model: type[Base], record: Any) -> Any:
    """A transient `model` instance from a raw row selected with `select_list(model)`."""
    values: dict[str, Any] = {}
    for attribute, column, kind in read_columns(model):
        value = record[column]
        if value is not None:
            if kind == "json" and isinstance(value, str):
                value = load_json(value)
            elif kind == "uuid" and not isinstance(value, uuid.UUID):
                value = uuid.UUID(str(value))
        values[attribute] = value
    return transient(model, **values)


def column_of(model: type[Base], attribute: str) -> tuple[str, bool]:
    """(column name, is JSON) of a mapped attribute."""
    for key, column, kind in read_columns(model):
        if key == attribute:
            return column, kind == "json"
    raise KeyError(attribute)
