"""Administrative audit log; per-tenant HITL timeout fallback.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 10:05:48.270678+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=512), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_admin_audit_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_audit")),
    )
    with op.batch_alter_table("admin_audit", schema=None) as batch_op:
        batch_op.create_index("ix_admin_audit_tenant_action", ["tenant_id", "action"], unique=False)
        batch_op.create_index(
            "ix_admin_audit_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    # Plain ADD/DROP COLUMN, never a batch table rebuild: rebuilding `tenant` on SQLite would
    # drop it, and ON DELETE CASCADE would empty every child table.
    op.add_column(
        "tenant",
        sa.Column("hitl_fallback", sa.String(length=16), server_default="expire", nullable=False),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE tenant DROP COLUMN hitl_fallback")  # SQLite >= 3.35
    else:
        op.drop_column("tenant", "hitl_fallback")

    with op.batch_alter_table("admin_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_admin_audit_tenant_created")
        batch_op.drop_index("ix_admin_audit_tenant_action")

    op.drop_table("admin_audit")
