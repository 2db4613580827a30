"""Storage of the stream event log. Never commits.

Readers remember the last id they delivered (a live stream, or a client resuming with
Last-Event-ID), so within a tenant ids must follow commit order: an event numbered early but
committed late would otherwise be skipped. Events are therefore queued on the session and
inserted just before commit; on PostgreSQL under a per-tenant transaction-scoped advisory lock,
taken after every other pending write is flushed (so the lock holder waits on no row lock).
SQLite serialises writers anyway.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from handoffrail_server.db.models import StreamEvent

#: session.info key holding events to insert at commit
PENDING_KEY = "handoffrail.stream_pending"
#: first key of the PostgreSQL advisory lock ordering one tenant's stream inserts ("HRst")
_LOCK_CLASS = 0x48527374


async def append(session: AsyncSession, event: StreamEvent) -> None:
    """Queue one event in the caller's transaction; it is numbered and written at commit."""
    sync = session.sync_session
    owner = sync.get_nested_transaction() or sync.get_transaction()
    session.info.setdefault(PENDING_KEY, []).append((event, owner))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    pending: list[tuple[StreamEvent, SessionTransaction | None]] | None = session.info.pop(
        PENDING_KEY, None
    )
    if not pending:
        return
    session.flush()
    events = [item for item, _owner in pending]
    if session.get_bind().dialect.name == "postgresql":
        for tenant_id in sorted({item.tenant_id for item in events}):
            lock = func.pg_advisory_xact_lock(_LOCK_CLASS, func.hashtext(tenant_id))
            session.execute(select(lock))
    session.add_all(events)


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


async def since(
    session: AsyncSession, tenant_id: str, after_id: int, limit: int
) -> list[StreamEvent]:
    """The tenant's events with id > `after_id`, oldest first."""
    result = await session.execute(
        select(StreamEvent)
        .where(StreamEvent.tenant_id == tenant_id, StreamEvent.id > after_id)
        .order_by(StreamEvent.id)
        .limit(limit)
    )
    return list(result.scalars())


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
