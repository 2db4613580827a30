"""Helpers for the real-time stream tests: a Uvicorn server in a thread, an SSE frame reader,
and small REST calls (tenants, keys, packets) against a live server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import packet_body, serve_app

#: every single wait in these tests is bounded by this (seconds) unless a test says otherwise
WAIT = 10.0


@contextmanager
def serve(app: FastAPI, *, log_level: str = "warning") -> Iterator[str]:
    """Run `app` under Uvicorn on a free loopback port (access log off, as in production)."""
    with serve_app(app, log_level=log_level, access_log=False) as base_url:
        yield base_url


@dataclass
class Frame:
    """One SSE frame: the `event:` name, the `id:` (if any) and the decoded JSON data."""

    event: str
    id: str | None
    data: dict[str, Any] = field(default_factory=dict)


class SSEReader:
    """Reads frames off a streaming httpx response, each read bounded by a timeout."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw_lines: list[str] = []
        self._lines = response.aiter_lines()

    async def _frame(self) -> Frame:
        event, event_id, data = "message", None, list[str]()
        async for line in self._lines:
            self.raw_lines.append(line)
            if line == "":
                if data:
                    return Frame(event, event_id, json.loads("\n".join(data)))
                event, event_id, data = "message", None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
        raise EOFError("stream ended")

    async def next(self, timeout: float = WAIT, *, skip_pings: bool = True) -> Frame:
        """The next frame (pings skipped unless asked for)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self._frame()
                if frame.event != "ping" or not skip_pings:
                    return frame

    async def expect_nothing(self, seconds: float) -> None:
        """Assert that no (non-ping) frame arrives within `seconds`."""
        try:
            frame = await self.next(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")


@asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    key: str | None,
    *,
    params: dict[str, str] | list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SSEReader]:
    """GET /events and read the `connected` frame (from then on the start position is fixed)."""
    all_headers = {"X-API-Key": key} if key else {}
    all_headers.update(headers or {})
    pairs = tuple(params.items()) if isinstance(params, dict) else tuple(params or ())
    query = httpx.QueryParams(pairs) if params is not None else None
    async with client.stream("GET", "/events", params=query, headers=all_headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        hello = await reader.next()
        assert hello.event == "connected", hello
        assert hello.data["type"] == "connected", hello
        assert hello.data["connection_id"]
        yield reader


async def new_tenant_key(
    client: httpx.AsyncClient, operator_key: str, tier: str = "business"
) -> tuple[str, str]:
    """A fresh tenant and an admin key of it: (tenant_id, key)."""
    headers = {"X-API-Key": operator_key}
    name = f"stream-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/api/v1/tenants", json={"name": name, "tier": tier}, headers=headers
    )
    assert response.status_code == 201, response.text
    tenant_id = str(response.json()["id"])
    response = await client.post(
        "/api/v1/keys",
        json={"name": "streams", "role": "admin", "tenant_id": tenant_id},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return tenant_id, str(response.json()["key"])


async def create_packet(
    client: httpx.AsyncClient, key: str, *, source: str = "sales-01", target: str = "billing-01"
) -> str:
    """Create a packet; returns its id."""
    response = await client.post(
        "/api/v1/packets",
        json=packet_body(source=source, target=target),
        headers={"X-API-Key": key},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def claim_packet(client: httpx.AsyncClient, key: str, packet_id: str) -> None:
    """Claim a packet as agent `worker-1`."""
    response = await client.post(
        f"/api/v1/packets/{packet_id}/claim",
        json={"agent_id": "worker-1", "agent_name": "Worker"},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 200, response.text


async def set_status(client: httpx.AsyncClient, key: str, packet_id: str, status: str) -> None:
    """PATCH a packet's status."""
    response = await client.patch(
        f"/api/v1/packets/{packet_id}", json={"status": status}, headers={"X-API-Key": key}
    )
    assert response.status_code == 200, response.text


def http_client(base_url: str) -> httpx.AsyncClient:
    """An async client for a live server (no read timeout: reads are bounded per frame)."""
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(WAIT, read=None))


async def ws_recv(ws: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:
    """The next WebSocket message that is not a heartbeat, as a dict."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") != "heartbeat":
                return dict(message)


@asynccontextmanager
async def open_ws(url: str, key: str) -> AsyncIterator[ClientConnection]:
    """A WebSocket on `url` authenticated with `key`, past its `connected` greeting."""
    async with asyncio.timeout(WAIT):
        ws = await connect(url, additional_headers={"X-API-Key": key})
    try:
        hello = await ws_recv(ws)
        assert hello["type"] == "connected", hello
        assert hello["connection_id"], hello
        assert hello["tier"], hello
        yield ws
    finally:
        await ws.close()
