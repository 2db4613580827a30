"""Storage of the stream event log. Flushes, never commits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import StreamEvent


async def append(session: AsyncSession, event: StreamEvent) -> None:
    """Add one event in the caller's transaction."""
    session.add(event)
    await session.flush()


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
