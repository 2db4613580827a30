"""Exactly-once claims under real concurrency: a live Uvicorn server and many parallel clients.

Every request goes over loopback TCP to a server thread with its own event loop and a connection
pool big enough that the claims really race inside the database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import func, select

from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet
from tests.conftest import (
    LiveServer,
    packet_body,
    run_live_server,
)

CLAIMERS = 50
CLAIM_NEXT_WORKERS = 32
CLAIM_NEXT_PACKETS = 500
REQUEST_TIMEOUT = httpx.Timeout(30.0)
CLAIM_RACE_TIMEOUT = 60.0  # inside the default 120 s per-test timeout
DRAIN_TIMEOUT = 200.0  # inside this test's 300 s timeout


@contextmanager
def serve(url: str) -> Iterator[LiveServer]:
    """Migrate `url`, make an operator key and serve the app on a free loopback port."""
    migrations.upgrade(url)
    with run_live_server(url, backlog=512, db_pool_size=20, db_max_overflow=40) as live:
        yield live


@pytest.fixture
def server_on_each_backend(database_url: str) -> Iterator[LiveServer]:
    """A live server on SQLite and on PostgreSQL."""
    with serve(database_url) as live:
        yield live


def client_for(live: LiveServer) -> httpx.AsyncClient:
    """A client allowed to keep one connection per concurrent caller."""
    return httpx.AsyncClient(
        base_url=live.api_url,
        headers={"X-API-Key": live.operator_key},
        timeout=REQUEST_TIMEOUT,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
    )


async def warm_up(client: httpx.AsyncClient, connections: int) -> None:
    """Open `connections` keep-alive connections so the real requests start together."""
    responses = await asyncio.gather(
        *(client.get(f"/packets?limit=1&warm={index}") for index in range(connections))
    )
    assert all(response.status_code == 200 for response in responses)


async def stored_packets(url: str, ids: list[str] | None = None) -> list[Packet]:
    """Packet rows read straight from the database (all of them, or those with `ids`)."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with create_sessionmaker(engine)() as session:
            query = select(Packet)
            if ids is not None:
                query = query.where(Packet.id.in_([uuid.UUID(value) for value in ids]))
            return list((await session.execute(query)).scalars())
    finally:
        await engine.dispose()


async def count_by_status(url: str) -> dict[str, int]:
    """How many packets are in each status, read straight from the database."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(Packet.status, func.count()).group_by(Packet.status)
            )
            return {str(status): int(count) for status, count in rows.all()}
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_fifty_simultaneous_claims_of_one_packet_have_exactly_one_winner(
    server_on_each_backend: LiveServer,
) -> None:
    live = server_on_each_backend
    async with client_for(live) as client:
        created = await client.post("/packets", json=packet_body("Race me"))
        assert created.status_code == 201, created.text
        packet_id = created.json()["id"]
        await warm_up(client, CLAIMERS)

        async def claim(index: int) -> httpx.Response:
            return await client.post(
                f"/packets/{packet_id}/claim",
                json={"agent_id": f"agent-{index:02d}", "agent_name": f"Agent {index:02d}"},
            )

        responses = await asyncio.wait_for(
            asyncio.gather(*(claim(index) for index in range(CLAIMERS))), CLAIM_RACE_TIMEOUT
        )

        statuses = Counter(response.status_code for response in responses)
        assert statuses == {200: 1, 409: CLAIMERS - 1}, [
            (response.status_code, response.text) for response in responses if response.is_error
        ][:3]
        winner_response = next(response for response in responses if response.status_code == 200)
        winner = winner_response.json()["metadata"]["target_agent"]
        assert winner_response.json()["status"] == "claimed"
        assert winner["id"].startswith("agent-")

        for response in responses:
            if response.status_code != 409:
                continue
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["code"] == "packet.already_claimed"
            assert problem["status"] == 409
            assert problem["claimed_by"]["id"] == winner["id"]
            assert problem["claimed_by"]["name"] == winner["name"]

        history = await client.get(f"/packets/{packet_id}/history")
        assert history.status_code == 200, history.text
        kinds = Counter(event["event_type"] for event in history.json()["events"])
        assert kinds["claimed"] == 1
        claimed_event = next(
            event for event in history.json()["events"] if event["event_type"] == "claimed"
        )
        assert claimed_event["actor"] == f"agent:{winner['id']}"

    [row] = await stored_packets(live.database_url, [packet_id])
    assert row.status == "claimed"
    assert row.target_agent_id == winner["id"]
    assert row.claimed_by_agent_id == winner["id"]
    assert row.packet_metadata["target_agent"]["id"] == winner["id"]
    assert row.row_version == 2


async def create_packets(client: httpx.AsyncClient, total: int) -> set[str]:
    """Create `total` packets through the batch endpoint (50 per request)."""
    ids: set[str] = set()
    for start in range(0, total, 50):
        bodies = [
            packet_body(f"Queued work {index}", target="pool")
            for index in range(start, min(start + 50, total))
        ]
        response = await client.post("/packets/batch", json={"packets": bodies})
        assert response.status_code == 201, response.text
        assert response.json()["errors"] == []
        ids.update(packet["id"] for packet in response.json()["created"])
    assert len(ids) == total
    return ids


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_concurrent_claim_next_workers_drain_the_queue_claiming_each_packet_once(
    server_on_each_backend: LiveServer, request: pytest.FixtureRequest
) -> None:
    live = server_on_each_backend
    async with client_for(live) as client:
        expected = await create_packets(client, CLAIM_NEXT_PACKETS)
        await warm_up(client, CLAIM_NEXT_WORKERS)

        async def worker(index: int) -> list[tuple[str, str]]:
            agent = f"worker-{index:02d}"
            mine: list[tuple[str, str]] = []
            while True:
                response = await client.post(
                    "/packets/claim-next", json={"agent_id": agent, "agent_name": agent.title()}
                )
                if response.status_code == 204:
                    return mine
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["status"] == "claimed"
                assert body["metadata"]["target_agent"]["id"] == agent
                mine.append((body["id"], agent))

        started = time.perf_counter()
        per_worker = await asyncio.wait_for(
            asyncio.gather(*(worker(index) for index in range(CLAIM_NEXT_WORKERS))),
            DRAIN_TIMEOUT,
        )
        elapsed = time.perf_counter() - started

        claims = [claim for claimed in per_worker for claim in claimed]
        claimed_ids = [packet_id for packet_id, _agent in claims]
        duplicates = [packet_id for packet_id, count in Counter(claimed_ids).items() if count > 1]
        assert duplicates == []
        assert len(claimed_ids) == CLAIM_NEXT_PACKETS
        assert set(claimed_ids) == expected
        busy_workers = sum(1 for claimed in per_worker if claimed)
        rate = CLAIM_NEXT_PACKETS / elapsed
        # visible with `--junitxml=... -o junit_family=xunit1`
        request.node.user_properties += [
            ("claim_next_seconds", round(elapsed, 3)),
            ("claim_next_per_second", round(rate, 1)),
            ("claim_next_busy_workers", busy_workers),
        ]
        assert busy_workers > 1, "claims were not spread over the concurrent workers"

        leftover = await client.post(
            "/packets/claim-next", json={"agent_id": "late", "agent_name": "Late"}
        )
        assert leftover.status_code == 204

    assert await count_by_status(live.database_url) == {"claimed": CLAIM_NEXT_PACKETS}
    holders = {
        str(row.id): row.claimed_by_agent_id for row in await stored_packets(live.database_url)
    }
    assert holders == dict(claims)
