"""Storage of the stream event log. Never commits.

Readers remember the last id they delivered (a live stream, or a client resuming with
Last-Event-ID), so a reader must never be shown an id while a smaller one can still commit.

- SQLite: a write transaction holds the database's single write lock from its first write
  (every transaction here starts with `BEGIN IMMEDIATE`) until it ends, so autoincrement ids
  already follow commit order; events are inserted at once.
- PostgreSQL: an event's id is `xid8 * 4096 + n` (`pg_current_xact_id()` of the writing
  transaction, `n` its position in that transaction), and a reader only takes ids below
  `pg_snapshot_xmin(pg_current_snapshot()) * 4096`, evaluated in the same statement: every
  transaction that could still commit has an xid at or above that horizon, so nothing can ever
  appear below an id already delivered. Writers take no lock (an earlier per-tenant advisory
  lock held across COMMIT serialised a tenant's writes). A committed event above the horizon is
  "held back" until the older transactions end; readers retry shortly (`EventBatch.held_back`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db import fast, fast_sqlite
from handoffrail_server.db.models import StreamEvent

#: session.info key: (outermost transaction, stream positions used in it) on PostgreSQL
POSITION_KEY = "handoffrail.stream_position"
#: events one transaction may write on PostgreSQL (ids are `xid8 * XID_SPAN + n`)
XID_SPAN = 4096


class TooManyStreamEvents(RuntimeError):
    """More than `XID_SPAN` stream events in one transaction (jobs work in smaller batches)."""


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events a reader may deliver now, and whether newer committed ones are held back."""

    events: list[StreamEvent]
    held_back: bool = False


#: ids below this can no longer appear: `xmin * XID_SPAN` of the statement's own snapshot
_HORIZON: ColumnElement[Any] = (
    func.pg_snapshot_xmin(func.pg_current_snapshot()).cast(Text).cast(BigInteger) * XID_SPAN
).label("horizon")


#: the columns of a stream event after its id (`$2`… in that order; `$1` is its position)
_STREAM_COLUMNS = (
    "tenant_id",
    "event_type",
    "packet_id",
    "status",
    "source_agent_id",
    "target_agent_id",
    "data",
    "created_at",
)
#: the id: `xid8 * XID_SPAN + position` of the writing transaction
_PG_ID = f"pg_current_xact_id()::text::bigint * {XID_SPAN} + $1"

_PG_INSERT_SQL = (
    f"INSERT INTO stream_event (id, {', '.join(_STREAM_COLUMNS)}) VALUES"  # noqa: S608  # nosec B608 - fixed identifiers, bound values
    f" ({_PG_ID}, {', '.join(f'${index}' for index in range(2, len(_STREAM_COLUMNS) + 2))})"
)


@cache
def _pg_insert_from_sql(source: str) -> str:
    """`_PG_INSERT_SQL` as `INSERT … SELECT … FROM source` (typed parameters: no VALUES list
    gives them their columns' types)."""
    types = fast.casts(StreamEvent)
    selected = ", ".join(
        f"${index}::{types[column]}" for index, column in enumerate(_STREAM_COLUMNS, start=2)
    )
    return (
        f"INSERT INTO stream_event (id, {', '.join(_STREAM_COLUMNS)})"  # noqa: S608  # nosec B608 - fixed identifiers, bound values
        f" SELECT {_PG_ID}::bigint, {selected}"
        f" FROM {source}"
    )


def _next_position(session: AsyncSession) -> int:
    """0, 1, 2... within the session's current (outermost) transaction."""
    root = fast.transaction_identity(session)
    owner, used = session.info.get(POSITION_KEY, (None, 0))
    position = used if owner is root else 0
    if position >= XID_SPAN:
        raise TooManyStreamEvents(f"more than {XID_SPAN} stream events in one transaction")
    session.info[POSITION_KEY] = (root, position + 1)
    return position


