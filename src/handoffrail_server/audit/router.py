"""HTTP route of the audit trail (CONTRACT.md §5 Audit)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from handoffrail_server.api.deps import Caller, Session, as_utc
from handoffrail_server.audit import service
from handoffrail_server.audit.schemas import AuditPage

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
async def list_audit(
    session: Session,
    caller: Caller,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    packet_id: uuid.UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> AuditPage:
    """The tenant's recorded events, newest first."""
    filters = service.EventFilter(
        actor=actor,
        action=action,
        packet_id=packet_id,
        created_after=as_utc(created_after),
        created_before=as_utc(created_before),
    )
    return await service.list_entries(
        session, caller.tenant_id, filters, limit=limit, offset=offset
    )
