"""HTTP hardening (issue 6): security headers, HSTS only over TLS, CORS exactly as configured."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from handoffrail_server.db import migrations
from handoffrail_server.main import create_app
from handoffrail_server.settings import load_settings
from tests.conftest import Api, make_settings
from tests.contract.helpers import P, assert_problem

ALLOWED_ORIGIN = "https://app.example"
OTHER_ORIGIN = "https://evil.example"
HSTS = "strict-transport-security"


@asynccontextmanager
async def client_for(
    url: str, base_url: str = "http://testserver", **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for an app built with `overrides` on a migrated database."""
    app = create_app(make_settings(url, **overrides))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=base_url) as client,
    ):
        yield client


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database (CORS and headers do not depend on the backend)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'hardening.db'}"
    migrations.upgrade(url)
    return url


def assert_security_headers(response: httpx.Response) -> None:
    """The app's own security headers (for platforms without Caddy in front)."""
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_security_headers_are_on_success_error_and_health_responses(api: Api) -> None:
    responses = [
        await api.client.get("/health"),
        await api.client.get("/ready"),
        await api.client.get("/metrics"),
        await api.client.get(f"{P}/packets", headers=api.headers()),
        await api.client.get(f"{P}/packets"),  # 401
        await api.client.get("/no/such/route"),  # 404
        await api.client.post(f"{P}/packets", json={}, headers=api.headers()),  # 422
    ]
    for response in responses:
        assert_security_headers(response)
        assert HSTS not in response.headers, response.request.url


async def test_hsts_is_sent_only_over_https(sqlite_url: str) -> None:
    async with client_for(sqlite_url, base_url="https://testserver") as client:
        for path in ("/health", f"{P}/packets", "/no/such/route"):
            response = await client.get(path)
            assert_security_headers(response)
            assert "max-age=" in response.headers[HSTS], path
    async with client_for(sqlite_url, base_url="http://testserver") as client:
        assert HSTS not in (await client.get("/health")).headers


async def test_request_id_is_echoed_when_sane_and_replaced_when_not(api: Api) -> None:
    sane = await api.client.get("/health", headers={"X-Request-ID": "abc-123.def:9"})
    assert sane.headers["x-request-id"] == "abc-123.def:9"
    insane = await api.client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = insane.headers["x-request-id"]
    assert generated != "bad id\twith spaces"
    assert generated
    assert " " not in generated
    fresh = await api.client.get("/health")
    assert fresh.headers["x-request-id"] not in {generated, "abc-123.def:9"}


async def preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await client.options(
        f"{P}/packets",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )


async def test_cors_preflight_is_allowed_only_for_configured_origins(sqlite_url: str) -> None:
    async with client_for(sqlite_url, cors_origins=[ALLOWED_ORIGIN]) as client:
        allowed = await preflight(client, ALLOWED_ORIGIN)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        assert allowed.headers["access-control-allow-credentials"] == "true"

        refused = await preflight(client, OTHER_ORIGIN)
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

        simple = await client.get("/health", headers={"Origin": ALLOWED_ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        foreign = await client.get("/health", headers={"Origin": OTHER_ORIGIN})
        assert "access-control-allow-origin" not in foreign.headers


async def test_no_cors_headers_at_all_without_configured_origins(sqlite_url: str) -> None:
    async with client_for(sqlite_url) as client:
        response = await preflight(client, ALLOWED_ORIGIN)
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code == 405
        assert_problem(response, 405)
        simple = await client.get("/health", headers={"Origin": ALLOWED_ORIGIN})
        assert "access-control-allow-origin" not in simple.headers


async def test_wildcard_cors_never_allows_credentials(sqlite_url: str) -> None:
    async with client_for(sqlite_url, cors_origins=["*"]) as client:
        allowed = await preflight(client, OTHER_ORIGIN)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in allowed.headers
        simple = await client.get(
            "/health", headers={"Origin": OTHER_ORIGIN, "Cookie": "session=1"}
        )
        assert simple.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in simple.headers


async def test_wildcard_cors_from_the_environment_is_parsed_as_a_list(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HR_CORS_ORIGINS", '["*"]')
    settings = load_settings(database_url=sqlite_url, expiry_interval_seconds=0)
    assert settings.cors_origins == ["*"]
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        response = await preflight(client, OTHER_ORIGIN)
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


async def test_oversized_body_is_refused_with_a_problem(api: Api) -> None:
    response = await api.client.post(
        f"{P}/packets",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "request.too_large")
    assert_security_headers(response)
