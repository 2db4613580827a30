"""HTTP routes of the audit trail: the SDK's list (CONTRACT.md §5 Audit) and a streamed export."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from handoffrail_server.api.deps import Caller, Session, State, as_utc, tenant_limits
from handoffrail_server.audit import service
from handoffrail_server.audit.schemas import AuditPage
from handoffrail_server.limits.errors import QuotaExceeded

router = APIRouter(prefix="/audit", tags=["audit"])

#: the trail's kinds of resource, or `all`
Shown = Literal["packet", "api_key", "tenant", "webhook", "all"]


@router.get("", response_model=AuditPage)
async def list_audit(
    session: Session,
    caller: Caller,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    packet_id: uuid.UUID | None = None,
    resource: Shown = "packet",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> AuditPage:
    """The tenant's trail newest first: packet events (as the original server and its SDK
    list them), or with `resource` administrative actions of one kind, or `all`."""
    filters = service.EventFilter(
        actor=actor,
        action=action,
        packet_id=packet_id,
        resource=None if resource == "all" else resource,
        created_after=as_utc(created_after),
        created_before=as_utc(created_before),
    )
    return await service.list_entries(
        session, caller.tenant_id, filters, limit=limit, offset=offset
    )


@router.get("/export")
async def export_audit(
    request: Request,
    state: State,
    caller: Caller,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
    resource: Shown = "all",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> StreamingResponse:
    """Stream the trail oldest first as JSONL or CSV (tiers with audit export: Business)."""
    limits = tenant_limits(request)
    assert limits is not None  # set by the Caller dependency
    if not limits.quotas.audit_export:
        raise QuotaExceeded(
            f"Audit export is not part of the {limits.tier} tier",
            quota="audit_export",
            limit=0,
            tier=limits.tier,
        )
    filters = service.EventFilter(
        resource=None if resource == "all" else resource,
        created_after=as_utc(created_after),
        created_before=as_utc(created_before),
    )
    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    filename = f"audit-{caller.tenant_id}.{format}"
    return StreamingResponse(
        service.export_lines(state.sessions, caller.tenant_id, filters, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
