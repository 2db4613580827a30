"""Shared fixtures: databases (SQLite and a throw-away PostgreSQL database), apps, keys, servers.

PostgreSQL and Redis tests skip when the server is unreachable, except under CI (`CI` set),
where they fail.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from handoffrail_server.api.roles import Role
from handoffrail_server.clock import SystemClock
from handoffrail_server.db import migrations
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.infra.serving import HttpProtocol
from handoffrail_server.keys import service as keys_service
from handoffrail_server.main import create_app
from handoffrail_server.settings import UNPREFIXED, Settings
from tests.pg_pool import PgPool

PG_ADMIN_DSN = os.environ.get("HR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("HR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))

# The settings fall back to these unprefixed platform variables (DATABASE_URL, ...): a shell
# that exports one must not point the tests, or the servers they start, at its database.
for _variable in UNPREFIXED.values():
    os.environ.pop(_variable, None)


def _pg_reachable() -> bool:
    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def require_postgres() -> None:
    """Skip (locally) or fail (CI) when PostgreSQL is unreachable."""
    if not _pg_reachable():
        message = f"PostgreSQL unreachable at {PG_ADMIN_DSN}"
        if IN_CI:
            pytest.fail(message + " (CI must run PostgreSQL tests for real)")
        pytest.skip(message)


def _redis_reachable() -> bool:
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def require_redis() -> None:
    """Skip (locally) or fail (CI) when Redis is unreachable."""
    if not _redis_reachable():
        message = f"Redis unreachable at {REDIS_TEST_URL}"
        if IN_CI:
            pytest.fail(message + " (CI must run Redis tests for real)")
        pytest.skip(message)


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{database}"


def create_pg_database() -> tuple[str, str]:
    """Create a uniquely named database; returns (name, SQLAlchemy URL)."""
    name = f"hr_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return name, _pg_url(name).replace("postgresql://", "postgresql+asyncpg://", 1)


def drop_pg_database(name: str) -> None:
    """Drop a test database, terminating leftover connections."""

    async def drop() -> None:
        connection = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend (not migrated); where the test also uses
    `migrated_url`, the same database, at the head revision (PostgreSQL: from `pg_pool`)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    require_postgres()
    if "migrated_url" in request.fixturenames:
        pool: PgPool = request.getfixturevalue("pg_pool")
        name = pool.take()
        try:
            yield _pg_url(name).replace("postgresql://", "postgresql+asyncpg://", 1)
        finally:
            pool.give_back(name)
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty PostgreSQL database only."""
    require_postgres()
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Per backend, one database migrated to head once per test session (copied per test).

    Running the migrations for each of a thousand tests costs minutes; copying a migrated
    database costs milliseconds. `tests/integration/test_migrations.py` still migrates for real.
    """
    templates: dict[str, str] = {"sqlite_dir": str(tmp_path_factory.mktemp("templates"))}
    try:
        yield templates
    finally:
        if "postgres" in templates:
            drop_pg_database(templates["postgres"])


@pytest.fixture(scope="session")
def pg_pool(migrated_templates: dict[str, str]) -> Iterator[PgPool]:
    """Migrated PostgreSQL databases, emptied and reused between tests (tests/pg_pool.py)."""
    pool = PgPool(PG_ADMIN_DSN, _postgres_template(migrated_templates))
    try:
        yield pool
    finally:
        pool.close()


def _sqlite_template(templates: dict[str, str]) -> str:
    if "sqlite" not in templates:
        path = Path(templates["sqlite_dir"]) / "head.db"
        migrations.upgrade(f"sqlite+aiosqlite:///{path}")
        templates["sqlite"] = str(path)
    return templates["sqlite"]


def _postgres_template(templates: dict[str, str]) -> str:
    if "postgres" not in templates:
        name, url = create_pg_database()
        migrations.upgrade(url)
        templates["postgres"] = name
    return templates["postgres"]


def copy_sqlite_database(source: str, target: str) -> None:
    """A consistent copy (SQLite's backup API: WAL contents included)."""
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)
    origin.close()
    copy.close()


@pytest.fixture
def migrated_url(database_url: str, migrated_templates: dict[str, str]) -> str:
    """A database at the head revision, on each backend (a copy of the session's template)."""
    if database_url.startswith("sqlite"):
        copy_sqlite_database(_sqlite_template(migrated_templates), database_url.split(":///", 1)[1])
    return database_url  # PostgreSQL: `database_url` took it from `pg_pool`, migrated


#: a secret staging and production accept (32+ random-looking characters)
TEST_SECRET = "test-secret-Vq3Jp9wL2xTz7Rk5mNb8Hc4Yd6Gf1Sa0"


def make_settings(url: str, **overrides: object) -> Settings:
    """Development settings for a test database (no background expiry loop); another
    environment gets `TEST_SECRET` unless the overrides name a secret."""
    values: dict[str, object] = {
        "database_url": url,
        "environment": "development",
        "expiry_interval_seconds": 0,
        "log_level": "warning",
    }
    values.update(overrides)
    if values["environment"] != "development":
        values.setdefault("secret_key", TEST_SECRET)
    return Settings(**values)  # type: ignore[arg-type]


