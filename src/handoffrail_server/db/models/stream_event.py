"""The `stream_event` table: the durable, ordered log that SSE and WebSocket streams read.

Its integer id is the SSE event id, so a client resumes with `Last-Event-ID` and gets exactly
the events after it (within the retention window).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import JSONDocument, UTCDateTime


class StreamEvent(Base):
    """One published event of a tenant."""

    __tablename__ = "stream_event"
    __table_args__ = (
        Index("ix_stream_event_tenant_id", "tenant_id", "id"),
        Index("ix_stream_event_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), nullable=False
    )
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    packet_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source_agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    target_agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
