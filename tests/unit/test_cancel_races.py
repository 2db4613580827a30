"""A waiter cancelled in the same loop turn as its wake-up must still end cancelled.

Python 3.11's `asyncio.wait_for` returns the inner result when the cancel and the completion
meet (gh-86296): a stream task cancelled as an event arrives would loop forever, and the
WebSocket handler awaiting it would hold Uvicorn's shutdown open. These tests meet them on
purpose, for every wait a stream or worker task can be cancelled in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from handoffrail_server.realtime import router
from handoffrail_server.realtime.broker import Broker


async def _cancelled_as_woken(wait: Awaitable[object], wake: Callable[[], None]) -> None:
    task = asyncio.ensure_future(wait)
    await asyncio.sleep(0)  # the task is now parked in its wait
    await asyncio.sleep(0)
    wake()  # the wait's future completes ...
    task.cancel()  # ... and the task is cancelled in the same turn
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task


async def test_broker_wait_cancelled_as_an_event_arrives_ends_cancelled() -> None:
    broker = Broker(None)
    await _cancelled_as_woken(broker.wait("tenant", 30), lambda: broker._wake_local("tenant"))


class _Socket:
    """A WebSocket whose every send waits until the test lets it complete."""

    def __init__(self) -> None:
        self.sent: asyncio.Future[None] | None = None

    async def send_json(self, _data: object) -> None:
        self.sent = asyncio.get_running_loop().create_future()
        await self.sent

    def complete(self) -> None:
        assert self.sent is not None, "the task has not sent yet"
        self.sent.set_result(None)


async def test_ws_heartbeat_cancelled_as_its_send_completes_ends_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(router, "HEARTBEAT_SECONDS", 0)
    socket = _Socket()
    await _cancelled_as_woken(router._ws_heartbeat(socket), socket.complete)  # type: ignore[arg-type]
