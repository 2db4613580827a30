"""Recent rows (packets/recent.py): a claim or PATCH of a packet this process changed moments
ago skips its read, and still answers exactly as after a fresh read when the row has changed."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from handoffrail_server.api.deps import AppState, request_session
from handoffrail_server.db import group_commit
from handoffrail_server.keys.service import DEFAULT_TENANT_ID
from handoffrail_server.main import create_app
from handoffrail_server.observability import metrics
from handoffrail_server.packets import recent
from handoffrail_server.packets.schemas import PacketCreate
from handoffrail_server.packets.service import PacketService
from tests.conftest import Api, make_settings, packet_body
from tests.contract.helpers import (
    P,
    assert_problem,
    claim,
    create_packet,
    get_packet,
    patch,
)

#: one side of the `database_url` fixture
on_postgres = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@asynccontextmanager
async def _api(url: str, operator_key: str, **settings: Any) -> AsyncIterator[Api]:
    """One server process's app on `url` (each has its own engine, pool and cache)."""
    app = create_app(make_settings(url, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(app=app, url=url, operator_key=operator_key, client=client)


def _state(api: Api) -> AppState:
    state: AppState = api.app.state.hr
    return state


def _engine(api: Api) -> AsyncEngine:
    return _state(api).engine


def _outcomes() -> tuple[float, float, float]:
    counter = metrics.RECENT_PACKETS
    hit, miss, stale = (counter.labels(name)._value.get() for name in ("hit", "miss", "stale"))
    return hit, miss, stale


def _since(before: tuple[float, float, float]) -> dict[str, float]:
    after = _outcomes()
    return {
        name: after[index] - before[index] for index, name in enumerate(("hit", "miss", "stale"))
    }


async def _sql(api: Api, statement: str, *args: object) -> None:
    """Hand-written SQL on the packet table, as an operator might run it."""
    connection = await asyncpg.connect(api.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _transitions(api: Api, packet_id: str) -> list[tuple[str, str | None, str]]:
    """The packet's history rows: (event, from status, to status), oldest first."""
    connection = await asyncpg.connect(api.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await connection.fetch(
            "SELECT event_type, from_status, to_status FROM packet_event WHERE packet_id = $1"
            " ORDER BY created_at",
            uuid.UUID(packet_id),
        )
    finally:
        await connection.close()
    return [(row[0], row[1], row[2]) for row in rows]


@on_postgres
async def test_a_packets_life_reads_it_only_for_the_answers(api: Api) -> None:
    before = _outcomes()
    packet = await create_packet(api)
    claimed = await claim(api, packet["id"], agent_id="worker-7")
    working = await patch(api, packet["id"], {"status": "in_progress"})
    done = await patch(api, packet["id"], {"status": "completed"})
    for response in (claimed, working, done):
        assert response.status_code == 200, response.text
    assert _since(before) == {"hit": 3, "miss": 0, "stale": 0}
    assert done.json() == await get_packet(api, packet["id"])  # the answer is the stored row
    assert claimed.json()["metadata"]["target_agent"]["id"] == "worker-7"
    assert done.json()["metadata"]["completed_at"] is not None
    assert await _transitions(api, packet["id"]) == [
        ("created", None, "created"),
        ("claimed", "created", "claimed"),
        ("in_progress", "claimed", "in_progress"),
        ("completed", "in_progress", "completed"),
    ]


@on_postgres
async def test_a_change_by_another_process_fails_the_cached_write_and_is_read(api: Api) -> None:
    packet = await create_packet(api)  # cached by this process
    async with _api(api.url, api.operator_key) as other:  # a second server process
        taken = await claim(other, packet["id"], agent_id="elsewhere")
        assert taken.status_code == 200, taken.text
    before = _outcomes()
    refused = await claim(api, packet["id"], agent_id="here")
    body = assert_problem(refused, 409, "packet.already_claimed")
    assert body["detail"]["claimed_by"]["id"] == "elsewhere"
    assert _since(before) == {"hit": 1, "miss": 0, "stale": 1}
    working = await patch(api, packet["id"], {"status": "in_progress"})  # read: nothing cached
    assert working.status_code == 200, working.text
    assert [event[0] for event in await _transitions(api, packet["id"])] == [
        "created",
        "claimed",
        "in_progress",
    ]


@on_postgres
async def test_hand_written_sql_that_keeps_the_row_version_is_still_seen(api: Api) -> None:
    """The write checks the status and expiry the rules saw, not only `row_version`."""
    expired = await create_packet(api)
    await _sql(
        api,
        "UPDATE packet SET expires_at = now() - interval '1 minute' WHERE id = $1",
        uuid.UUID(expired["id"]),
    )
    assert_problem(await claim(api, expired["id"]), 410, "packet.expired")

    held = await create_packet(api)
    await _sql(
        api,
        "UPDATE packet SET status = 'claimed', metadata = jsonb_set(metadata, '{target_agent}',"
        ' \'{"id": "ghost", "name": "Ghost"}\') WHERE id = $1',
        uuid.UUID(held["id"]),
    )
    body = assert_problem(await claim(api, held["id"]), 409, "packet.already_claimed")
    assert body["detail"]["claimed_by"]["id"] == "ghost"

    failed = await create_packet(api)
    assert (await claim(api, failed["id"])).status_code == 200  # cached as claimed
    await _sql(api, "UPDATE packet SET status = 'failed' WHERE id = $1", uuid.UUID(failed["id"]))
    refused = await patch(api, failed["id"], {"status": "in_progress"})
    assert_problem(refused, 400, "packet.illegal_transition")
    assert "from 'failed'" in refused.json()["detail"]


@on_postgres
async def test_a_row_rewritten_under_its_old_version_is_not_planned_from(api: Api) -> None:
    """A backup restored under a running server, or SQL that rewrites a row but keeps its
    `row_version`: its `updated_at` differs, and the PATCH is planned from the stored row."""
    packet = await create_packet(api)
    by_hand = {"id": "sql", "decision": "by hand", "rationale": "restored", "alternatives": []}
    await _sql(
        api,
        "UPDATE packet SET decisions = $2::jsonb, updated_at = now() WHERE id = $1",
        uuid.UUID(packet["id"]),
        json.dumps([by_hand]),
    )
    added = {"id": "api", "decision": "added", "rationale": "later", "alternatives": []}
    before = _outcomes()
    response = await patch(api, packet["id"], {"decisions": [added]})
    assert response.status_code == 200, response.text
    assert [decision["id"] for decision in response.json()["decisions"]] == ["sql", "api"]
    assert _since(before)["stale"] == 1


@on_postgres
async def test_racers_in_one_process_get_one_winner_and_use_the_row_once(api: Api) -> None:
    packet = await create_packet(api)
    before = _outcomes()
    responses = await asyncio.gather(
        *(claim(api, packet["id"], agent_id=f"racer-{index}") for index in range(8))
    )
    assert sorted(response.status_code for response in responses) == [200] + [409] * 7
    seen = _since(before)
    assert seen["hit"] == 1  # the row was used once, by one racer; the others read
    assert seen["stale"] <= 1  # that racer may still lose to one that read
    assert [event[0] for event in await _transitions(api, packet["id"])] == [
        "created",
        "claimed",
    ]


@on_postgres
async def test_cached_writes_of_many_packets_go_through_group_commit(api: Api) -> None:
    packets = [await create_packet(api) for _ in range(12)]
    for packet in packets:
        assert (await claim(api, packet["id"])).status_code == 200
    stats = group_commit.stats(_engine(api))
    assert stats is not None
    before, statements = _outcomes(), stats.statements
    responses = await asyncio.gather(
        *(patch(api, packet["id"], {"status": "in_progress"}) for packet in packets)
    )
    assert [response.status_code for response in responses] == [200] * 12
    # each request got the row its own statement changed, not another member's of the batch
    assert [response.json()["id"] for response in responses] == [p["id"] for p in packets]
    assert all(response.json()["status"] == "in_progress" for response in responses)
    assert _since(before) == {"hit": 12, "miss": 0, "stale": 0}
    assert stats.statements - statements == 12  # all of them handed over, none on its own


@on_postgres
async def test_a_stale_grouped_write_takes_a_connection_slot_again(api: Api) -> None:
    """With one connection, a cached PATCH that finds the row changed reads it and writes on
    the slot it gave back for its batch, and the next requests still get theirs."""
    async with _api(api.url, api.operator_key, db_pool_size=1, db_max_overflow=0) as one:
        packet = await create_packet(one)
        async with _api(api.url, api.operator_key) as other:
            assert (await claim(other, packet["id"], agent_id="elsewhere")).status_code == 200
        before = _outcomes()
        responses = await asyncio.gather(
            patch(one, packet["id"], {"status": "failed"}),  # legal from the cached 'created'
            *(one.client.get(f"{P}/packets/{packet['id']}", headers=one.headers()) for _ in "ab"),
        )
        assert [response.status_code for response in responses] == [200] * 3
        assert _since(before)["stale"] == 1
        assert responses[0].json()["status"] == "failed"


@on_postgres
async def test_only_committed_units_leave_rows_and_the_setting_turns_it_off(api: Api) -> None:
    state = _state(api)
    cache = recent.of(state.engine)
    assert cache is not None
    tenant_id = DEFAULT_TENANT_ID  # the operator key's
    body = PacketCreate.model_validate(packet_body())
    written: list[uuid.UUID] = []

    async def failing_request() -> None:
        async with request_session(state) as session:
            packet = await PacketService(session, state.clock, tenant_id).create(body, last=True)
            written.append(packet.id)
            raise RuntimeError("the request failed after its write")

    with pytest.raises(RuntimeError):
        await failing_request()
    assert cache.take(tenant_id, written[0]) is None
    async with request_session(state) as session:
        created = await PacketService(session, state.clock, tenant_id).create(body, last=True)
    assert cache.take(tenant_id, created.id) is not None

    async with _api(api.url, api.operator_key, recent_packets=0) as off:
        assert recent.of(_state(off).engine) is None
        packet = await create_packet(off)
        before = _outcomes()
        assert (await claim(off, packet["id"])).status_code == 200
        assert _since(before) == {"hit": 0, "miss": 0, "stale": 0}


@on_sqlite
async def test_sqlite_has_no_cache(api: Api) -> None:
    assert recent.of(_engine(api)) is None
    packet = await create_packet(api)
    before = _outcomes()
    assert (await claim(api, packet["id"])).status_code == 200
    assert (await patch(api, packet["id"], {"status": "in_progress"})).status_code == 200
    assert _since(before) == {"hit": 0, "miss": 0, "stale": 0}
