"""The stream broker over a real Redis: coalesced publishes, cross-instance wake-ups."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from handoffrail_server.infra import keys
from handoffrail_server.realtime.broker import PUBLISH_LINGER_SECONDS, Broker
from tests.conftest import REDIS_TEST_URL, free_port, require_redis


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    require_redis()
    client = Redis.from_url(REDIS_TEST_URL, socket_timeout=5)
    yield client
    await client.aclose()


async def _messages(client: Redis, pattern: str, seconds: float) -> list[tuple[str, bytes]]:
    seen: list[tuple[str, bytes]] = []
    async with client.pubsub() as pubsub:
        await pubsub.psubscribe(pattern)
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                seen.append((message["channel"].decode(), message["data"]))
    return seen


async def test_commits_are_gathered_into_few_publishes(redis_client: Redis) -> None:
    prefix = f"test-broker-{uuid.uuid4().hex[:8]}"
    broker = Broker(redis_client, prefix)
    listening = asyncio.create_task(_messages(redis_client, f"{prefix}:*", 1.5))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    for _ in range(60):  # a commit every ~2 ms, each followed by a turn of the event loop
        await broker.notify("tenant-a")
        await broker.notify("tenant-b")
        await asyncio.sleep(0.002)
    spent = time.monotonic() - started
    await broker.stop()
    seen = await listening
    per_tenant = {
        tenant: sum(1 for channel, _ in seen if channel == keys.stream_channel(prefix, tenant))
        for tenant in ("tenant-a", "tenant-b")
    }
    rounds = spent / PUBLISH_LINGER_SECONDS
    # at most one publish per tenant per linger round (plus the last), not one per commit (60)
    assert all(1 <= count <= min(rounds + 2, 59) for count in per_tenant.values()), (
        per_tenant,
        rounds,
    )


async def test_other_instances_wake_and_own_publishes_are_skipped(redis_client: Redis) -> None:
    prefix = f"test-broker-{uuid.uuid4().hex[:8]}"
    writer, reader = Broker(redis_client, prefix), Broker(redis_client, prefix)
    writer.start()
    reader.start()
    try:
        await asyncio.sleep(0.3)  # both subscribed
        woken: list[str] = []
        original = writer._wake_local  # count the writer's own wake-ups

        def counting(tenant_id: str) -> None:
            woken.append(tenant_id)
            original(tenant_id)

        writer._wake_local = counting  # type: ignore[method-assign]
        started = time.monotonic()
        waiting = asyncio.create_task(reader.wait("tenant-a", max_wait=5.0))
        await asyncio.sleep(0.05)
        await writer.notify("tenant-a")
        await waiting
        assert time.monotonic() - started < 1.0 + PUBLISH_LINGER_SECONDS
        await asyncio.sleep(0.3)  # the writer's listener has had its own message by now
        assert woken == ["tenant-a"]  # the local wake at notify, none from its own publish
    finally:
        await writer.stop()
        await reader.stop()


async def test_an_outage_is_logged_once_and_its_end_once(redis_client: Redis) -> None:
    prefix = f"test-broker-{uuid.uuid4().hex[:8]}"
    broker = Broker(redis_client, prefix)
    healthy = broker._redis  # put back after the outage
    # nothing listens there; no retries, so each publish round fails at once
    broker._redis = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):  # five publish rounds, each failing
                await broker.notify("tenant-a")
                await asyncio.sleep(PUBLISH_LINGER_SECONDS * 3)
            await broker.stop()
            await broker._redis.aclose()
            broker._redis = healthy
            await broker.notify("tenant-a")
            await broker.stop()
    finally:
        structlog.configure(**saved)
    events = [entry["event"] for entry in logs]
    assert events == ["stream.publish_failed", "stream.publish_recovered"], events
