"""Where a request's database CPU goes: SQLAlchemy's unit of work and statements vs raw asyncpg.

Runs in this process against a migrated database, one operation at a time (no concurrency, so
no waiting is counted): CPU seconds (`time.process_time`) per operation of

- an empty unit of work (no statement: no connection is checked out);
- a unit of work with one prebuilt Core SELECT (pool checkout, BEGIN, the query, COMMIT);
- each further prebuilt Core SELECT inside it, and an ORM `select(Packet)` by primary key;
- the same transaction and queries on a raw asyncpg connection.

Each figure is the least over several rounds; "each further" rows are differences of two such
figures.

The request handlers use the SQLAlchemy column; the raw column is what a hand-written path
could save per statement.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

QUERY = "SELECT id FROM api_key WHERE key_hash = $1"


ROUNDS = 5


async def _cpu_per_op(count: int, operation: Callable[[], Awaitable[Any]]) -> float:
    """Least CPU per operation over ROUNDS rounds (a shared VM adds noise, never removes it)."""
    for _ in range(min(50, count)):
        await operation()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(count):
            await operation()
        best = min(best, (time.process_time() - start) / count * 1000)
    return best


async def measure(dsn: str, url: str, count: int) -> list[tuple[str, float]]:
    """(operation, CPU ms per operation) for the SQLAlchemy and raw asyncpg paths."""
    from handoffrail_server.db.engine import create_engine, create_sessionmaker
    from handoffrail_server.db.uow import unit_of_work
    from handoffrail_server.keys import repository as keys
    from handoffrail_server.packets import repository as packets

    engine = create_engine(url, pool_size=2, max_overflow=0)
    sessions = create_sessionmaker(engine)
    connection = await asyncpg.connect(dsn)
    missing = uuid.uuid4()
    try:

        async def empty() -> None:
            async with unit_of_work(sessions):
                pass

        async def one() -> None:
            async with unit_of_work(sessions) as session:
                await keys.principal_row(session, "x")

        async def two() -> None:
            async with unit_of_work(sessions) as session:
                await keys.principal_row(session, "x")
                await keys.principal_row(session, "y")

        async def orm() -> None:
            async with unit_of_work(sessions) as session:
                await keys.principal_row(session, "x")
                await packets.get(session, "t", missing)

        async def raw_one() -> None:
            async with connection.transaction():
                await connection.fetchrow(QUERY, "x")

        async def raw_two() -> None:
            async with connection.transaction():
                await connection.fetchrow(QUERY, "x")
                await connection.fetchrow(QUERY, "y")

        sa_empty = await _cpu_per_op(count, empty)
        sa_one = await _cpu_per_op(count, one)
        sa_two = await _cpu_per_op(count, two)
        sa_orm = await _cpu_per_op(count, orm)
        raw1 = await _cpu_per_op(count, raw_one)
        raw2 = await _cpu_per_op(count, raw_two)
        return [
            ("SQLAlchemy: empty unit of work", sa_empty),
            ("SQLAlchemy: unit of work + 1 query", sa_one),
            ("SQLAlchemy: each further Core query", sa_two - sa_one),
            ("SQLAlchemy: each further ORM get", sa_orm - sa_one),
            ("asyncpg: transaction + 1 query", raw1),
            ("asyncpg: each further query", raw2 - raw1),
        ]
    finally:
        await connection.close()
        await engine.dispose()


def run(dsn: str, url: str, count: int) -> list[tuple[str, float]]:
    """Synchronous wrapper for the harness."""
    return asyncio.run(measure(dsn, url, count))
