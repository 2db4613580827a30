"""Storage of the stream event log. Never commits.

Readers remember the last id they delivered (a live stream, or a client resuming with
Last-Event-ID), so a reader must never be shown an id while a smaller one can still commit.

- SQLite serialises writers, so autoincrement ids already follow commit order; events are
  queued on the session and inserted just before commit.
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
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Text,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from handoffrail_server.db import fast
from handoffrail_server.db.models import StreamEvent

#: session.info key holding events to insert at commit
PENDING_KEY = "handoffrail.stream_pending"
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


_PG_INSERT_SQL = (
    "INSERT INTO stream_event (id, tenant_id, event_type, packet_id, status, source_agent_id,"
    " target_agent_id, data, created_at) VALUES"
    " (pg_current_xact_id()::text::bigint * 4096 + $1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


assert f"* {XID_SPAN} +" in _PG_INSERT_SQL


def _next_position(session: AsyncSession) -> int:
    """0, 1, 2... within the session's current (outermost) transaction."""
    root = session.sync_session.get_transaction()
    owner, used = session.info.get(POSITION_KEY, (None, 0))
    position = used if owner is root else 0
    if position >= XID_SPAN:
        raise TooManyStreamEvents(f"more than {XID_SPAN} stream events in one transaction")
    session.info[POSITION_KEY] = (root, position + 1)
    return position


def pg_insert(session: AsyncSession, event: StreamEvent) -> fast.Statement:
    """The INSERT of `event` on PostgreSQL, numbered next in the session's transaction."""
    return fast.Statement(
        _PG_INSERT_SQL,
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
    )


async def append(session: AsyncSession, event: StreamEvent) -> None:
    """Write one event in the caller's transaction.

    PostgreSQL: inserted at once, numbered from the transaction's xid (a savepoint rollback
    removes it with everything else). SQLite: queued and inserted at commit.
    """
    driver = await fast.connection(session)
    if driver is not None:
        statement = pg_insert(session, event)
        async with fast.translated(session):
            await driver.execute(statement.sql, *statement.args)
        return
    sync = session.sync_session
    owner = sync.get_nested_transaction() or sync.get_transaction()
    session.info.setdefault(PENDING_KEY, []).append((event, owner))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: events are written once, at the outermost commit
    pending: list[tuple[StreamEvent, SessionTransaction | None]] | None = session.info.pop(
        PENDING_KEY, None
    )
    if not pending:
        return
    session.add_all([item for item, _owner in pending])


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """Forget events queued in the rolled-back transaction or savepoint (and inside it)."""
    pending = session.info.get(PENDING_KEY)
    if not pending:
        return

    def inside(owner: SessionTransaction | None) -> bool:
        while owner is not None:
            if owner is previous_transaction:
                return True
            owner = owner.parent
        return False

    kept = [(item, owner) for item, owner in pending if not inside(owner)]
    if kept:
        session.info[PENDING_KEY] = kept
    else:
        session.info.pop(PENDING_KEY, None)


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
