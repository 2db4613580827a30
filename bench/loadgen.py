"""The load generator: one scenario per run, in its own process, printing one JSON line.

    python -m bench.loadgen '{"scenario": "create", "url": "http://127.0.0.1:8080", ...}'

It speaks HTTP/1.1 over raw asyncio streams on keep-alive connections (one per client), which costs
far less CPU per request than an HTTP library, and reports its own CPU share (`client_cpu`: CPU
seconds of this process / wall seconds of the measured window; 1.0 = one full core) so a reader can
see it was not the bottleneck. Every loop is bounded by a request count and a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.loadclient import (
    Budget,
    Connection,
    HttpError,
    Run,
    summary,
    timed,
)

# -- the packet -------------------------------------------------------------------------------


def packet_body(index: int = 0) -> dict[str, Any]:
    """A ~1.3 KB create body shaped like the SDK's builders produce."""
    return {
        "metadata": {
            "source_agent": {"id": "bench-sales", "name": "Sales Agent", "framework": "langgraph"},
            "target_agent": {"id": "bench-billing", "name": "Billing Agent"},
            "priority": "normal",
            "tags": ["refund", "enterprise", "bench"],
        },
        "context": {
            "summary": f"Customer #{index} asks for a refund of the annual plan after a double "
            "charge; sales verified the invoice and hands off to billing.",
            "conversation_state": [
                {"role": "user", "content": "I was charged twice for the annual plan this month."},
                {
                    "role": "agent",
                    "content": "I can see two charges of $1,188 on the 3rd; one is a duplicate.",
                },
                {"role": "user", "content": "Please refund the duplicate to the same card."},
            ],
            "artifacts": [
                {"key": "invoice_id", "value": "INV-2026-004211"},
                {"key": "charge", "value": {"amount": 1188, "currency": "USD", "count": 2}},
            ],
            "custom": {"account_tier": "enterprise", "region": "eu-west"},
        },
        "decisions": [
            {
                "id": "d1",
                "decision": "Refund the duplicate charge",
                "rationale": "Two identical charges within one minute; the customer has one seat.",
                "alternatives": ["credit next invoice", "escalate to finance"],
                "decided_by": "bench-sales",
            }
        ],
        "actions": {
            "completed": [
                {"id": "a1", "description": "Verified the invoice", "result": "duplicate found"}
            ],
            "pending": [
                {
                    "id": "a2",
                    "description": "Issue the refund for the duplicate charge",
                    "assignee": "bench-billing",
                    "priority": "high",
                }
            ],
        },
    }


def body_bytes(index: int = 0) -> bytes:
    return json.dumps(packet_body(index), separators=(",", ":")).encode()


def _row_documents(now: datetime) -> dict[str, str]:
    """The JSON documents the server stores for `packet_body()`, as JSON text."""
    body = packet_body()
    metadata = dict(body["metadata"])
    metadata.update(created_at=now.isoformat(), claimed_at=None, completed_at=None)
    return {
        "metadata": json.dumps(metadata),
        "context": json.dumps(body["context"]),
        "decisions": json.dumps(body["decisions"]),
        "actions": json.dumps(body["actions"]),
        "dependencies": "[]",
    }


_COLUMNS = (
    "id, tenant_id, version, status, priority, priority_rank, source_agent_id, target_agent_id, "
    "metadata, context, decisions, actions, dependencies, search_text, row_version, created_at, "
    "updated_at, expires_at"
)
_SEARCH_TEXT = "customer asks for a refund of the annual plan after a double charge " * 4


# -- scenarios ----------------------------------------------------------------------------------


