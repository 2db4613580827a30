"""The benchmark's PostgreSQL CPU meter counts backends that have already exited."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import pytest
from bench.processes import pg_cpu

from tests.conftest import IN_CI, PG_ADMIN_DSN, require_postgres

pytestmark = pytest.mark.postgres


async def _busy_backend(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        pid = int(await connection.fetchval("SELECT pg_backend_pid()"))
        await connection.fetchval("SELECT count(*) FROM generate_series(1, 4000000)")
    finally:
        await connection.close()
    return pid


def test_the_meter_keeps_the_cpu_of_a_backend_that_exited() -> None:
    require_postgres()
    meter = pg_cpu(PG_ADMIN_DSN)
    if meter is None:
        assert not IN_CI, "CI runs PostgreSQL on this machine"
        pytest.skip("PostgreSQL runs outside this machine's /proc")
    before = meter.seconds()
    started = time.process_time()
    pid = asyncio.run(_busy_backend(PG_ADMIN_DSN))
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)  # the postmaster reaps it: its CPU moves to the postmaster's cutime
    assert not os.path.exists(f"/proc/{pid}")
    spent = meter.seconds() - before
    assert spent >= 0.1, spent  # counting 4 million rows costs a backend well over 0.1 s
    assert time.process_time() - started < spent  # not this process's own CPU