@cache
def _pg_insert_for_row_sql(source: str) -> str:
    """`_pg_insert_from_sql` for the packet row that `source` returns: its id, agents and
    metadata are taken from that row (merged into `data` under "metadata")."""
    types = fast.casts(StreamEvent)
    return (
        f"INSERT INTO stream_event (id, {', '.join(_STREAM_COLUMNS)})"  # noqa: S608  # nosec B608 - fixed identifiers, bound values
        f" SELECT {_PG_ID}::bigint, $2::{types['tenant_id']}, $3::{types['event_type']},"
        f" {source}.id, $4::{types['status']},"
        f" {source}.metadata -> 'source_agent' ->> 'id',"
        f" {source}.metadata -> 'target_agent' ->> 'id',"
        f" $5::jsonb || jsonb_build_object('metadata', {source}.metadata),"
        f" $6::{types['created_at']}"
        f" FROM {source}"
    )


def pg_insert_for_row(session: AsyncSession, event: StreamEvent, source: str) -> fast.Statement:
    """`pg_insert(event, source)` where `source` (a CTE name) returns the packet row the event
    is about, picked by the same statement (claim-next): `event` gives everything else."""
    return fast.Statement(
        _pg_insert_for_row_sql(source),
        (
            _next_position(session),
            event.tenant_id,
            event.event_type,
            event.status,
            fast.dump_json(event.data),
            event.created_at,
        ),
        positions=(0,),
    )


def pg_insert(
    session: AsyncSession, event: StreamEvent, source: str | None = None
) -> fast.Statement:
    """The INSERT of `event` on PostgreSQL, numbered next in the session's transaction; with
    `source` (a CTE name) once per row of it, so not at all when it is empty."""
    return fast.Statement(
        _PG_INSERT_SQL if source is None else _pg_insert_from_sql(source),
        (
            _next_position(session),
            event.tenant_id,
            event.event_type,
            event.packet_id,
            event.status,
            event.source_agent_id,
            event.target_agent_id,
            fast.dump_json(event.data),
            event.created_at,
        ),
        positions=(0,),
    )


def sqlite_insert(session: AsyncSession, event: StreamEvent) -> fast_sqlite.Statement:
    """The INSERT of `event` on SQLite (its id: the next autoincrement value)."""
    return fast_sqlite.insert_statement(session, [event])


async def append(session: AsyncSession, event: StreamEvent) -> None:
    """Write one event in the caller's transaction (a savepoint rollback removes it with
    everything else).

    PostgreSQL: numbered from the transaction's xid. SQLite: the next autoincrement id.
    """
    driver = await fast.connection(session)
    if driver is not None:
        statement = pg_insert(session, event)
        async with fast.translated(session):
            await driver.execute(statement.sql, *statement.args)
        return
    lite = await fast_sqlite.connection(session)
    assert lite is not None  # PostgreSQL or SQLite
    await fast_sqlite.run(lite, [sqlite_insert(session, event)])


async def since(session: AsyncSession, tenant_id: str, after_id: int, limit: int) -> EventBatch:
    """The tenant's deliverable events with id > `after_id`, oldest first."""
    query = (
        select(StreamEvent)
        .where(StreamEvent.tenant_id == tenant_id, StreamEvent.id > after_id)
        .order_by(StreamEvent.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name != "postgresql":
        return EventBatch(list((await session.execute(query)).scalars()))
    result = await session.execute(query.add_columns(_HORIZON))
    events: list[StreamEvent] = []
    held_back = False
    for item, horizon in result.tuples():
        if item.id >= horizon:
            held_back = True
            break
        events.append(item)
    return EventBatch(events, held_back)


async def last_id(session: AsyncSession, tenant_id: str) -> int:
    """The newest event id of the tenant (0 when none)."""
    result = await session.execute(
        select(func.max(StreamEvent.id)).where(StreamEvent.tenant_id == tenant_id)
    )
    return int(result.scalar_one_or_none() or 0)


async def prune(session: AsyncSession, before: datetime) -> int:
    """Delete events older than `before`."""
    result = await session.execute(delete(StreamEvent).where(StreamEvent.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