async def scenario_post(spec: dict[str, Any]) -> dict[str, Any]:
    """POST the packet body as fast as `clients` connections allow (create or the bare app)."""
    clients, path, expect = spec["clients"], spec.get("path", "/api/v1/packets"), spec["expect"]
    method = spec.get("method", "POST")
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    payloads = [body_bytes(index) for index in range(64)]

    async def work(index: int) -> int:
        connection = Connection(spec["url"], spec.get("key"))
        done = 0
        try:
            while budget.take():
                start = time.perf_counter()
                try:
                    body = payloads[done % 64] if method == "POST" else None
                    status, _ = await connection.request(method, path, body)
                except (HttpError, OSError):
                    run.errors += 1
                    continue
                run.latencies.append(time.perf_counter() - start)
                run.status(status)
                if status != expect:
                    run.errors += 1
                done += 1
        finally:
            await connection.close()
        return done

    ops, wall, cpu = await timed(clients, work)
    return summary(run, ops, wall, cpu)


async def _create(connection: Connection, index: int = 0) -> str:
    status, body = await connection.request("POST", "/api/v1/packets", body_bytes(index))
    if status != 201:
        raise HttpError(f"create answered {status}: {body[:200]!r}")
    return str(json.loads(body)["id"])


def _claim_body(agent: str) -> bytes:
    return json.dumps({"agent_id": agent, "agent_name": agent.title()}).encode()


async def scenario_lifecycle(spec: dict[str, Any]) -> dict[str, Any]:
    """create -> claim -> in_progress -> completed, per client, until the budget runs out."""
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    steps = [
        b'{"status":"in_progress"}',
        b'{"status":"completed"}',
    ]

    async def work(index: int) -> int:
        connection = Connection(spec["url"], spec["key"])
        agent = f"worker-{index}"
        done = 0
        try:
            while budget.take():
                start = time.perf_counter()
                try:
                    packet_id = await _create(connection, done)
                    status, _ = await connection.request(
                        "POST", f"/api/v1/packets/{packet_id}/claim", _claim_body(agent)
                    )
                    run.status(status)
                    ok = status == 200
                    for step in steps:
                        if not ok:
                            break
                        status, _ = await connection.request(
                            "PATCH", f"/api/v1/packets/{packet_id}", step
                        )
                        run.status(status)
                        ok = status == 200
                except (HttpError, OSError):
                    ok = False
                if not ok:
                    run.errors += 1
                    continue
                run.latencies.append(time.perf_counter() - start)
                done += 1
        finally:
            await connection.close()
        return done

    ops, wall, cpu = await timed(spec["clients"], work)
    return summary(run, ops, wall, cpu)


async def _create_many(spec: dict[str, Any], count: int, clients: int = 10) -> list[str]:
    """Set-up (untimed): create `count` packets through the API."""
    ids: list[str] = []
    budget = Budget(count, spec["seconds"] * 4)

    async def work(_index: int) -> None:
        connection = Connection(spec["url"], spec["key"])
        try:
            while budget.take():
                ids.append(await _create(connection, len(ids)))
        finally:
            await connection.close()

    await asyncio.gather(*(work(index) for index in range(clients)))
    return ids


async def scenario_race(spec: dict[str, Any]) -> dict[str, Any]:
    """`racers` agents claim the SAME packets at the same instant (a barrier per packet)."""
    racers = spec["racers"]
    ids = spec["ids"]  # created beforehand (`seed`): their creation is not in the row's CPU
    deadline = time.perf_counter() + spec["seconds"]
    run = Run()
    barrier = asyncio.Barrier(racers)
    winners: dict[str, list[str]] = {packet_id: [] for packet_id in ids}
    raced: list[str] = []
    stop = False

    async def work(index: int) -> int:
        nonlocal stop
        connection = Connection(spec["url"], spec["key"])
        agent = f"worker-{index}"
        attempts = 0
        try:
            for packet_id in ids:
                await barrier.wait()
                if stop:
                    break
                if index == 0:
                    raced.append(packet_id)
                start = time.perf_counter()
                try:
                    status, _ = await connection.request(
                        "POST", f"/api/v1/packets/{packet_id}/claim", _claim_body(agent)
                    )
                except (HttpError, OSError):
                    run.errors += 1
                    continue
                run.latencies.append(time.perf_counter() - start)
                run.status(status)
                attempts += 1
                if status == 200:
                    winners[packet_id].append(agent)
                elif status != 409:
                    run.errors += 1
                if index == 0 and time.perf_counter() > deadline:
                    stop = True
        finally:
            await connection.close()
        return attempts

    ops, wall, cpu = await timed(racers, work)
    result = summary(run, ops, wall, cpu)
    wins = sum(len(agents) for agents in winners.values())
    result.update(
        packets=raced,
        claims=wins,
        claims_per_s=wins / wall if wall else 0.0,
        client_double=sum(1 for agents in winners.values() if len(agents) > 1),
        unclaimed=sum(1 for packet_id in raced if not winners[packet_id]),
    )
    return result


