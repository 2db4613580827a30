"""Initial schema: tenants, API keys, packets, tags, events, schema registry, search.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 09:14:57.506899+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("tier", sa.String(length=32), nullable=False),
        sa.Column("handoffs_per_day", sa.Integer(), nullable=True),
        sa.Column("max_api_keys", sa.Integer(), nullable=True),
        sa.Column("is_operator", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant")),
    )
    op.create_index(
        "uq_tenant_active_name",
        "tenant",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("is_operator", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_api_key_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_key_key_hash")),
    )
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.create_index(
            "ix_api_key_tenant_id_created_at", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "packet",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("parent_packet_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("priority_rank", sa.Integer(), nullable=False),
        sa.Column("source_agent_id", sa.String(length=256), nullable=False),
        sa.Column("target_agent_id", sa.String(length=256), nullable=False),
        sa.Column("claimed_by_agent_id", sa.String(length=256), nullable=True),
        sa.Column("schema_id", sa.String(length=64), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "context",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "decisions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "actions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "dependencies",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "hitl",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_packet_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packet")),
    )
    with op.batch_alter_table("packet", schema=None) as batch_op:
        batch_op.create_index("ix_packet_parent", ["parent_packet_id"], unique=False)
        batch_op.create_index("ix_packet_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index(
            "ix_packet_tenant_claimable",
            ["tenant_id", "status", "priority_rank", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_packet_tenant_created", ["tenant_id", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_packet_tenant_priority", ["tenant_id", "priority"], unique=False)
        batch_op.create_index(
            "ix_packet_tenant_source", ["tenant_id", "source_agent_id"], unique=False
        )
        batch_op.create_index(
            "ix_packet_tenant_status_created", ["tenant_id", "status", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_packet_tenant_target", ["tenant_id", "target_agent_id"], unique=False
        )

    op.create_table(
        "packet_schema",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "json_schema",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_packet_schema_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packet_schema")),
        sa.UniqueConstraint("tenant_id", "name", "version", name="uq_packet_schema_name_version"),
    )
    with op.batch_alter_table("packet_schema", schema=None) as batch_op:
        batch_op.create_index(
            "ix_packet_schema_tenant_created", ["tenant_id", "created_at"], unique=False
        )

    op.create_table(
        "packet_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("packet_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=512), nullable=False),
        sa.Column("from_status", sa.String(length=32), nullable=True),
        sa.Column("to_status", sa.String(length=32), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"],
            ["packet.id"],
            name=op.f("fk_packet_event_packet_id_packet"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_packet_event_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_packet_event")),
    )
    with op.batch_alter_table("packet_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_packet_event_packet_created", ["packet_id", "created_at"], unique=False
        )
        batch_op.create_index("ix_packet_event_tenant_actor", ["tenant_id", "actor"], unique=False)
        batch_op.create_index(
            "ix_packet_event_tenant_created", ["tenant_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_packet_event_tenant_type", ["tenant_id", "event_type"], unique=False
        )

    op.create_table(
        "packet_tag",
        sa.Column("packet_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.String(length=256), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"],
            ["packet.id"],
            name=op.f("fk_packet_tag_packet_id_packet"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("packet_id", "tag", name=op.f("pk_packet_tag")),
    )
    with op.batch_alter_table("packet_tag", schema=None) as batch_op:
        batch_op.create_index(
            "ix_packet_tag_tenant_tag", ["tenant_id", "tag", "packet_id"], unique=False
        )

    _create_search()


def _create_search() -> None:
    """Full-text search: FTS5 on SQLite, a generated tsvector + GIN index on PostgreSQL."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE packet_fts USING fts5("
            "search_text, content='packet', content_rowid='rowid', tokenize='unicode61')"
        )
        # External-content FTS5 table kept in sync by triggers (sqlite.org/fts5.html §4.4.3).
        op.execute(
            "CREATE TRIGGER packet_fts_ai AFTER INSERT ON packet BEGIN "
            "INSERT INTO packet_fts(rowid, search_text) VALUES (new.rowid, new.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER packet_fts_ad AFTER DELETE ON packet BEGIN "
            "INSERT INTO packet_fts(packet_fts, rowid, search_text) "
            "VALUES ('delete', old.rowid, old.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER packet_fts_au AFTER UPDATE OF search_text ON packet BEGIN "
            "INSERT INTO packet_fts(packet_fts, rowid, search_text) "
            "VALUES ('delete', old.rowid, old.search_text); "
            "INSERT INTO packet_fts(rowid, search_text) VALUES (new.rowid, new.search_text); END"
        )
    elif bind.dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE packet ADD COLUMN search_vector tsvector "
            "GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED"
        )
        op.execute("CREATE INDEX ix_packet_search_vector ON packet USING gin (search_vector)")


def _drop_search() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("packet_fts_ai", "packet_fts_ad", "packet_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS packet_fts")
    elif bind.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_packet_search_vector")
        op.execute("ALTER TABLE packet DROP COLUMN IF EXISTS search_vector")


def downgrade() -> None:
    _drop_search()
    with op.batch_alter_table("packet_tag", schema=None) as batch_op:
        batch_op.drop_index("ix_packet_tag_tenant_tag")

    op.drop_table("packet_tag")
    with op.batch_alter_table("packet_event", schema=None) as batch_op:
        batch_op.drop_index("ix_packet_event_tenant_type")
        batch_op.drop_index("ix_packet_event_tenant_created")
        batch_op.drop_index("ix_packet_event_tenant_actor")
        batch_op.drop_index("ix_packet_event_packet_created")

    op.drop_table("packet_event")
    with op.batch_alter_table("packet_schema", schema=None) as batch_op:
        batch_op.drop_index("ix_packet_schema_tenant_created")

    op.drop_table("packet_schema")
    with op.batch_alter_table("packet", schema=None) as batch_op:
        batch_op.drop_index("ix_packet_tenant_target")
        batch_op.drop_index("ix_packet_tenant_status_created")
        batch_op.drop_index("ix_packet_tenant_source")
        batch_op.drop_index("ix_packet_tenant_priority")
        batch_op.drop_index("ix_packet_tenant_created")
        batch_op.drop_index("ix_packet_tenant_claimable")
        batch_op.drop_index("ix_packet_status_expires")
        batch_op.drop_index("ix_packet_parent")

    op.drop_table("packet")
    with op.batch_alter_table("api_key", schema=None) as batch_op:
        batch_op.drop_index("ix_api_key_tenant_id_created_at")

    op.drop_table("api_key")
    op.drop_index("uq_tenant_active_name", table_name="tenant")
    op.drop_table("tenant")
