"""Readiness under faults (issue 6): the database goes away and comes back without a restart.

The app reaches PostgreSQL through a loopback TCP proxy owned by the test; stopping the proxy
(closing its listener and aborting live connections) is the database "going down", starting it
again on the same port is the recovery. Redis is optional: readiness reports it, never fails on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from handoffrail_server import __version__
from handoffrail_server.db import migrations
from handoffrail_server.main import create_app
from tests.conftest import Api, bootstrap_operator_key, free_port, make_settings, packet_body
from tests.contract.helpers import P, assert_problem

pytestmark = pytest.mark.postgres

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_URL = "redis://127.0.0.1:6379/0"
#: words that would betray internals in a health body
LEAKS = ("postgres", "asyncpg", "sqlite", "redis://", "127.0.0.1", "localhost", "error", "refused")


class TcpProxy:
    """A stoppable loopback TCP forwarder to `target` that keeps its port across restarts."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Close the listener and abort every live connection (like a crashed database)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


@pytest.fixture
def migrated_pg(postgres_url: str) -> str:
    """A throw-away PostgreSQL database at head."""
    migrations.upgrade(postgres_url)
    return postgres_url


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A running proxy to the test PostgreSQL server; always stopped at the end."""
    forwarder = TcpProxy(PG_HOST, PG_PORT)
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.stop()


def through(url: str, proxy: TcpProxy) -> str:
    """The same database URL, but reached through `proxy`."""
    direct = f"@{PG_HOST}:{PG_PORT}/"
    assert direct in url, url
    return url.replace(direct, f"@127.0.0.1:{proxy.port}/", 1)


@contextlib.asynccontextmanager
async def serve(url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process for `url`, with a short pool timeout so outages answer quickly."""
    settings = make_settings(url, db_pool_timeout=3, **overrides)
    app = create_app(settings)
    # raise_app_exceptions stays on: an outage must be answered and done, never re-raised to
    # the server (which would log a full traceback for every request during the outage)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client,
    ):
        yield client


@pytest.fixture
async def proxied(migrated_pg: str, proxy: TcpProxy) -> AsyncIterator[Api]:
    """The app whose database connections all go through `proxy`."""
    key = await asyncio.to_thread(bootstrap_operator_key, migrated_pg)
    url = through(migrated_pg, proxy)
    async with serve(url) as client:
        yield Api(app=None, url=url, operator_key=key, client=client)  # type: ignore[arg-type]


def assert_no_internals(body: dict[str, Any]) -> None:
    """Health bodies carry statuses only: no versions, hosts or exception text."""
    text = json.dumps(body).lower()
    for word in (*LEAKS, socket.gethostname().lower(), __version__):
        assert word not in text, (word, body)


async def eventually(check: Any, attempts: int = 20, delay: float = 0.25) -> httpx.Response:
    """Call `check()` until it returns a response that is not None (bounded)."""
    for _ in range(attempts):
        response: httpx.Response | None = await check()
        if response is not None:
            return response
        await asyncio.sleep(delay)
    raise AssertionError("condition not reached in time")


async def test_database_outage_answers_503_and_recovers_without_restart(
    proxied: Api, proxy: TcpProxy
) -> None:
    api = proxied
    # healthy: a packet is created, and readiness passes
    created = await api.client.post(f"{P}/packets", json=packet_body(), headers=api.headers())
    assert created.status_code == 201, created.text
    ready = await api.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["db"] is True
    assert ready.json()["database"] == "ok"

    await proxy.stop()  # the database goes away under a warm pool

    not_ready = await api.client.get("/ready")
    assert not_ready.status_code == 503
    body = not_ready.json()
    assert body["db"] is False
    assert body["database"] == "unavailable"
    assert body["status"] == "not_ready"
    assert_no_internals(body)
    for path in ("/api/v1/health/ready",):
        assert (await api.client.get(path)).status_code == 503

    for path in ("/health", "/healthz", "/api/v1/health"):
        alive = await api.client.get(path)
        assert alive.status_code == 200, path
        assert_no_internals(alive.json())

    for _ in range(3):  # the warm pool's stale connections and fresh connects alike
        listing = await api.client.get(f"{P}/packets", headers=api.headers())
        problem = assert_problem(listing, 503, "service.database_unavailable")
        assert listing.headers["retry-after"].isdigit()
        assert_no_internals(problem)
    write = await api.client.post(f"{P}/packets", json=packet_body(), headers=api.headers())
    assert_problem(write, 503, "service.database_unavailable")
    metrics_text = (await api.client.get("/metrics")).text
    assert "handoffrail_db_unavailable_total" in metrics_text

    await proxy.start()  # the database is back; the app was never restarted

    async def ready_again() -> httpx.Response | None:
        response = await api.client.get("/ready")
        return response if response.status_code == 200 else None

    recovered = await eventually(ready_again)
    assert recovered.json()["db"] is True

    async def api_again() -> httpx.Response | None:
        response = await api.client.get(f"{P}/packets", headers=api.headers())
        return response if response.status_code == 200 else None

    listing = await eventually(api_again)
    assert [item["id"] for item in listing.json()["packets"]] == [created.json()["id"]]
    again = await api.client.post(f"{P}/packets", json=packet_body(), headers=api.headers())
    assert again.status_code == 201, again.text


async def test_app_starts_while_the_database_is_down_and_serves_once_it_is_up(
    migrated_pg: str, proxy: TcpProxy
) -> None:
    key = await asyncio.to_thread(bootstrap_operator_key, migrated_pg)
    await proxy.stop()
    async with serve(through(migrated_pg, proxy)) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 503
        assert_problem(
            await client.get(f"{P}/packets", headers={"X-API-Key": key}),
            503,
            "service.database_unavailable",
        )
        await proxy.start()

        async def ready_again() -> httpx.Response | None:
            response = await client.get("/ready")
            return response if response.status_code == 200 else None

        await eventually(ready_again)
        listing = await client.get(f"{P}/packets", headers={"X-API-Key": key})
        assert listing.status_code == 200, listing.text


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening."""
    return free_port()


@pytest.mark.parametrize(
    ("redis", "expected"),
    [("up", "ok"), ("closed-port", "unavailable"), ("none", "not_configured")],
)
async def test_readiness_reports_redis_without_failing_on_it(
    migrated_pg: str, closed_port: int, redis: str, expected: str
) -> None:
    redis_url = {
        "up": REDIS_URL,
        "closed-port": f"redis://127.0.0.1:{closed_port}/0",
        "none": None,
    }[redis]
    if redis == "up":
        await _require_redis()
    async with serve(migrated_pg, redis_url=redis_url) as client:
        response = await client.get("/ready")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["redis"] == expected
        assert body["db"] is True
        assert_no_internals(body)
        assert set(body) <= {"status", "service", "db", "database", "redis", "rate_limit"}
        alias = await client.get("/api/v1/health/ready")
        assert alias.status_code == 200
        assert alias.json()["redis"] == expected


async def _require_redis() -> None:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 6379), 2)
    except (OSError, TimeoutError):
        pytest.skip("Redis unreachable at 127.0.0.1:6379")
    writer.close()
    await writer.wait_closed()


async def test_health_bodies_carry_no_internals(migrated_pg: str) -> None:
    async with serve(migrated_pg, redis_url=REDIS_URL) as client:
        for path in ("/health", "/healthz", "/api/v1/health", "/ready", "/api/v1/health/ready"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "application/json"
            assert "server" not in response.headers
            assert_no_internals(response.json())
        assert (await client.get("/health")).json() == {"status": "ok", "service": "handoffrail"}
