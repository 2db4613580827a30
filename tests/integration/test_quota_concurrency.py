"""The daily handoff quota under real concurrency on PostgreSQL: no overshoot, ever.

A live Uvicorn server (own event loop, pool of 60+) takes 50 parallel creates over loopback TCP
at a tenant whose quota is 5; exactly 5 may succeed and the database must hold exactly 5 packets.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet
from handoffrail_server.db.models.usage import Agent, TenantUsage
from handoffrail_server.main import create_app
from tests.conftest import bootstrap_operator_key, make_settings, packet_body, serve_app

pytestmark = pytest.mark.postgres

PARALLEL = 50
QUOTA = 5
TIMEOUT = httpx.Timeout(30.0)


@dataclass
class PgServer:
    """A live server on a throw-away PostgreSQL database."""

    base_url: str
    operator_key: str
    database_url: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"X-API-Key": key or self.operator_key}


@pytest.fixture
def pg_server(postgres_url: str) -> Iterator[PgServer]:
    """Uvicorn on 127.0.0.1:<free port> with a pool big enough for every request to race."""
    migrations.upgrade(postgres_url)
    operator_key = bootstrap_operator_key(postgres_url)
    settings = make_settings(postgres_url, db_pool_size=60, db_max_overflow=20)
    assert settings.db_pool_size >= 60
    app = create_app(settings)
    with serve_app(app, log_level="warning", backlog=512) as base_url:
        yield PgServer(base_url, operator_key, postgres_url)


async def new_tenant(
    client: httpx.AsyncClient, server: PgServer, **fields: object
) -> tuple[str, str]:
    """A tenant (free by default) and an admin key of it."""
    body = {"name": f"quota-{uuid.uuid4().hex[:8]}", "tier": "free", **fields}
    response = await client.post("/api/v1/tenants", json=body, headers=server.headers())
    assert response.status_code == 201, response.text
    tenant_id = str(response.json()["id"])
    response = await client.post(
        "/api/v1/keys",
        json={"name": "racer", "role": "admin", "tenant_id": tenant_id},
        headers=server.headers(),
    )
    assert response.status_code == 201, response.text
    return tenant_id, str(response.json()["key"])


async def stored(url: str, tenant_id: str) -> tuple[int, int | None, int]:
    """(packets, today's usage counter, agents) of a tenant, read straight from the database."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session:
            packets = await session.scalar(
                select(func.count()).select_from(Packet).where(Packet.tenant_id == tenant_id)
            )
            counter = await session.scalar(
                select(func.sum(TenantUsage.handoffs)).where(TenantUsage.tenant_id == tenant_id)
            )
            agents = await session.scalar(
                select(func.count()).select_from(Agent).where(Agent.tenant_id == tenant_id)
            )
    finally:
        await engine.dispose()
    return int(packets or 0), None if counter is None else int(counter), int(agents or 0)


def async_client(server: PgServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url,
        timeout=TIMEOUT,
        limits=httpx.Limits(max_connections=PARALLEL + 10, max_keepalive_connections=PARALLEL),
    )


async def fire(client: httpx.AsyncClient, requests: list[tuple[str, object, str]]) -> list[int]:
    """Send all requests at once (released together by an event); their status codes."""
    start = asyncio.Event()

    async def one(path: str, body: object, key: str) -> httpx.Response:
        await start.wait()
        return await client.post(path, json=body, headers={"X-API-Key": key})

    tasks = [asyncio.create_task(one(*request)) for request in requests]
    await asyncio.sleep(0.05)
    start.set()
    responses = await asyncio.gather(*tasks)
    for response in responses:
        assert response.status_code < 500, response.text
    return [response.status_code for response in responses]


async def test_fifty_parallel_creates_at_quota_five_create_exactly_five(
    pg_server: PgServer,
) -> None:
    async with async_client(pg_server) as client:
        tenant_id, key = await new_tenant(client, pg_server)
        started = time.monotonic()
        statuses = await fire(
            client,
            [("/api/v1/packets", packet_body(f"race {index}"), key) for index in range(PARALLEL)],
        )
        elapsed = time.monotonic() - started
        assert Counter(statuses) == {201: QUOTA, 429: PARALLEL - QUOTA}, (
            Counter(statuses),
            elapsed,
        )

        refused = await client.post(
            "/api/v1/packets", json=packet_body("after"), headers={"X-API-Key": key}
        )
        assert refused.status_code == 429
        assert refused.json()["code"] == "quota.handoffs_per_day"
        assert int(refused.headers["Retry-After"]) >= 1
        report = (await client.get("/api/v1/usage", headers={"X-API-Key": key})).json()
        assert report["usage"]["handoffs_today"] == QUOTA

    packets, counter, agents = await stored(pg_server.database_url, tenant_id)
    assert (packets, counter, agents) == (QUOTA, QUOTA, 2)


async def test_parallel_creates_at_a_tenant_override_never_overshoot(
    pg_server: PgServer,
) -> None:
    async with async_client(pg_server) as client:
        # a business tenant (unlimited by tier) whose own quota is 7; agents known beforehand
        tenant_id, key = await new_tenant(client, pg_server, tier="business", handoffs_per_day=7)
        first = await client.post("/api/v1/packets", json=packet_body(), headers={"X-API-Key": key})
        assert first.status_code == 201
        statuses = await fire(
            client,
            [("/api/v1/packets", packet_body(f"r{index}"), key) for index in range(PARALLEL)],
        )
        assert Counter(statuses) == {201: 6, 429: PARALLEL - 6}
    assert await stored(pg_server.database_url, tenant_id) == (7, 7, 2)


async def test_parallel_batches_share_the_quota_packet_by_packet(pg_server: PgServer) -> None:
    async with async_client(pg_server) as client:
        tenant_id, key = await new_tenant(client, pg_server, handoffs_per_day=12)
        batch = {"packets": [packet_body(f"b{index}") for index in range(4)]}
        statuses = await fire(client, [("/api/v1/packets/batch", batch, key)] * 10)
        # a batch that finds the quota spent when it starts is a whole 429; the others
        # report the packets past it one by one
        assert set(statuses) <= {201, 429}
        assert statuses.count(201) >= 3
    packets, counter, _ = await stored(pg_server.database_url, tenant_id)
    assert (packets, counter) == (12, 12)


async def test_new_agents_racing_known_agents_neither_deadlock_nor_overshoot(
    pg_server: PgServer,
) -> None:
    async with async_client(pg_server) as client:
        tenant_id, key = await new_tenant(client, pg_server, tier="business", handoffs_per_day=30)
        first = await client.post("/api/v1/packets", json=packet_body(), headers={"X-API-Key": key})
        assert first.status_code == 201
        known = [packet_body(f"known {index}") for index in range(PARALLEL // 2)]
        new = [packet_body(f"new {index}", source=f"new-{index}") for index in range(PARALLEL // 2)]
        bodies = [body for pair in zip(known, new, strict=True) for body in pair]
        statuses = await fire(client, [("/api/v1/packets", body, key) for body in bodies])
        assert Counter(statuses) == {201: 29, 429: PARALLEL - 29}
    packets, counter, agents = await stored(pg_server.database_url, tenant_id)
    assert (packets, counter) == (30, 30)
    assert agents <= 50
