"""The principal cache on PostgreSQL (keys/cache.py): a key or tenant change made anywhere —
this process, another one, hand-written SQL — is seen at once, including after the listener's
connection was lost. The entries' lifetime is an hour here, so only the notices can explain it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from handoffrail_server.api.deps import AppState
from handoffrail_server.db import migrations
from handoffrail_server.keys.cache import CHANNEL, PrincipalCache
from handoffrail_server.main import create_app
from tests.conftest import Api, bootstrap_operator_key, make_settings

pytestmark = pytest.mark.postgres

P = "/api/v1"


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
async def api(postgres_url: str) -> AsyncIterator[Api]:
    await asyncio.to_thread(migrations.upgrade, postgres_url)
    operator_key = await asyncio.to_thread(bootstrap_operator_key, postgres_url)
    app = create_app(make_settings(postgres_url, auth_cache_seconds=3600))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        api = Api(app=app, url=postgres_url, operator_key=operator_key, client=client)
        await _until(lambda: _listening(api))
        yield api


def _state(api: Api) -> AppState:
    state: AppState = api.app.state.hr
    return state


def _cache(api: Api) -> PrincipalCache:
    cache = _state(api).principals
    assert cache is not None
    return cache


async def _listening(api: Api) -> bool:
    return _cache(api).enabled


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def _sql(api: Api, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(_dsn(api.url))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _status(api: Api, key: str) -> int:
    response = await api.client.get(f"{P}/packets", headers=api.headers(key))
    return response.status_code


async def _cached_key(api: Api) -> tuple[str, str]:
    """A fresh tenant admin key, resolved once so that it is cached: (tenant id, key)."""
    tenant_id, key = await api.new_tenant_admin()
    assert await _status(api, key) == 200
    assert len(_cache(api)) >= 1
    return tenant_id, key


async def test_a_key_revoked_by_this_process_is_refused_on_the_next_request(api: Api) -> None:
    listener = _state(api).principal_listener
    assert listener is not None
    assert listener.connection is not None
    # notices are not heard in this test: only the process's own clearing can explain a 403
    await listener.connection.remove_listener(CHANNEL, listener._on_notice)
    _tenant_id, key = await _cached_key(api)
    listing = await api.client.get(f"{P}/keys", headers=api.headers(key))
    [row] = listing.json()
    revoked = await api.client.delete(f"{P}/keys/{row['id']}", headers=api.headers())
    assert revoked.status_code == 204
    assert await _status(api, key) == 403  # no waiting: cleared right after the commit


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ("UPDATE api_key SET revoked_at = now() WHERE tenant_id = $1", 403),
        ("UPDATE tenant SET deleted_at = now() WHERE id = $1", 401),
        ("DELETE FROM api_key WHERE tenant_id = $1", 401),
    ],
    ids=["key revoked", "tenant deleted", "key deleted"],
)
async def test_a_change_made_elsewhere_reaches_the_cache(
    api: Api, change: str, refused: int
) -> None:
    tenant_id, key = await _cached_key(api)
    await _sql(api, change, tenant_id)  # another process, the CLI, an operator's SQL

    async def refused_now() -> bool:
        return await _status(api, key) == refused

    await _until(refused_now)


async def test_new_keys_do_not_clear_the_cache(api: Api) -> None:
    await _cached_key(api)
    generation = _cache(api).generation()
    await api.new_key()
    await asyncio.sleep(0.2)  # a notice, if any, would have arrived
    assert _cache(api).generation() == generation


async def test_after_the_listener_lost_its_connection_changes_are_still_seen(api: Api) -> None:
    listener = _state(api).principal_listener
    assert listener is not None
    assert listener.connection is not None
    first = listener.connection
    await _sql(
        api,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'handoffrail-listener' AND datname = current_database()",
    )

    async def listening_again() -> bool:
        return listener.connection not in (None, first) and _cache(api).enabled

    await _until(listening_again)
    tenant_id, key = await _cached_key(api)
    await _sql(api, "UPDATE api_key SET revoked_at = now() WHERE tenant_id = $1", tenant_id)

    async def refused_now() -> bool:
        return await _status(api, key) == 403

    await _until(refused_now)