def bootstrap_operator_key(url: str) -> str:
    """Create the first operator key in a migrated database and return it."""

    async def run() -> str:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                plain = await keys_service.bootstrap(
                    session, SystemClock(), plain=None, tier="business"
                )
        finally:
            await engine.dispose()
        assert plain is not None
        return plain

    return asyncio.run(run())


@dataclass
class Api:
    """An app plus an operator key and an async HTTP client bound to it."""

    app: FastAPI
    url: str
    operator_key: str
    client: httpx.AsyncClient

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Auth headers for `key` (the operator key by default)."""
        return {"X-API-Key": key or self.operator_key}

    async def new_key(self, role: Role = Role.ADMIN, tenant_id: str | None = None) -> str:
        """Create a key through the API (operator) and return the plain key."""
        body: dict[str, object] = {"name": f"test-{role.value}", "role": role.value}
        if tenant_id:
            body["tenant_id"] = tenant_id
        response = await self.client.post("/api/v1/keys", json=body, headers=self.headers())
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    async def new_tenant_admin(self, tier: str = "business") -> tuple[str, str]:
        """A fresh tenant and an admin key of it: (tenant_id, key)."""
        response = await self.client.post(
            "/api/v1/tenants",
            json={"name": f"tenant-{uuid.uuid4().hex[:8]}", "tier": tier},
            headers=self.headers(),
        )
        assert response.status_code == 201, response.text
        tenant_id = str(response.json()["id"])
        return tenant_id, await self.new_key(Role.ADMIN, tenant_id)


@pytest.fixture
async def api(migrated_url: str) -> AsyncIterator[Api]:
    """The app on each backend, with an operator key, driven in-process over ASGI."""
    operator_key = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    app = create_app(make_settings(migrated_url))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(app=app, url=migrated_url, operator_key=operator_key, client=client)


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(app: Any, **config: Any) -> Iterator[str]:
    """Run `app` under Uvicorn (`config`: more `uvicorn.Config` arguments) on a free loopback
    port, in a thread; yield its base URL. Leaving, the server must stop within 15 s, or the
    failure names the tasks that held it (the await chain of each)."""
    port = free_port()
    settings = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", **config)
    server = uvicorn.Server(settings)
    loops: list[asyncio.AbstractEventLoop] = []

    async def run() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    def main() -> None:  # Server.run, with a hold on the loop (uvloop, as Uvicorn picks it)
        with asyncio.Runner(loop_factory=settings.get_loop_factory()) as runner:
            runner.run(run())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            stuck = _pending_tasks(loops[0])
            server.force_exit = True
            thread.join(timeout=5)
            raise AssertionError(f"Uvicorn did not shut down within 15 s; still running:\n{stuck}")


def _pending_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Each unfinished task of `loop` with its innermost frames, to name what held shutdown."""
    lines: list[str] = []
    for task in list(asyncio.all_tasks(loop)):
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 40:  # follow the await chain inwards
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                break
            chain.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        lines.append(f"{task.get_name()}: {' -> '.join(chain[-6:])}")
    return "\n".join(lines)


@dataclass
class LiveServer:
    """A real Uvicorn server on loopback, in a thread, with the production HTTP protocol."""

    base_url: str
    api_url: str
    operator_key: str
    database_url: str


@contextmanager
def run_live_server(url: str, *, backlog: int = 2048, **overrides: object) -> Iterator[LiveServer]:
    """Serve the app for the migrated database `url` on a free loopback port, in a thread.

    Makes the first operator key; `overrides` are Settings fields for this server.
    """
    operator_key = bootstrap_operator_key(url)
    app = create_app(make_settings(url, **overrides))
    # HttpProtocol: as `handoffrail serve` and the Gunicorn worker
    with serve_app(app, log_level="warning", backlog=backlog, http=HttpProtocol) as base:
        yield LiveServer(base, f"{base}/api/v1", operator_key, url)


@pytest.fixture
def live_server(migrated_url: str) -> Iterator[LiveServer]:
    """Uvicorn serving the app on 127.0.0.1:<free port> for real HTTP clients (the SDK)."""
    with run_live_server(migrated_url) as server:
        yield server


def packet_body(
    summary: str = "Customer wants a refund",
    *,
    source: str = "sales-01",
    target: str = "billing-01",
    tags: list[str] | None = None,
    priority: str = "normal",
    hitl: dict[str, object] | None = None,
) -> dict[str, object]:
    """A minimal valid create body."""
    body: dict[str, object] = {
        "metadata": {
            "source_agent": {"id": source, "name": source.title()},
            "target_agent": {"id": target, "name": target.title()},
            "priority": priority,
            "tags": tags or [],
        },
        "context": {"summary": summary},
    }
    if hitl is not None:
        body["hitl"] = hitl
    return body
