"""Notify listeners when API keys or tenants change (PostgreSQL).

Each server process caches the principals it has resolved (keys/cache.py) and listens on the
`handoffrail_principals` channel: a statement that updates, deletes or truncates `api_key` or
`tenant` (a revoke, a tier change, a soft-deleted tenant, a CLI command or hand-written SQL)
notifies every process when its transaction commits, and they drop their caches. Inserts need
no notice: only keys that exist are ever cached. Nothing changes on SQLite (no cache there).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 17:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "handoffrail_principals"
FUNCTION = "handoffrail_principals_changed"
TABLES = ("api_key", "tenant")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_principals_changed"
            f" AFTER UPDATE OR DELETE OR TRUNCATE ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_principals_changed ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
