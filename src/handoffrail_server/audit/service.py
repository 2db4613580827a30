"""Audit use cases: list a tenant's recorded events."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.audit import repository
from handoffrail_server.audit.repository import EventFilter
from handoffrail_server.audit.schemas import AuditEntry, AuditPage

__all__ = ["EventFilter", "list_entries"]


async def list_entries(
    session: AsyncSession, tenant_id: str, filters: EventFilter, *, limit: int, offset: int
) -> AuditPage:
    """A page of the tenant's audit entries, newest first."""
    rows, total = await repository.page(session, tenant_id, filters, limit=limit, offset=offset)
    return AuditPage(
        entries=[
            AuditEntry(
                id=str(row.id),
                packet_id=str(row.packet_id),
                actor=row.actor,
                action=row.event_type,
                details=row.details or {},
                timestamp=row.created_at,
                request_id=row.request_id,
                from_status=row.from_status,
                to_status=row.to_status,
            )
            for row in rows
        ],
        total=total,
        limit=limit,
        offset=offset,
    )
