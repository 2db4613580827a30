"""Wire shapes of GET /audit (the SDK's AuditLogResponse)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEntry(BaseModel):
    """One recorded action."""

    id: str
    packet_id: str
    actor: str
    action: str
    resource: str = "packet"
    resource_id: str | None = None
    details: dict[str, Any]
    timestamp: datetime
    request_id: str | None = None
    from_status: str | None = None
    to_status: str | None = None


class AuditPage(BaseModel):
    """A page of audit entries."""

    entries: list[AuditEntry]
    total: int
    limit: int
    offset: int
