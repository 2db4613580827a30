"""claim-next's candidate read as a function that plans without sorting (PostgreSQL).

A claim-next reads the first unlocked row of `ix_packet_tenant_claimable`, whose order is the
query's. When the statistics lag behind a fast-growing queue (autoanalyze not run yet, "1 row"
estimated for `created`), the planner prefers `ix_packet_tenant_status_created` and sorts the
whole queue on every claim (tens of ms at 10k+ rows). The claim's transaction used to forbid
that with `SET LOCAL enable_sort = off`: a round trip of its own, 9-14 % of a claim-next's
CPU (in-process, measured on two days). The function's `SET` clause applies the same setting
while its query is planned and run, in the same round trip as the read. Its rows lock as the
plain statement's did (`FOR UPDATE SKIP LOCKED`, held until the caller's transaction ends).
Nothing changes on SQLite.

Parameters: tenant, status, target agent or NULL, priorities or NULL, now, tags (every one
required), limit. `packets/repository.claim_candidates` calls it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 10:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = "text, text, text, text[], timestamptz, text[], integer"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION handoffrail_claim_candidates(
            p_tenant text, p_status text, p_target text, p_priorities text[],
            p_now timestamptz, p_tags text[], p_limit integer
        ) RETURNS SETOF packet
        LANGUAGE plpgsql
        SET enable_sort = off
        AS $$
        BEGIN
            RETURN QUERY
            SELECT p.* FROM packet p
            WHERE p.tenant_id = p_tenant AND p.status = p_status
              AND (p_target IS NULL OR p.target_agent_id = p_target)
              AND (p_priorities IS NULL OR p.priority = ANY(p_priorities))
              AND (p.expires_at IS NULL OR p.expires_at > p_now)
              AND NOT EXISTS (
                  SELECT 1 FROM unnest(p_tags) AS wanted(tag) WHERE NOT EXISTS (
                      SELECT 1 FROM packet_tag t
                      WHERE t.tenant_id = p_tenant AND t.tag = wanted.tag
                        AND t.packet_id = p.id))
            ORDER BY p.priority_rank DESC, p.created_at ASC, p.id ASC
            LIMIT p_limit
            FOR UPDATE OF p SKIP LOCKED;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS handoffrail_claim_candidates({SIGNATURE})")
