"""claim-next's candidate function plans its query once per connection (PostgreSQL).

PL/pgSQL caches the plan of the function's query, but its plan cache chose a *custom* plan on
every call: the query's filters are written `p_x IS NULL OR ...` so that one function serves
every combination, and a plan for the call's own values (the NULL branches folded away) always
looks cheaper than the generic plan, so PostgreSQL re-planned the query each time. Measured
(`docs/performance.md`, round 12; one backend, 2,000 claims each): the candidate read cost
0.235 ms of PostgreSQL CPU through the function against 0.080 ms inline, a claim-next's whole
statement 0.365 ms against 0.155 ms; with `plan_cache_mode = force_generic_plan` on the
function, 0.110 ms and 0.220 ms.

The generic plan reads the claimable index in order like the custom ones did (the function's
`enable_sort = off` still applies while it is planned; tests/integration/test_claim_plan.py
checks both kinds of plan under statistics that lag behind the queue). Nothing changes on
SQLite.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 15:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "handoffrail_claim_candidates(text, text, text, text[], timestamptz, text[], integer)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {FUNCTION} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER FUNCTION {FUNCTION} RESET plan_cache_mode")
