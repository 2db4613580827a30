"""Sliding-window rate limits on the `limits` async API, shared through Redis across workers.

Redis is optional. When it is absent or fails, limits fall back to in-process memory (logged
once, shown on /ready and in a metric) and switch back when Redis answers again. No request is
ever failed because Redis is down.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from handoffrail_server.observability import metrics

log = structlog.get_logger(__name__)

RECHECK_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one hit: allowed or not, and the numbers for the headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int  #: seconds until the window frees capacity
    window: int  #: window length in seconds

    @property
    def retry_after(self) -> int:
        """Seconds a refused client should wait."""
        return max(1, self.reset_after)


def per_minute(amount: int) -> RateLimitItem:
    """A limit of `amount` per minute."""
    return RateLimitItemPerMinute(amount)


def per_hour(amount: int) -> RateLimitItem:
    """A limit of `amount` per hour."""
    return RateLimitItemPerHour(amount)


def _redis_storage(url: str, prefix: str) -> RedisStorage:
    scheme_url = url if url.startswith("async+") else f"async+{url}"
    return RedisStorage(
        scheme_url,
        implementation="redispy",
        key_prefix=f"{prefix}:ratelimit",
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )


class RateLimiter:
    """Counts hits per identifier with Redis when healthy, else in memory."""

    def __init__(self, redis_url: str | None, prefix: str = "hr") -> None:
        self._memory = MemoryStorage()
        self._memory_strategy = SlidingWindowCounterRateLimiter(self._memory)
        self._redis = _redis_storage(redis_url, prefix) if redis_url else None
        self._redis_strategy = (
            SlidingWindowCounterRateLimiter(self._redis) if self._redis is not None else None
        )
        self._fallback = False
        self._next_check = 0.0

    @property
    def backend(self) -> str:
        """`redis`, `memory` (no Redis configured) or `memory-fallback` (Redis is down)."""
        if self._redis is None:
            return "memory"
        return "memory-fallback" if self._fallback else "redis"

    @property
    def degraded(self) -> bool:
        """True while Redis is configured but unusable."""
        return self._fallback

    async def _use_redis(self) -> bool:
        if self._redis is None:
            return False
        if not self._fallback:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + RECHECK_SECONDS
        try:
            healthy = await self._redis.check()
        except Exception:  # still down; stay on memory
            healthy = False
        if healthy:
            self._fallback = False
            metrics.RATE_LIMIT_FALLBACK.set(0)
            log.warning("ratelimit.redis_restored")
        return healthy

    def _enter_fallback(self, error: Exception) -> None:
        if not self._fallback:
            log.warning("ratelimit.redis_unavailable", error=type(error).__name__)
        self._fallback = True
        self._next_check = time.monotonic() + RECHECK_SECONDS
        metrics.RATE_LIMIT_FALLBACK.set(1)

    async def hit(self, item: RateLimitItem, *identifiers: str) -> Decision:
        """Count one request against `item` for `identifiers`."""
        if await self._use_redis():
            assert self._redis_strategy is not None
            try:
                return await self._hit(self._redis_strategy, item, identifiers)
            except Exception as exc:  # Redis failed mid-request: fall back, never fail the request
                self._enter_fallback(exc)
        return await self._hit(self._memory_strategy, item, identifiers)

    @staticmethod
    async def _hit(
        strategy: SlidingWindowCounterRateLimiter,
        item: RateLimitItem,
        identifiers: tuple[str, ...],
    ) -> Decision:
        allowed = await strategy.hit(item, *identifiers)
        stats = await strategy.get_window_stats(item, *identifiers)
        window = int(item.get_expiry())
        remaining = max(0, stats.remaining)
        return Decision(
            allowed=allowed,
            limit=item.amount,
            remaining=remaining,
            reset_after=reset_after(stats.reset_time - time.time(), window, remaining),
            window=window,
        )

    async def close(self) -> None:
        """Release storage connections."""
        for storage in (self._redis,):
            if storage is not None:
                await _close(storage)


async def _close(storage: Storage) -> None:
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a broken connection is best effort
            return


def reset_after(seconds: float, window: int, remaining: int) -> int:
    """Whole seconds until capacity frees, within (0, window] while none is left.

    `limits` computes the sliding window's reset as `expires_in % expiry`, which is 0 at the
    exact window boundary, where capacity in fact frees a whole window later."""
    if not math.isfinite(seconds) or seconds <= 0:
        return window if remaining == 0 else 0
    return min(window, math.ceil(seconds))
