"""Helpers of the limit and quota contract tests: an app per test with its own settings, and
readers of the rate-limit headers, /metrics and /usage (fixtures: tests/contract/conftest.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from handoffrail_server.clock import Clock, FrozenClock
from handoffrail_server.main import create_app
from tests.conftest import Api, make_settings, packet_body
from tests.contract.helpers import P

RATE_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Tier",
    "RateLimit-Policy",
    "RateLimit",
)
KIB = 1024


@dataclass
class Db:
    """A migrated database (each backend) and its operator key."""

    url: str
    operator_key: str


@asynccontextmanager
async def serve(
    db: Db, *, clock: Clock | None = None, client_ip: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[Api]:
    """One `create_app` instance with its own settings, driven over ASGI from `client_ip`."""
    app = create_app(make_settings(db.url, **overrides), clock=clock)
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(app=app, url=db.url, operator_key=db.operator_key, client=client)


def noon_today() -> FrozenClock:
    """A clock frozen at 12:00 UTC today: no test straddles midnight by accident."""
    return FrozenClock(datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0))


async def metric(api: Api, name: str, **labels: str) -> float:
    """Sum of the samples `name{labels}` scraped from /metrics."""
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_rate_headers(response: httpx.Response, *, limit: int | None = None) -> int:
    """All six rate-limit headers are present and consistent; returns X-RateLimit-Remaining."""
    for name in RATE_HEADERS:
        assert name in response.headers, (name, response.status_code, dict(response.headers))
    shown_limit = int(response.headers["X-RateLimit-Limit"])
    remaining = int(response.headers["X-RateLimit-Remaining"])
    reset = int(response.headers["X-RateLimit-Reset"])
    if limit is not None:
        assert shown_limit == limit
    assert 0 <= remaining <= shown_limit
    policy = re.fullmatch(r'"(minute|hour)";q=(\d+);w=(\d+)', response.headers["RateLimit-Policy"])
    assert policy, response.headers["RateLimit-Policy"]
    assert int(policy[2]) == shown_limit
    window = int(policy[3])
    assert window == {"minute": 60, "hour": 3600}[policy[1]]
    assert 0 <= reset <= window
    current = re.fullmatch(r'"(minute|hour)";r=(\d+);t=(\d+)', response.headers["RateLimit"])
    assert current, response.headers["RateLimit"]
    assert (current[1], int(current[2]), int(current[3])) == (policy[1], remaining, reset)
    return remaining


async def create(api: Api, key: str, summary: str = "x", **kwargs: Any) -> httpx.Response:
    return await api.client.post(
        f"{P}/packets", json=packet_body(summary, **kwargs), headers=api.headers(key)
    )


async def usage(api: Api, key: str) -> dict[str, Any]:
    response = await api.client.get(f"{P}/usage", headers=api.headers(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def patch_tenant(api: Api, tenant_id: str, **changes: Any) -> None:
    response = await api.client.patch(
        f"{P}/tenants/{tenant_id}", json=changes, headers=api.headers()
    )
    assert response.status_code == 200, response.text
