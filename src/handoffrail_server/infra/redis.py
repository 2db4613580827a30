"""The shared Redis client (optional): short timeouts so a Redis outage never stalls requests."""

from __future__ import annotations

from redis.asyncio import Redis

CONNECT_TIMEOUT_SECONDS = 1.0
SOCKET_TIMEOUT_SECONDS = 1.0


def create_redis(url: str | None) -> Redis | None:
    """A Redis client for `url`, or None when Redis is not configured."""
    if not url:
        return None
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    return client
