"""claim-next index in the query's order (priority_rank DESC, created_at, id).

The old (tenant_id, status, priority_rank, created_at) index made PostgreSQL sort every
claimable row of a tenant on each claim-next. The build blocks writes to `packet` while it
runs (plain CREATE INDEX, inside the migration's transaction): schedule it accordingly on a
very large table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 13:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_packet_tenant_claimable", table_name="packet")
    op.create_index(
        "ix_packet_tenant_claimable",
        "packet",
        ["tenant_id", "status", sa.text("priority_rank DESC"), "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_packet_tenant_claimable", table_name="packet")
    op.create_index(
        "ix_packet_tenant_claimable",
        "packet",
        ["tenant_id", "status", "priority_rank", "created_at"],
    )
