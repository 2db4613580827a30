"""The `packet` table (a handoff) and `packet_tag` (one row per tag, for ALL-tag filters)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import JSONDocument, UTCDateTime


class Packet(Base):
    """One handoff packet. JSON sections are stored as documents; filter fields as columns."""

    __tablename__ = "packet"
    __table_args__ = (
        Index("ix_packet_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_packet_tenant_status_created", "tenant_id", "status", "created_at"),
        Index("ix_packet_tenant_source", "tenant_id", "source_agent_id"),
        Index("ix_packet_tenant_target", "tenant_id", "target_agent_id"),
        Index("ix_packet_tenant_priority", "tenant_id", "priority"),
        Index("ix_packet_parent", "parent_packet_id"),
        Index("ix_packet_status_expires", "status", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False
    )
    parent_packet_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    version: Mapped[str] = mapped_column(String(16), nullable=False, default="1.0.0")
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    priority: Mapped[str] = mapped_column(String(16), nullable=False)
    priority_rank: Mapped[int] = mapped_column(Integer, nullable=False)
    source_agent_id: Mapped[str] = mapped_column(String(256), nullable=False)
    target_agent_id: Mapped[str] = mapped_column(String(256), nullable=False)
    claimed_by_agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    schema_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    packet_metadata: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDocument, nullable=False
    )
    context: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    decisions: Mapped[list[Any]] = mapped_column(JSONDocument, nullable=False)
    actions: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    dependencies: Mapped[list[Any]] = mapped_column(JSONDocument, nullable=False)
    hitl: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    search_text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: optimistic-concurrency counter: every UPDATE checks and bumps it
    row_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PacketTag(Base):
    """One tag of a packet; lets `tags=a,b` (all must match) use an index instead of JSON scans."""

    __tablename__ = "packet_tag"
    __table_args__ = (Index("ix_packet_tag_tenant_tag", "tenant_id", "tag", "packet_id"),)

    packet_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("packet.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(256), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), nullable=False)


# claim-next reads (tenant, status) in ORDER BY priority_rank DESC, created_at, id: the index
# has that exact order, so the first unlocked row is found without sorting the queue.
Index(
    "ix_packet_tenant_claimable",
    Packet.tenant_id,
    Packet.status,
    Packet.priority_rank.desc(),
    Packet.created_at,
    Packet.id,
)
