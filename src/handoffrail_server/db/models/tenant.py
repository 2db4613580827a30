"""The `tenant` table: an isolated customer account with a tier and quota overrides."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from handoffrail_server.db.base import Base
from handoffrail_server.db.types import UTCDateTime


class Tenant(Base):
    """A customer account; every other row belongs to exactly one tenant."""

    __tablename__ = "tenant"
    __table_args__ = (
        # Names are unique among tenants that are not deleted (partial index on both databases).
        Index(
            "uq_tenant_active_name",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    tier: Mapped[str] = mapped_column(String(32), nullable=False, default="free")
    handoffs_per_day: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_api_keys: Mapped[int | None] = mapped_column(Integer, nullable=True)
    is_operator: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: what happens when a HITL deadline passes: fail, expire or escalate (packet may override)
    hitl_fallback: Mapped[str] = mapped_column(
        String(16), nullable=False, default="expire", server_default="expire"
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
