"""Reads of the event log for the audit trail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import PacketEvent


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Audit filters."""

    actor: str | None = None
    action: str | None = None
    packet_id: uuid.UUID | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def page(
    session: AsyncSession, tenant_id: str, filters: EventFilter, *, limit: int, offset: int
) -> tuple[list[PacketEvent], int]:
    """Entries newest first, with the total count."""
    conditions: list[ColumnElement[bool]] = [PacketEvent.tenant_id == tenant_id]
    if filters.actor:
        conditions.append(PacketEvent.actor == filters.actor)
    if filters.action:
        conditions.append(PacketEvent.event_type == filters.action)
    if filters.packet_id:
        conditions.append(PacketEvent.packet_id == filters.packet_id)
    if filters.created_after:
        conditions.append(PacketEvent.created_at >= filters.created_after)
    if filters.created_before:
        conditions.append(PacketEvent.created_at <= filters.created_before)
    total_query = select(func.count()).select_from(PacketEvent).where(*conditions)
    total = int((await session.execute(total_query)).scalar_one())
    query = (
        select(PacketEvent)
        .where(*conditions)
        .order_by(PacketEvent.created_at.desc(), PacketEvent.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list((await session.execute(query)).scalars()), total
