"""The durable stream event log read by SSE and WebSocket clients.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:01:31.583274+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stream_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("packet_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("source_agent_id", sa.String(length=256), nullable=True),
        sa.Column("target_agent_id", sa.String(length=256), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_stream_event_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_event")),
    )
    with op.batch_alter_table("stream_event", schema=None) as batch_op:
        batch_op.create_index("ix_stream_event_created", ["created_at"], unique=False)
        batch_op.create_index("ix_stream_event_tenant_id", ["tenant_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_event", schema=None) as batch_op:
        batch_op.drop_index("ix_stream_event_tenant_id")
        batch_op.drop_index("ix_stream_event_created")

    op.drop_table("stream_event")
