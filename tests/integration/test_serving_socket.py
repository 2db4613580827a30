"""Uvicorn with `HttpProtocol` over real loopback sockets: whatever it holds back, every byte
of every response arrives, in order (infra/serving.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from handoffrail_server.infra.serving import HttpProtocol

BIG = bytes(range(256)) * (4 * 4096)  # 4 MiB: many times the socket's buffer


async def _echo_socket(receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await _echo_socket(receive, send)
        return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = BIG if scope["path"] == "/big" else b"echo:" + body
    headers = [(b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        number = int(probe.getsockname()[1])
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=number, http=HttpProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield number
    finally:
        server.should_exit = True
        await task


async def test_large_concurrent_and_continued_responses_arrive_whole(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/big")).content == BIG
        answers = await asyncio.gather(
            *(client.post("/echo", content=f"n{i}".encode()) for i in range(40))
        )
        assert [answer.text for answer in answers] == [f"echo:n{i}" for i in range(40)]
        continued = await client.post("/echo", content=b"abc", headers={"Expect": "100-continue"})
        assert continued.text == "echo:abc"
        head = await client.head("/echo")
        assert head.status_code == 200
        assert head.content == b""


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"".join(
                f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\np{i}".encode()
                for i in range(5)
            )
        )
        await writer.drain()
        data = b""
        while data.count(b"echo:") < 5:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, data
            data += chunk
        positions = [data.find(f"echo:p{i}".encode()) for i in range(5)]
        assert positions == sorted(positions)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 5
    finally:
        writer.close()


async def test_a_slow_reader_that_hangs_up_leaves_the_server_serving(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    received = 0
    for _ in range(10):
        received += len(await reader.read(1024))
        await asyncio.sleep(0.005)
    writer.close()  # mid-body: the server's write buffer is full and paused
    assert received > 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/big")).content == BIG


async def test_a_websocket_upgraded_from_the_protocol_carries_every_message(port: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/ws") as socket_:
        for number in range(20):
            await socket_.send(f"m{number}")
        answers = [await asyncio.wait_for(socket_.recv(), 5) for _ in range(20)]
    assert answers == [f"echo:m{number}" for number in range(20)]
