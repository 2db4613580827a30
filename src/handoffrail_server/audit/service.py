"""Audit use cases: record administrative actions; list and export the trail.

Actors are key ids (never keys); each row carries the request id of the request that made it.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from handoffrail_server.audit import repository
from handoffrail_server.audit.repository import AuditRow, EventFilter
from handoffrail_server.audit.schemas import AuditEntry, AuditPage
from handoffrail_server.clock import Clock
from handoffrail_server.db.models import AdminAudit
from handoffrail_server.db.uow import unit_of_work

__all__ = ["EventFilter", "export_lines", "list_entries", "record_admin"]

CSV_FIELDS = (
    "id",
    "timestamp",
    "resource",
    "resource_id",
    "actor",
    "action",
    "from_status",
    "to_status",
    "request_id",
    "details",
)


def _current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


async def record_admin(
    session: AsyncSession,
    clock: Clock,
    *,
    tenant_id: str,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an administrative action in the caller's transaction."""
    await repository.add_admin(
        session,
        AdminAudit(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            actor=actor[:512],
            action=action,
            resource_type=resource_type,
            resource_id=resource_id[:64],
            request_id=_current_request_id(),
            details=details,
            created_at=clock.now(),
        ),
    )


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        packet_id=row.resource_id if row.resource == "packet" else "",
        actor=row.actor,
        action=row.action,
        resource=row.resource,
        resource_id=row.resource_id,
        details=row.details or {},
        timestamp=row.created_at,
        request_id=row.request_id,
        from_status=row.from_status,
        to_status=row.to_status,
    )


async def list_entries(
    session: AsyncSession, tenant_id: str, filters: EventFilter, *, limit: int, offset: int
) -> AuditPage:
    """A page of the tenant's audit entries, newest first."""
    rows, total = await repository.page(session, tenant_id, filters, limit=limit, offset=offset)
    return AuditPage(entries=[_entry(row) for row in rows], total=total, limit=limit, offset=offset)


def _record(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": row.created_at.isoformat(),
        "resource": row.resource,
        "resource_id": row.resource_id,
        "actor": row.actor,
        "action": row.action,
        "from_status": row.from_status,
        "to_status": row.to_status,
        "request_id": row.request_id,
        "details": row.details or {},
    }


#: a spreadsheet reads a cell starting with one of these as a formula (OWASP: CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """`value` for a CSV cell, a leading `'` keeping client-chosen text from being a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


async def export_lines(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: str,
    filters: EventFilter,
    export_format: str,
) -> AsyncIterator[str]:
    """The trail oldest first as JSONL or CSV text chunks, read in batches (bounded memory)."""
    async with unit_of_work(sessions) as session:
        if export_format == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(CSV_FIELDS)
            yield buffer.getvalue()
        async for row in repository.stream(session, tenant_id, filters):
            record = _record(row)
            if export_format == "csv":
                buffer = io.StringIO()
                record["details"] = json.dumps(record["details"], separators=(",", ":"))
                csv.writer(buffer).writerow([csv_cell(record[name]) for name in CSV_FIELDS])
                yield buffer.getvalue()
            else:
                yield json.dumps(record, separators=(",", ":")) + "\n"
