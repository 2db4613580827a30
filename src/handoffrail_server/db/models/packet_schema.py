"""The `packet_schema` table: a tenant's registered JSON Schemas for packet contexts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import JSONDocument, UTCDateTime


class PacketSchema(Base):
    """A named, versioned JSON Schema that packet contexts can be validated against."""

    __tablename__ = "packet_schema"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version", name="uq_packet_schema_name_version"),
        Index("ix_packet_schema_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    json_schema: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
