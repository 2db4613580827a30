"""The sliding-window limiter against real Redis and in memory, including Redis dying mid-test.

Redis tests skip locally when Redis (or the `redis-server` binary) is missing, and fail under CI.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from handoffrail_server.db import migrations
from handoffrail_server.limits import ratelimit
from handoffrail_server.limits.ratelimit import RateLimiter, per_hour, per_minute
from handoffrail_server.main import create_app
from handoffrail_server.observability import metrics
from tests.conftest import (
    IN_CI,
    REDIS_TEST_URL,
    bootstrap_operator_key,
    free_port,
    make_settings,
    packet_body,
    require_redis,
)


def fallback_gauge() -> float:
    """The current value of `handoffrail_rate_limit_fallback`."""
    value = REGISTRY.get_sample_value("handoffrail_rate_limit_fallback")
    assert value is not None
    return value


def unique_prefix() -> str:
    return f"hrtest-{uuid.uuid4().hex[:12]}"


class RedisProcess:
    """A test-owned `redis-server` on its own loopback port, started and stopped by PID."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.2)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL by PID: the server vanishes without closing connections politely."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A running test-owned redis-server; always stopped afterwards."""
    if shutil.which("redis-server") is None:
        message = "redis-server binary not on PATH"
        if IN_CI:
            pytest.fail(message + " (CI must run Redis tests for real)")
        pytest.skip(message)
    server = RedisProcess(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_recheck(monkeypatch: pytest.MonkeyPatch) -> float:
    """Redis is re-probed every 0.2 s instead of every 5 s."""
    monkeypatch.setattr(ratelimit, "RECHECK_SECONDS", 0.2)
    return 0.2


@pytest.fixture
def reset_fallback_gauge() -> Iterator[None]:
    """The gauge is process-wide: leave it at 0 for whoever runs next."""
    metrics.RATE_LIMIT_FALLBACK.set(0)
    yield
    metrics.RATE_LIMIT_FALLBACK.set(0)


@pytest.fixture(params=["redis", "memory"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    """A limiter on shared Redis (unique key prefix) or on process memory."""
    if request.param == "redis":
        require_redis()
        instance = RateLimiter(REDIS_TEST_URL, prefix=unique_prefix())
        assert instance.backend == "redis"
    else:
        instance = RateLimiter(None)
        assert instance.backend == "memory"
    try:
        yield instance
    finally:
        await instance.close()


# -- counting -----------------------------------------------------------------------------------


async def test_the_hit_after_the_limit_is_refused(limiter: RateLimiter) -> None:
    item = per_minute(5)
    decisions = [await limiter.hit(item, "key", "k1") for _ in range(6)]
    assert [decision.allowed for decision in decisions] == [True] * 5 + [False]
    refused = decisions[-1]
    assert refused.remaining == 0
    assert refused.limit == 5
    assert 1 <= refused.retry_after <= 60


async def test_remaining_counts_down_to_zero(limiter: RateLimiter) -> None:
    item = per_minute(4)
    remaining = [(await limiter.hit(item, "key", "countdown")).remaining for _ in range(5)]
    assert remaining == [3, 2, 1, 0, 0]


async def test_reset_after_lies_within_the_window(limiter: RateLimiter) -> None:
    for item, window in ((per_minute(3), 60), (per_hour(3), 3600)):
        for _ in range(4):
            decision = await limiter.hit(item, "window", str(window))
        assert decision.window == window
        assert 0 < decision.reset_after <= window
        assert decision.retry_after == max(1, decision.reset_after)


async def test_identifiers_have_separate_budgets(limiter: RateLimiter) -> None:
    item = per_minute(2)
    for _ in range(2):
        assert (await limiter.hit(item, "key", "a")).allowed
    assert not (await limiter.hit(item, "key", "a")).allowed
    assert (await limiter.hit(item, "key", "b")).allowed
    assert (await limiter.hit(item, "tenant", "a")).allowed, "scope is part of the identity"


async def test_minute_and_hour_limits_of_one_identifier_are_separate(limiter: RateLimiter) -> None:
    for _ in range(2):
        await limiter.hit(per_minute(2), "key", "same")
    assert not (await limiter.hit(per_minute(2), "key", "same")).allowed
    assert (await limiter.hit(per_hour(2), "key", "same")).allowed


async def test_refused_hits_are_not_counted_as_extra_use(limiter: RateLimiter) -> None:
    item = per_minute(3)
    for _ in range(10):
        decision = await limiter.hit(item, "key", "hammer")
    assert not decision.allowed
    assert decision.remaining == 0
    assert decision.reset_after <= 60


async def test_concurrent_hits_never_overshoot(limiter: RateLimiter) -> None:
    item = per_minute(10)
    decisions = await asyncio.gather(*(limiter.hit(item, "key", "burst") for _ in range(40)))
    assert sum(decision.allowed for decision in decisions) == 10


async def test_two_limiters_on_one_redis_share_a_budget() -> None:
    require_redis()
    prefix = unique_prefix()
    first, second = RateLimiter(REDIS_TEST_URL, prefix), RateLimiter(REDIS_TEST_URL, prefix)
    other = RateLimiter(REDIS_TEST_URL, unique_prefix())
    try:
        item = per_minute(4)
        allowed = [
            (await limiter.hit(item, "key", "shared")).allowed
            for limiter in (first, second, first, second, first, second)
        ]
        assert allowed == [True, True, True, True, False, False]
        assert (await other.hit(item, "key", "shared")).allowed, "another prefix, another budget"
    finally:
        for limiter in (first, second, other):
            await limiter.close()


async def test_memory_limiters_do_not_share_a_budget() -> None:
    first, second = RateLimiter(None), RateLimiter(None)
    item = per_minute(1)
    assert (await first.hit(item, "key", "x")).allowed
    assert not (await first.hit(item, "key", "x")).allowed
    assert (await second.hit(item, "key", "x")).allowed


async def test_redis_keys_carry_the_configured_prefix() -> None:
    require_redis()
    prefix = unique_prefix()
    limiter = RateLimiter(REDIS_TEST_URL, prefix)
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        await limiter.hit(per_minute(5), "key", "prefixed")
        keys = [key.decode() for key in client.scan_iter(match=f"{prefix}:*")]
        assert keys
        assert all(key.startswith(f"{prefix}:ratelimit") for key in keys)
        assert any("prefixed" in key for key in keys)
    finally:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
        client.close()
        await limiter.close()


# -- fallback -----------------------------------------------------------------------------------


async def test_unreachable_redis_falls_back_to_memory_without_failing(
    reset_fallback_gauge: None,
) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", unique_prefix())
    try:
        started = time.monotonic()
        decisions = [await limiter.hit(per_minute(2), "key", "nobody") for _ in range(3)]
        assert time.monotonic() - started < 5
        assert [decision.allowed for decision in decisions] == [True, True, False]
        assert limiter.backend == "memory-fallback"
        assert limiter.degraded
        assert fallback_gauge() == 1
    finally:
        await limiter.close()


async def test_fallback_does_not_probe_redis_on_every_request(
    reset_fallback_gauge: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "RECHECK_SECONDS", 60.0)
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", unique_prefix())
    probes = 0
    assert limiter._redis is not None
    real_check = limiter._redis.check

    async def counting_check() -> bool:
        nonlocal probes
        probes += 1
        return await real_check()

    monkeypatch.setattr(limiter._redis, "check", counting_check)
    try:
        for _ in range(20):
            await limiter.hit(per_minute(100), "key", "quiet")
        assert limiter.backend == "memory-fallback"
        assert probes == 0, "within RECHECK_SECONDS the limiter stays on memory without probing"
    finally:
        await limiter.close()


async def test_redis_stopping_mid_test_falls_back_and_recovers(
    own_redis: RedisProcess, fast_recheck: float, reset_fallback_gauge: None
) -> None:
    limiter = RateLimiter(own_redis.url, unique_prefix())
    item = per_minute(100)
    try:
        for expected in (99, 98, 97):
            decision = await limiter.hit(item, "key", "k")
            assert (decision.allowed, decision.remaining) == (True, expected)
        assert limiter.backend == "redis"
        assert fallback_gauge() == 0

        own_redis.kill()

        started = time.monotonic()
        during = [await limiter.hit(item, "key", "k") for _ in range(5)]
        assert all(decision.allowed for decision in during)
        assert time.monotonic() - started < 5, "a dead Redis must not stall requests"
        assert limiter.backend == "memory-fallback"
        assert fallback_gauge() == 1
        # the memory counter starts afresh: the outage costs at most one extra budget
        assert [decision.remaining for decision in during] == [99, 98, 97, 96, 95]

        # limits still hold while on memory
        small = per_minute(2)
        assert [(await limiter.hit(small, "key", "m")).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]

        own_redis.start()
        await asyncio.sleep(fast_recheck * 2)
        decision = await limiter.hit(item, "key", "k")
        assert decision.allowed
        assert limiter.backend == "redis"
        assert not limiter.degraded
        assert fallback_gauge() == 0
        assert decision.remaining == 99, "the restarted Redis (no persistence) counts afresh"
    finally:
        await limiter.close()


async def test_redis_that_stays_down_keeps_the_limiter_on_memory(
    own_redis: RedisProcess, fast_recheck: float, reset_fallback_gauge: None
) -> None:
    limiter = RateLimiter(own_redis.url, unique_prefix())
    try:
        assert (await limiter.hit(per_minute(10), "key", "k")).allowed
        own_redis.kill()
        for _ in range(3):
            await asyncio.sleep(fast_recheck * 1.5)
            assert (await limiter.hit(per_minute(10), "key", "k")).allowed
            assert limiter.backend == "memory-fallback"
        assert fallback_gauge() == 1
    finally:
        await limiter.close()


async def test_app_keeps_serving_when_its_redis_dies(
    own_redis: RedisProcess, fast_recheck: float, reset_fallback_gauge: None, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ratelimit.db'}"
    await asyncio.to_thread(migrations.upgrade, url)
    operator_key = await asyncio.to_thread(bootstrap_operator_key, url)
    settings = make_settings(url, redis_url=own_redis.url, redis_prefix=unique_prefix())
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    headers = {"X-API-Key": operator_key}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        ready = (await client.get("/ready")).json()
        assert (ready["redis"], ready["rate_limit"]) == ("ok", "redis")
        first = await client.get("/api/v1/packets", headers=headers)
        assert first.status_code == 200

        own_redis.kill()

        statuses = []
        for index in range(5):
            response = await client.post(
                "/api/v1/packets", json=packet_body(f"during outage {index}"), headers=headers
            )
            statuses.append(response.status_code)
            assert "X-RateLimit-Remaining" in response.headers
        assert statuses == [201] * 5
        ready = (await client.get("/ready")).json()
        assert ready["status"] == "ready", "Redis is optional for readiness"
        assert (ready["redis"], ready["rate_limit"]) == ("unavailable", "memory-fallback")
        assert fallback_gauge() == 1

        own_redis.start()
        await asyncio.sleep(fast_recheck * 2)
        assert (await client.get("/api/v1/packets", headers=headers)).status_code == 200
        ready = (await client.get("/ready")).json()
        assert (ready["redis"], ready["rate_limit"]) == ("ok", "redis")
        assert fallback_gauge() == 0
