"""The `admin_audit` table: administrative actions (keys, tenants, webhooks), never key material."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import JSONDocument, UTCDateTime


class AdminAudit(Base):
    """Who (key id) did what administrative action to which resource, and when."""

    __tablename__ = "admin_audit"
    __table_args__ = (
        Index("ix_admin_audit_tenant_created", "tenant_id", "created_at"),
        Index("ix_admin_audit_tenant_action", "tenant_id", "action"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False
    )
    actor: Mapped[str] = mapped_column(String(512), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str] = mapped_column(String(64), nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
