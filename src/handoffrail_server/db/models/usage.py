"""The `tenant_usage` table (daily handoff counters) and the `agent` registry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import UTCDateTime


class TenantUsage(Base):
    """Handoffs created by a tenant on one UTC day; incremented atomically with a guard."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    handoffs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class Agent(Base):
    """An agent id seen in a tenant's packets (source, target or claimant)."""

    __tablename__ = "agent"
    __table_args__ = (Index("ix_agent_tenant_last_seen", "tenant_id", "last_seen_at"),)

    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), nullable=False)
    framework: Mapped[str | None] = mapped_column(String(256), nullable=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
