"""A response's head and body leave in one system call (infra/serving.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import uvicorn
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger as GunicornLogger
from uvicorn.server import ServerState

from handoffrail_server.infra.serving import CoalescingTransport, HttpProtocol, UvicornWorker


class Recorder(asyncio.Transport):
    """A transport that records what reaches the socket: one entry per system call."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:  # one writev
        self.sent.append(b"".join(bytes(item) for item in list_of_data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _turn() -> None:
    await asyncio.sleep(0)


def _pair() -> tuple[Recorder, CoalescingTransport]:
    """A recording transport and the coalescing transport in front of it."""
    raw = Recorder()
    return raw, CoalescingTransport(raw, asyncio.get_running_loop())


async def test_a_write_followed_by_another_in_the_same_turn_leaves_with_it() -> None:
    raw, transport = _pair()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.sent == []
    assert transport.get_write_buffer_size() == 7 + 19
    transport.write(b"body")
    assert raw.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    await _turn()
    assert raw.sent == [b"HTTP/1.1 200 OK\r\n\r\nbody"]  # nothing left to release


async def test_a_lone_write_leaves_at_the_next_turn_and_order_is_kept() -> None:
    raw, transport = _pair()
    transport.write(b"head")
    await _turn()
    assert raw.sent == [b"head"]
    transport.writelines([b"a", b"b"])
    transport.write(b"c")
    transport.write(b"d")
    await _turn()
    assert raw.sent == [b"head", b"abc", b"d"]
    transport.write(b"")
    await _turn()
    assert raw.sent == [b"head", b"abc", b"d"]


async def test_a_reused_buffer_does_not_change_what_is_sent() -> None:
    raw, transport = _pair()
    buffer = bytearray(b"first")
    transport.write(buffer)
    buffer[:] = b"XXXXX"
    await _turn()
    assert raw.sent == [b"first"]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    raw, transport = _pair()
    transport.write(b"last words")
    transport.close()
    assert raw.sent == [b"last words"]
    assert raw.closed
    await _turn()
    assert raw.sent == [b"last words"]

    raw, transport = _pair()
    transport.write(b"held")
    transport.write_eof()
    assert raw.sent == [b"held"]
    assert raw.eof

    raw, transport = _pair()
    transport.write(b"dropped")
    transport.abort()
    await _turn()
    assert raw.sent == []
    assert raw.aborted


async def test_a_connection_closed_meanwhile_gets_nothing_more() -> None:
    raw, transport = _pair()
    transport.write(b"late")
    raw.closed = True  # the peer went away before the turn ended
    await _turn()
    assert raw.sent == []
    assert transport.is_closing()  # everything else is the transport's own
    assert transport.get_extra_info("peername") == ("127.0.0.1", 50000)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.01)  # a stream yields between its head and its first event
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _protocol(app: Any) -> tuple[HttpProtocol, Recorder]:
    config = uvicorn.Config(app=app, http=HttpProtocol, log_level="warning", access_log=False)
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    raw = Recorder()
    protocol.connection_made(raw)
    return protocol, raw


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out")


@pytest.mark.parametrize("requests", [1, 3])
async def test_uvicorn_sends_each_response_in_one_write(requests: int) -> None:
    protocol, raw = _protocol(_app)
    for number in range(requests):
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await _until(lambda number=number: len(raw.sent) == number + 1)
        await _turn()
    assert len(raw.sent) == requests  # head and body of each: one system call
    for sent in raw.sent:
        assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
        assert sent.endswith(b'\r\n\r\n{"ok":true}')
    protocol.connection_lost(None)


async def test_a_streamed_head_is_not_held_back_until_its_body() -> None:
    protocol, raw = _protocol(_streaming_app)
    protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await _until(lambda: len(raw.sent) >= 1)
    assert raw.sent[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"data: 1" not in raw.sent[0]  # the head left while the app waited
    await _until(lambda: b"0\r\n\r\n" in b"".join(raw.sent))
    assert b"data: 1\n\n" in b"".join(raw.sent)
    protocol.connection_lost(None)


def test_the_gunicorn_worker_serves_with_the_same_protocol() -> None:
    assert UvicornWorker.CONFIG_KWARGS["http"] is HttpProtocol
    assert UvicornWorker.CONFIG_KWARGS["loop"] == "auto"


@pytest.mark.parametrize(("graceful", "cancel_after"), [(30, 25), (12, 7), (3, 1), (0, 1)])
def test_the_gunicorn_worker_cancels_open_requests_before_gunicorn_kills_it(
    graceful: int, cancel_after: int
) -> None:
    cfg = GunicornConfig()
    cfg.set("graceful_timeout", graceful)
    worker = UvicornWorker(0, os.getpid(), [], None, 30, cfg, GunicornLogger(cfg))
    try:
        assert worker.config.timeout_graceful_shutdown == cancel_after
        assert worker.config.http is HttpProtocol
    finally:
        worker.tmp.close()
