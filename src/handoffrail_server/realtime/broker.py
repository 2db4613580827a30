"""Wake-ups for stream readers: "tenant X has new events".

The database log is the source of truth; the broker only shortens the wait. In-process waiters
are woken directly; with Redis, a PUBLISH on `hr:{tenant}:events` wakes readers on every
instance. Without Redis (or while it is down) readers still poll the log, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict

import structlog
from redis.asyncio import Redis

from handoffrail_server.infra import keys

log = structlog.get_logger(__name__)

#: how long one read of the subscription waits for a message before reading again
LISTEN_WAIT_SECONDS = 5.0
#: pause before subscribing again after Redis failed
RESUBSCRIBE_SECONDS = 2.0
#: how long the publisher gathers notifications before one PUBLISH per tenant: bounds the extra
#: delay for readers on other instances, and makes a busy instance publish (and every instance
#: receive) ~100 messages a second instead of one per commit
PUBLISH_LINGER_SECONDS = 0.01


class Broker:
    """Per-tenant wake-up signals, shared across instances through Redis pub/sub when present."""

    def __init__(self, redis: Redis | None, prefix: str = "hr") -> None:
        self._redis = redis
        self._prefix = prefix
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._listener: asyncio.Task[None] | None = None
        self._unpublished: set[str] = set()
        self._publisher: asyncio.Task[None] | None = None
        #: sent as the message, so the listener can skip this instance's own publishes
        self._origin = uuid.uuid4().hex
        #: publishes are failing (logged once when that starts and once when it ends)
        self._publish_failing = False

    def _wake_local(self, tenant_id: str) -> None:
        event = self._events.get(tenant_id)
        if event is not None:
            event.set()

    async def notify(self, tenant_id: str) -> None:
        """Tell every reader of `tenant_id` (on every instance) to look for new events.

        Local readers wake at once. The Redis publish runs in one background task per process
        that gathers the tenants notified within `PUBLISH_LINGER_SECONDS` (one publish per
        tenant per round instead of one per commit), so a writer never waits on Redis.
        """
        self._wake_local(tenant_id)
        if self._redis is None:
            return
        self._unpublished.add(tenant_id)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish())

    async def _publish(self) -> None:
        assert self._redis is not None
        while self._unpublished:
            await asyncio.sleep(PUBLISH_LINGER_SECONDS)
            tenants = sorted(self._unpublished)
            self._unpublished.clear()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for tenant_id in tenants:
                        pipe.publish(keys.stream_channel(self._prefix, tenant_id), self._origin)
                    await pipe.execute()
            except Exception as exc:  # readers fall back to polling; never fail the writer
                if not self._publish_failing:  # once per outage, not every round
                    log.warning("stream.publish_failed", error=type(exc).__name__)
                self._publish_failing = True
            else:
                if self._publish_failing:
                    log.info("stream.publish_recovered")
                self._publish_failing = False

    async def wait(self, tenant_id: str, max_wait: float) -> None:
        """Return when `tenant_id` may have new events, or after `max_wait` seconds."""
        event = self._events[tenant_id]
        # `asyncio.timeout`, not `wait_for`: on 3.11 `wait_for` swallows a cancel that meets
        # the wake-up, and the stream task awaiting this would then never end (gh-86296)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await event.wait()
        event.clear()

    def start(self) -> None:
        """Start listening to Redis for other instances' notifications."""
        if self._redis is not None and self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        assert self._redis is not None
        pattern = keys.stream_channel(self._prefix, "*")
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.psubscribe(pattern)
                    while True:
                        # get_message with its own timeout: `listen()` would read with the
                        # client's 1 s socket timeout and fail after every idle second, and
                        # the subscription would be down most of the time
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=LISTEN_WAIT_SECONDS
                        )
                        if message is None or message.get("type") != "pmessage":
                            continue
                        if _text(message.get("data")) == self._origin:
                            continue  # this instance's readers were woken when it published
                        channel = _text(message["channel"])
                        self._wake_local(keys.tenant_from_stream_channel(self._prefix, channel))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: readers poll; retry the subscription later
                log.warning("stream.listen_failed", error=type(exc).__name__)
                await asyncio.sleep(RESUBSCRIBE_SECONDS)

    async def stop(self) -> None:
        """Send what is still unpublished, then stop the Redis listener."""
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await self._publisher
            self._publisher = None
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
