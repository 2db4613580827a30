"""The real `handoffrail-sdk` 0.3.0 raises `RateLimitError` with `retry_after` against the app."""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager as ContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from handoffrail.sdk import HandoffRailClient
from handoffrail.sdk.exceptions import HandoffRailError, RateLimitError

from handoffrail_server.limits.service import seconds_until_utc_midnight
from tests.conftest import LiveServer, run_live_server
from tests.contract.sdk_support import async_client, packet, sync_client


def new_tenant_key(server: LiveServer, tier: str = "free") -> str:
    """A fresh tenant of `tier` and its (only) admin key, made with the operator key."""
    headers = {"X-API-Key": server.operator_key}
    with httpx.Client(base_url=server.api_url, headers=headers, timeout=20) as client:
        response = client.post(
            "/tenants", json={"name": f"sdk-{uuid.uuid4().hex[:8]}", "tier": tier}
        )
        assert response.status_code == 201, response.text
        tenant_id = response.json()["id"]
        response = client.post(
            "/keys", json={"name": "sdk", "role": "admin", "tenant_id": tenant_id}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


def away_from_midnight() -> None:
    """Wait out the last seconds of a UTC day so that five creates fall in one day."""
    left = seconds_until_utc_midnight(datetime.now(UTC))
    if left < 20:
        time.sleep(left + 1)


def test_rate_limit_error_is_importable_where_the_sdk_documents_it() -> None:
    import handoffrail.sdk as sdk

    assert sdk.RateLimitError is RateLimitError
    assert issubclass(RateLimitError, HandoffRailError)


def test_sdk_raises_rate_limit_error_after_five_daily_creates_on_free(
    live_server: LiveServer,
) -> None:
    key = new_tenant_key(live_server)
    away_from_midnight()
    with sync_client(live_server, key) as client:
        created = [client.create_packet(packet(f"handoff {index}")) for index in range(5)]
        assert len({item.id for item in created}) == 5
        before = seconds_until_utc_midnight(datetime.now(UTC))
        with pytest.raises(RateLimitError) as caught:
            client.create_packet(packet("the sixth"))
        after = seconds_until_utc_midnight(datetime.now(UTC))
    error = caught.value
    assert error.status_code == 429
    assert error.retry_after is not None
    assert after <= error.retry_after <= before
    assert error.response_body["code"] == "quota.handoffs_per_day"
    assert error.response_body["detail"] == "Daily handoff limit reached for your tier"


def test_sdk_batch_reports_the_packets_past_the_quota(live_server: LiveServer) -> None:
    key = new_tenant_key(live_server)
    away_from_midnight()
    with sync_client(live_server, key) as client:
        result = client.batch_create_packets([packet(f"b{index}") for index in range(7)])
        assert len(result.created) == 5
        assert [error.index for error in result.errors] == [5, 6]
        with pytest.raises(RateLimitError):
            client.create_packet(packet("after the batch"))
        with pytest.raises(RateLimitError) as caught:
            client.batch_create_packets([packet("spent"), packet("already")])
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0


async def test_async_sdk_raises_rate_limit_error_too(live_server: LiveServer) -> None:
    key = new_tenant_key(live_server)
    away_from_midnight()
    async with async_client(live_server, key) as client:
        for index in range(5):
            await client.create_packet(packet(f"async {index}"))
        with pytest.raises(RateLimitError) as caught:
            await client.create_packet(packet("the sixth"))
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


def limited_server(url: str, **overrides: Any) -> ContextManager[LiveServer]:
    """Uvicorn on a free loopback port with its own limit settings."""
    return run_live_server(url, **overrides)


def test_sdk_raises_rate_limit_error_past_the_per_key_limit(migrated_url: str) -> None:
    with limited_server(migrated_url, rate_limit_per_minute=3) as server:
        client: HandoffRailClient
        with sync_client(server) as client:
            for _ in range(3):
                client.list_packets()
            with pytest.raises(RateLimitError) as caught:
                client.list_packets()
    assert caught.value.retry_after is not None
    assert 1 <= caught.value.retry_after <= 60
    assert caught.value.response_body.get("code") == "rate_limit.exceeded"
