"""WebSocket `/ws` against a real Uvicorn (CONTRACT.md §6): the SDK's own client, auth, actions,
per-tier caps, and a shutdown that does not hang on open streams. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from handoffrail.sdk import HandoffRailWSClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from handoffrail_server.main import create_app
from tests.conftest import bootstrap_operator_key, free_port, make_settings
from tests.integration.stream_helpers import (
    WAIT,
    claim_packet,
    create_packet,
    http_client,
    new_tenant_key,
    open_sse,
    open_ws,
    serve,
    ws_recv,
)


@dataclass
class Live:
    base_url: str
    ws_url: str
    operator_key: str


@pytest.fixture
def live(migrated_url: str) -> Iterator[Live]:
    operator_key = bootstrap_operator_key(migrated_url)
    with serve(create_app(make_settings(migrated_url))) as base_url:
        yield Live(base_url, base_url.replace("http://", "ws://") + "/ws", operator_key)


async def _close_code(url: str, headers: dict[str, str] | None = None) -> int | None:
    async with asyncio.timeout(WAIT):
        async with connect(url, additional_headers=headers or {}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_sdk_ws_client_receives_created_and_claimed(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SDK 0.3.0 calls stdlib logger.info(..., url=...): a TypeError whenever INFO is enabled.
    monkeypatch.setattr(logging.getLogger("handoffrail.ws"), "level", logging.WARNING)
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
        received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        claimed: list[dict[str, Any]] = []
        sdk = HandoffRailWSClient(live.ws_url, api_key=key, reconnect=False)

        async def on_event(event: dict[str, Any]) -> None:
            await received.put(event)

        async def on_claimed(event: dict[str, Any]) -> None:
            claimed.append(event)

        sdk.on_event = on_event
        sdk.on_packet_claimed = on_claimed
        runner = asyncio.create_task(sdk.connect())
        try:
            async with asyncio.timeout(WAIT):
                first = await received.get()
            assert first["type"] == "connected"  # the server's start position is now fixed
            packet = await create_packet(client, key)
            await claim_packet(client, key, packet)
            events: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while len(events) < 2:
                    events.append(await received.get())
            assert [(e["type"], e["packet_id"]) for e in events] == [
                ("packet.created", packet),
                ("packet.claimed", packet),
            ]
            assert claimed, "on_packet_claimed was not called"
            assert claimed[0]["packet_id"] == packet
            assert events[1]["data"]["status"] == "claimed"
        finally:
            await sdk.disconnect()
            async with asyncio.timeout(WAIT):
                with contextlib.suppress(Exception):
                    await runner


@pytest.mark.parametrize("how", ["missing", "bad-query", "bad-header"])
async def test_ws_without_a_valid_key_is_closed_1008(live: Live, how: str) -> None:
    bogus = "hr_" + "z" * 43
    if how == "missing":
        code = await _close_code(live.ws_url)
    elif how == "bad-query":
        code = await _close_code(f"{live.ws_url}?api_key={bogus}")
    else:
        code = await _close_code(live.ws_url, {"X-API-Key": bogus})
    assert code == 1008


async def test_ws_actions_and_channel_filtering(live: Live) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
        async with open_ws(f"{live.ws_url}?api_key={key}", key) as ws:
            await ws.send(json.dumps({"action": "ping"}))
            pong = await ws_recv(ws)
            assert pong["type"] == "pong"
            assert pong["timestamp"]
            await ws.send("{not json")
            assert await ws_recv(ws) == {"type": "error", "message": "Invalid JSON"}
            await ws.send(json.dumps({"action": "dance"}))
            assert (await ws_recv(ws))["type"] == "error"

            await ws.send(json.dumps({"action": "subscribe", "channel": "agent:ws-x"}))
            assert await ws_recv(ws) == {"type": "subscribed", "channel": "agent:ws-x"}
            await create_packet(client, key, source="other", target="other-2")
            mine = await create_packet(client, key, source="ws-x")
            event = await ws_recv(ws)
            assert (event["type"], event["packet_id"]) == ("packet.created", mine)

            await ws.send(json.dumps({"action": "unsubscribe", "channel": "agent:ws-x"}))
            assert await ws_recv(ws) == {"type": "unsubscribed", "channel": "agent:ws-x"}
            await ws.send(json.dumps({"action": "subscribe", "channel": "status:claimed"}))
            assert (await ws_recv(ws))["type"] == "subscribed"
            await create_packet(client, key, source="ws-x")  # no longer subscribed to ws-x
            await claim_packet(client, key, mine)
            event = await ws_recv(ws)
            assert (event["type"], event["packet_id"]) == ("packet.claimed", mine)
            with pytest.raises(TimeoutError):
                await ws_recv(ws, timeout=1.5)


async def test_free_tier_second_connection_is_refused(live: Live) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key, tier="free")
        async with open_ws(live.ws_url, key):
            assert await _close_code(live.ws_url, {"X-API-Key": key}) == 1008
            response = await client.get("/events", headers={"X-API-Key": key})
            assert response.status_code == 429
        # After the first closes, the slot frees (SSE and WebSocket share the cap).
        deadline = time.monotonic() + WAIT
        while True:
            try:
                async with open_sse(client, key):
                    assert await _close_code(live.ws_url, {"X-API-Key": key}) == 1008
                    break
            except AssertionError:
                assert time.monotonic() < deadline, "the closed socket's slot was never freed"
                await asyncio.sleep(0.2)


@pytest.mark.parametrize("runner", ["uvicorn", "gunicorn"])
async def test_sigterm_does_not_hang_on_open_streams(
    migrated_url: str, tmp_path: Path, runner: str
) -> None:
    """SIGTERM to a real server process with an SSE stream and a WebSocket open: it exits
    promptly and both clients see the stream end (nothing waits for them to hang up)."""
    operator_key = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    port = free_port()
    env = {
        **os.environ,
        "HR_DATABASE_URL": migrated_url,
        "HR_ENVIRONMENT": "development",
        "HR_EXPIRY_INTERVAL_SECONDS": "0",
        "HR_LOG_LEVEL": "warning",
    }
    worker = "handoffrail_server.infra.serving.UvicornWorker"  # as deploy/gunicorn.conf.py
    bind = ["--bind", f"127.0.0.1:{port}", "-k", worker, "-w", "1"]
    protocol = ["--http", "handoffrail_server.infra.serving:HttpProtocol"]  # as `serve`
    command = {
        "uvicorn": ["-m", "uvicorn", *protocol, "handoffrail_server.asgi:app", "--port", str(port)],
        "gunicorn": ["-m", "gunicorn", *bind, "handoffrail_server.asgi:app"],
    }[runner]
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, *command], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with http_client(base_url) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                assert process.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                await asyncio.sleep(0.2)
            _, key = await new_tenant_key(client, operator_key)
            ws_url = f"ws://127.0.0.1:{port}/ws"
            async with open_sse(client, key) as reader, open_ws(ws_url, key) as ws:
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                with pytest.raises((EOFError, httpx.TransportError)):
                    await reader.next(WAIT)
                with pytest.raises(ConnectionClosed):
                    await ws_recv(ws)
                await asyncio.wait_for(asyncio.to_thread(process.wait), WAIT)
                elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
    print(f"{runner}: SIGTERM with open SSE + WS -> exit in {elapsed:.2f} s")  # noqa: T201 (measured number, shown with -s)
    assert elapsed < 5, (tmp_path / "server.log").read_text()