async def scenario_seed(spec: dict[str, Any]) -> dict[str, Any]:
    """Set-up of a contended-claim row: `packets` packets created through the API, their ids."""
    return {"ids": await _create_many(spec, spec["packets"])}


async def scenario_claim_next(spec: dict[str, Any]) -> dict[str, Any]:
    """`clients` workers pull with claim-next until the queue is empty (204) or the budget ends."""
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    claimed: list[str] = []

    async def work(index: int) -> int:
        connection = Connection(spec["url"], spec["key"])
        agent = f"worker-{index}"
        body = _claim_body(agent)
        done = 0
        try:
            while budget.take():
                start = time.perf_counter()
                try:
                    status, payload = await connection.request(
                        "POST", "/api/v1/packets/claim-next", body
                    )
                except (HttpError, OSError):
                    run.errors += 1
                    continue
                run.status(status)
                if status == 204:
                    break
                if status != 200:
                    run.errors += 1
                    continue
                run.latencies.append(time.perf_counter() - start)
                claimed.append(str(json.loads(payload)["id"]))
                done += 1
        finally:
            await connection.close()
        return done

    ops, wall, cpu = await timed(spec["clients"], work)
    result = summary(run, ops, wall, cpu)
    result.update(packets=claimed, claims=len(claimed))
    return result


async def scenario_pg_insert(spec: dict[str, Any]) -> dict[str, Any]:
    """Storage ceiling: raw asyncpg INSERTs of the packet row shape, one statement each."""
    import asyncpg

    clients = spec["clients"]
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    now = datetime.now(UTC)
    docs = _row_documents(now)
    sql = (
        f"INSERT INTO {spec['table']} ({_COLUMNS}) VALUES ($1, 'default', '1.0.0', 'created', "
        "'normal', 1, 'bench-sales', 'bench-billing', $2::jsonb, $3::jsonb, $4::jsonb, $5::jsonb, "
        "$6::jsonb, $7, 1, $8, $8, $9)"
    )
    pool = await asyncpg.create_pool(spec["dsn"], min_size=clients, max_size=clients)
    try:

        async def work(_index: int) -> int:
            done = 0
            async with pool.acquire() as connection:
                while budget.take():
                    start = time.perf_counter()
                    stamp = datetime.now(UTC)
                    await connection.execute(
                        sql,
                        uuid.uuid4(),
                        docs["metadata"],
                        docs["context"],
                        docs["decisions"],
                        docs["actions"],
                        docs["dependencies"],
                        _SEARCH_TEXT,
                        stamp,
                        stamp + timedelta(days=1),
                    )
                    run.latencies.append(time.perf_counter() - start)
                    done += 1
            return done

        ops, wall, cpu = await timed(clients, work)
    finally:
        await pool.close()
    return summary(run, ops, wall, cpu)


async def scenario_pg_claim(spec: dict[str, Any]) -> dict[str, Any]:
    """Claim ceiling: raw `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`."""
    import asyncpg

    clients = spec["clients"]
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    sql = (
        f"UPDATE {spec['table']} SET status = 'claimed', claimed_by_agent_id = $1, "
        "claimed_at = now(), updated_at = now(), row_version = row_version + 1 "
        f"WHERE id = (SELECT id FROM {spec['table']} WHERE tenant_id = 'default' "
        "AND status = 'created' ORDER BY priority_rank DESC, created_at, id "
        "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id"
    )
    pool = await asyncpg.create_pool(spec["dsn"], min_size=clients, max_size=clients)
    try:

        async def work(index: int) -> int:
            done = 0
            async with pool.acquire() as connection:
                while budget.take():
                    start = time.perf_counter()
                    row = await connection.fetchrow(sql, f"worker-{index}")
                    if row is None:
                        break
                    run.latencies.append(time.perf_counter() - start)
                    done += 1
            return done

        ops, wall, cpu = await timed(clients, work)
    finally:
        await pool.close()
    return summary(run, ops, wall, cpu)


