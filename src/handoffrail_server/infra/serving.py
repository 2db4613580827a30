"""Uvicorn's HTTP protocol with a response's head and body sent in one system call.

Uvicorn writes a response's status line and headers when the app sends `http.response.start`
and its body when the app sends `http.response.body`: two `transport.write` calls, and on an
idle socket each is a `send()` of its own. On loopback TCP a `send()` also runs the receiver's
half of the TCP stack in the sender's thread: py-spy of `handoffrail serve` under the
benchmark put Uvicorn's `send` at 11 % of a create's server CPU, most of it those two calls
(docs/performance.md, round 12).

`CoalescingTransport` holds a write until the next write on the same connection, which then
goes out together with it (`writelines`: one `writev`), or until the event loop's next turn
(`call_soon`), whichever comes first: a head followed by its body in the same turn is one
system call, and nothing waits longer than the turn it was written in (a streamed response's
head goes out when its task yields). Order is kept: every write passes through the holder.
Closing sends what is held first; aborting drops it, as aborting drops the transport's buffer.

`handoffrail serve` passes `HttpProtocol` to Uvicorn; `deploy/gunicorn.conf.py` names
`UvicornWorker`, which does the same for Gunicorn's workers.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import (  # type: ignore[import-untyped]  # ships no py.typed
    UvicornWorker as _UvicornWorker,
)


class CoalescingTransport:
    """A transport that sends a write together with the next one (see the module's doc)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = bytes(data)  # a bytearray the caller reuses must not change what is sent
            self._loop.call_soon(self._release)
            return
        self._held = None
        self._transport.writelines((held, data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _release(self) -> None:
        held = self._held
        if held is None:
            return
        self._held = None
        if not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, set_protocol, ...
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        wrapped: Any = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(wrapped)


#: seconds a Gunicorn worker keeps for its own clean shutdown (cancelled requests roll back, the
#: app's lifespan closes pools and sends what the broker still holds) before Gunicorn's
#: `graceful_timeout` runs out and the worker is killed
SHUTDOWN_RESERVE_SECONDS = 5


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # an untyped base
    """Gunicorn worker class: `uvicorn_worker.UvicornWorker` with `HttpProtocol`, and open
    requests cancelled `SHUTDOWN_RESERVE_SECONDS` before Gunicorn's graceful timeout."""

    CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, "http": HttpProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        grace = self.cfg.graceful_timeout - SHUTDOWN_RESERVE_SECONDS
        self.config.timeout_graceful_shutdown = max(1, grace)
