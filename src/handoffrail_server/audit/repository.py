"""Reads of the audit trail: packet events and administrative actions, merged newest first."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.db.models import AdminAudit, PacketEvent


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Audit filters."""

    actor: str | None = None
    action: str | None = None
    packet_id: uuid.UUID | None = None
    resource: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One merged audit row."""

    id: str
    resource: str
    resource_id: str
    actor: str
    action: str
    details: dict[str, Any] | None
    request_id: str | None
    from_status: str | None
    to_status: str | None
    created_at: datetime


def _packet_select(tenant_id: str, filters: EventFilter) -> Select[Any]:
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
    return select(
        cast(PacketEvent.id, String).label("id"),
        literal("packet").label("resource"),
        cast(PacketEvent.packet_id, String).label("resource_id"),
        PacketEvent.actor.label("actor"),
        PacketEvent.event_type.label("action"),
        PacketEvent.details.label("details"),
        PacketEvent.request_id.label("request_id"),
        PacketEvent.from_status.label("from_status"),
        PacketEvent.to_status.label("to_status"),
        PacketEvent.created_at.label("created_at"),
    ).where(*conditions)


def _admin_select(tenant_id: str, filters: EventFilter) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = [AdminAudit.tenant_id == tenant_id]
    if filters.actor:
        conditions.append(AdminAudit.actor == filters.actor)
    if filters.action:
        conditions.append(AdminAudit.action == filters.action)
    if filters.created_after:
        conditions.append(AdminAudit.created_at >= filters.created_after)
    if filters.created_before:
        conditions.append(AdminAudit.created_at <= filters.created_before)
    return select(
        cast(AdminAudit.id, String).label("id"),
        AdminAudit.resource_type.label("resource"),
        AdminAudit.resource_id.label("resource_id"),
        AdminAudit.actor.label("actor"),
        AdminAudit.action.label("action"),
        AdminAudit.details.label("details"),
        AdminAudit.request_id.label("request_id"),
        literal(None, String).label("from_status"),
        literal(None, String).label("to_status"),
        AdminAudit.created_at.label("created_at"),
    ).where(*conditions)


def _merged(tenant_id: str, filters: EventFilter) -> Any:
    parts: list[Select[Any]] = []
    if filters.resource in (None, "packet"):
        parts.append(_packet_select(tenant_id, filters))
    if filters.resource != "packet" and filters.packet_id is None:
        admin = _admin_select(tenant_id, filters)
        if filters.resource is not None:
            admin = admin.where(AdminAudit.resource_type == filters.resource)
        parts.append(admin)
    if not parts:
        parts.append(_packet_select(tenant_id, filters).where(literal(False)))
    return union_all(*parts).subquery("audit") if len(parts) > 1 else parts[0].subquery("audit")


def _row(mapping: Any) -> AuditRow:
    resource_id = str(mapping["resource_id"])
    if mapping["resource"] == "packet" and len(resource_id) == 32:
        resource_id = str(uuid.UUID(hex=resource_id))  # SQLite stores UUIDs as 32 hex digits
    row_id = str(mapping["id"])
    if len(row_id) == 32:
        row_id = str(uuid.UUID(hex=row_id))
    created = mapping["created_at"]
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    details = mapping["details"]
    if isinstance(details, str):
        details = json.loads(details)
    return AuditRow(
        id=row_id,
        resource=str(mapping["resource"]),
        resource_id=resource_id,
        actor=str(mapping["actor"]),
        action=str(mapping["action"]),
        details=details,
        request_id=mapping["request_id"],
        from_status=mapping["from_status"],
        to_status=mapping["to_status"],
        created_at=created,
    )


async def page(
    session: AsyncSession, tenant_id: str, filters: EventFilter, *, limit: int, offset: int
) -> tuple[list[AuditRow], int]:
    """Entries newest first, with the total count."""
    merged = _merged(tenant_id, filters)
    total = int((await session.execute(select(func.count()).select_from(merged))).scalar_one())
    query = (
        select(merged)
        .order_by(merged.c.created_at.desc(), merged.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(query)).mappings().all()
    return [_row(row) for row in rows], total


async def stream(
    session: AsyncSession, tenant_id: str, filters: EventFilter, batch: int = 1000
) -> AsyncIterator[AuditRow]:
    """Every matching row oldest first, fetched in keyset-paginated batches (bounded memory)."""
    merged = _merged(tenant_id, filters)
    last: tuple[Any, Any] | None = None
    while True:
        query = select(merged).order_by(merged.c.created_at.asc(), merged.c.id.asc()).limit(batch)
        if last is not None:
            query = query.where(
                or_(
                    merged.c.created_at > last[0],
                    and_(merged.c.created_at == last[0], merged.c.id > last[1]),
                )
            )
        rows = (await session.execute(query)).mappings().all()
        if not rows:
            return
        for row in rows:
            yield _row(row)
        last = (rows[-1]["created_at"], rows[-1]["id"])
        if len(rows) < batch:
            return


async def add_admin(session: AsyncSession, row: AdminAudit) -> None:
    """Append one administrative audit row."""
    session.add(row)
    await session.flush()