async def scenario_sqlite_insert(spec: dict[str, Any]) -> dict[str, Any]:
    """SQLite ceiling: one connection, one `BEGIN IMMEDIATE; INSERT; COMMIT` per row (WAL)."""
    budget = Budget(spec["count"], spec["seconds"])
    run = Run()
    connection = sqlite3.connect(spec["path"], isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
            connection.execute(f"PRAGMA {pragma}")
        now = datetime.now(UTC)
        docs = _row_documents(now)
        sql = (
            f"INSERT INTO {spec['table']} ({_COLUMNS}) VALUES (?, 'default', '1.0.0', 'created', "
            "'normal', 1, 'bench-sales', 'bench-billing', ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = 0
        while budget.take():
            start = time.perf_counter()
            stamp = datetime.now(UTC)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                sql,
                (
                    uuid.uuid4().hex,
                    docs["metadata"],
                    docs["context"],
                    docs["decisions"],
                    docs["actions"],
                    docs["dependencies"],
                    _SEARCH_TEXT,
                    stamp.isoformat(),
                    stamp.isoformat(),
                    (stamp + timedelta(days=1)).isoformat(),
                ),
            )
            connection.execute("COMMIT")
            run.latencies.append(time.perf_counter() - start)
            done += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        connection.close()
    return summary(run, done, wall, cpu)


async def scenario_webhook(spec: dict[str, Any]) -> dict[str, Any]:
    """Commit -> receiver latency: a local receiver, a hook on `packet.created`, paced creates.

    The commit instant is taken as the moment the 201 arrives (the server commits before it
    answers), so the figure is the outbox worker's pick-up + delivery time.
    """
    arrivals: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _request in range(100_000):
                raw = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in raw.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                now = time.time()
                try:
                    packet_id = str(json.loads(body).get("packet_id"))
                    arrivals.setdefault(packet_id, now)
                except ValueError:
                    pass
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = Connection(spec["url"], spec["key"])
    committed: dict[str, float] = {}
    try:
        hook = json.dumps(
            {"url": f"http://127.0.0.1:{port}/hook", "events": ["packet.created"]}
        ).encode()
        status, body = await connection.request("POST", "/api/v1/hooks", hook)
        if status != 201:
            raise HttpError(f"POST /hooks answered {status}: {body[:200]!r}")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deadline = wall0 + spec["seconds"]
        for index in range(spec["count"]):
            if time.perf_counter() > deadline:
                break
            packet_id = await _create(connection, index)
            committed[packet_id] = time.time()
            await asyncio.sleep(spec.get("interval", 0.02))
        settle = time.perf_counter() + 15
        while time.perf_counter() < settle and not set(committed) <= set(arrivals):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await connection.close()
        server.close()
        await server.wait_closed()
    run = Run(latencies=[arrivals[key] - committed[key] for key in committed if key in arrivals])
    run.errors = sum(1 for key in committed if key not in arrivals)
    return summary(run, len(run.latencies), wall, cpu)


SCENARIOS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "post": scenario_post,
    "lifecycle": scenario_lifecycle,
    "race": scenario_race,
    "seed": scenario_seed,
    "claim_next": scenario_claim_next,
    "pg_insert": scenario_pg_insert,
    "pg_claim": scenario_pg_claim,
    "sqlite_insert": scenario_sqlite_insert,
    "webhook": scenario_webhook,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    scenario = SCENARIOS[spec["scenario"]](spec)
    result: dict[str, Any]
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(scenario)
    else:
        result = uvloop.run(scenario)
    result["pid"] = os.getpid()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
