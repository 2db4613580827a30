"""The pool of migrated PostgreSQL test databases hands every test what a fresh copy would be."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_DSN
from tests.pg_pool import PgPool

pytestmark = pytest.mark.postgres


def _run(pool: PgPool, name: str, sql: str) -> Any:
    async def run() -> Any:
        connection = await asyncpg.connect(pool.dsn(name))
        try:
            return await connection.fetch(sql)
        finally:
            await connection.close()

    return asyncio.run(run())


def _exists(name: str) -> bool:
    async def run() -> bool:
        connection = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            return found is not None
        finally:
            await connection.close()

    return asyncio.run(run())


def test_a_database_given_back_is_emptied_and_its_sequences_restarted(pg_pool: PgPool) -> None:
    name = pg_pool.take()
    _run(pg_pool, name, "INSERT INTO job_run (name, tick, started_at) VALUES ('j', 1, now())")
    _run(pg_pool, name, "SELECT nextval('stream_event_id_seq') FROM generate_series(1, 5)")
    pg_pool.give_back(name)
    again = pg_pool.take()
    try:
        assert again == name
        assert _run(pg_pool, again, "SELECT count(*) FROM job_run")[0][0] == 0
        assert _run(pg_pool, again, "SELECT nextval('stream_event_id_seq')")[0][0] == 1
        assert _run(pg_pool, again, "SELECT count(*) FROM alembic_version")[0][0] == 1
    finally:
        pg_pool.give_back(again)


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE tenant ADD COLUMN extra int",
        "CREATE INDEX tenant_extra ON tenant (name)",
        "UPDATE alembic_version SET version_num = 'f00dfeed0001'",
        "DROP TRIGGER",
        "CREATE TABLE stray (id int)",
    ],
    ids=["column", "index", "revision", "trigger", "table"],
)
def test_a_database_whose_schema_a_test_changed_is_dropped_not_reused(
    pg_pool: PgPool, change: str
) -> None:
    name = pg_pool.take()
    if "TRIGGER" in change:  # one of migration 0007's triggers, whatever its name
        [(trigger, table)] = _run(
            pg_pool,
            name,
            "SELECT tgname, tgrelid::regclass::text FROM pg_trigger"
            " WHERE NOT tgisinternal ORDER BY tgname LIMIT 1",
        )
        change = f'DROP TRIGGER "{trigger}" ON {table}'
    _run(pg_pool, name, change)
    pg_pool.give_back(name)
    assert not _exists(name)
    fresh = pg_pool.take()
    try:
        assert fresh != name
    finally:
        pg_pool.give_back(fresh)
