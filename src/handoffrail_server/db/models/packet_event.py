"""The `packet_event` table: the append-only history of every packet (history and audit read it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import JSONDocument, UTCDateTime


class PacketEvent(Base):
    """One recorded state change or action on a packet."""

    __tablename__ = "packet_event"
    __table_args__ = (
        Index("ix_packet_event_packet_created", "packet_id", "created_at"),
        Index("ix_packet_event_tenant_created", "tenant_id", "created_at"),
        Index("ix_packet_event_tenant_actor", "tenant_id", "actor"),
        Index("ix_packet_event_tenant_type", "tenant_id", "event_type"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False
    )
    packet_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("packet.id", ondelete="CASCADE"), nullable=False
    )
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    actor: Mapped[str] = mapped_column(String(512), nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
