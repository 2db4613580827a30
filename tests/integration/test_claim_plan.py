"""claim-next reads the head of the queue, not the whole queue, even before PostgreSQL has
statistics for it (a queue that grew faster than autoanalyze runs)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Table, text

from handoffrail_server.db import fast
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.packets import repository
from tests.conftest import Api
from tests.contract.helpers import claim, create_packet

QUEUE = 3000


def _copy_packet_sql() -> str:
    """INSERT ... SELECT: QUEUE waiting clones of one packet, fresh ids, each a little newer."""
    table = Packet.__table__
    assert isinstance(table, Table)
    columns = [column.name for column in table.columns]
    values = {
        "id": "gen_random_uuid()",
        "status": "'created'",
        "claimed_by_agent_id": "NULL",
        "created_at": "now() + n * interval '1 millisecond'",  # all behind `first`
    }
    selected = ", ".join(values.get(name, f"p.{name}") for name in columns)
    return (
        f"INSERT INTO packet ({', '.join(columns)}) SELECT {selected}"  # noqa: S608 - model identifiers
        f" FROM packet p, generate_series(1, {QUEUE}) n WHERE p.id = :id"
    )


# the plan in question is PostgreSQL's (SQLite has no SKIP LOCKED and one writer at a time)
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_claim_candidates_fetch_a_few_rows_of_an_unanalyzed_queue(api: Api) -> None:
    done = await create_packet(api, summary="finished before the rush")
    assert (await claim(api, done["id"])).status_code == 200
    engine = create_engine(api.url, pool_size=1, max_overflow=0)
    sessions = create_sessionmaker(engine)
    try:
        async with engine.connect() as connection:
            # statistics taken while nothing was waiting: they say "no created packets"
            await connection.execute(text("ANALYZE packet"))
        first = await create_packet(api, summary="head of the queue")
        async with unit_of_work(sessions) as session:
            await session.execute(text(_copy_packet_sql()), {"id": uuid.UUID(done["id"])})
        async with unit_of_work(sessions) as session:
            tenant_id = (
                await session.execute(
                    text("SELECT tenant_id FROM packet WHERE id = :id"),
                    {"id": uuid.UUID(first["id"])},
                )
            ).scalar_one()
            filters: dict[str, Any] = {
                "target_agent": None,
                "tags": [],
                "priorities": None,
                "now": datetime.now(UTC),
                "limit": 1,
            }
            candidates = await repository.claim_candidates(
                session, tenant_id, ["created"], **filters
            )
            # the plans of that very statement (custom, and the generic plan a prepared statement
            # switches to after five runs), under the settings the claim's transaction runs with
            driver = await fast.connection(session)
            assert driver is not None
            await driver.execute(f"PREPARE hr_candidates AS {repository.pg_candidates_sql()}")
            plans = []
            for mode in ("force_custom_plan", "force_generic_plan"):
                await driver.execute(f"SET LOCAL plan_cache_mode = {mode}")
                tenant = "'" + str(tenant_id).replace("'", "''") + "'"  # EXECUTE takes no $n
                arguments = f"{tenant}, 'created', NULL, NULL, now(), '{{}}', 1"
                rows = await driver.fetch(f"EXPLAIN EXECUTE hr_candidates({arguments})")
                plans.append("\n".join(row[0] for row in rows))
            await driver.execute("DEALLOCATE hr_candidates")
            # Whatever the statistics say: with a queue that outgrew them (autoanalyze behind,
            # "1 row" estimated for `created`) the planner once picked the (tenant, status,
            # created_at) index and sorted the whole queue per claim, 50 ms at 16k rows
            # (bench claim-next row: 35/s instead of 470/s). A claim's transaction forbids that.
            sorting = (await session.execute(text("SHOW enable_sort"))).scalar_one()
        assert sorting == "off"
        assert [str(packet.id) for packet in candidates] == [first["id"]]
        for plan in plans:
            assert "ix_packet_tenant_claimable" in plan, plan
            assert "Sort" not in plan, plan  # sorting would read the whole queue on every claim
    finally:
        await engine.dispose()
