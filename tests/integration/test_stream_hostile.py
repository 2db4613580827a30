"""Hostile or unlucky stream clients against a real Uvicorn: slots that must never leak, odd
`Last-Event-ID` values, key guessing on the stream routes, and parallel connects racing the
per-tier cap. Every wait is bounded."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from handoffrail_server.main import create_app
from handoffrail_server.realtime import router as realtime_router
from tests.conftest import bootstrap_operator_key, make_settings
from tests.integration.stream_helpers import (
    WAIT,
    SSEReader,
    create_packet,
    http_client,
    new_tenant_key,
    open_sse,
    open_ws,
    serve,
    ws_recv,
)

#: failed key attempts per minute and client IP in these tests' app
AUTH_FAILURES = 3
#: `"²".isdigit()` is true but `int("²")` raises; 5000 digits exceed int()'s digit limit
ODD_IDS = ["²", "9" * 5000]
#: `²` as a header value: HTTP header bytes are read as Latin-1 (RFC 9110 §5.5 obs-text)
SUPERSCRIPT_TWO_HEADER = {b"Last-Event-ID": "²".encode("latin-1")}
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Live:
    base_url: str
    ws_url: str
    operator_key: str


@pytest.fixture
def live(migrated_url: str) -> Iterator[Live]:
    operator_key = bootstrap_operator_key(migrated_url)
    settings = make_settings(migrated_url, auth_failures_per_minute=AUTH_FAILURES)
    with serve(create_app(settings)) as base_url:
        yield Live(base_url, base_url.replace("http://", "ws://") + "/ws", operator_key)


async def _close_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Connect, expect the server to close before sending anything: (code, reason)."""
    async with asyncio.timeout(WAIT):
        async with connect(url, additional_headers=headers or {}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def _until_ws_connects(url: str, key: str) -> None:
    """The tenant's slot comes back: a new socket gets its `connected` message."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            async with open_ws(url, key):
                return
        except (AssertionError, ConnectionClosed):
            assert time.monotonic() < deadline, "the tenant's stream slot was never released"
            await asyncio.sleep(0.2)


async def _until_sse_connects(base_url: str, key: str) -> None:
    """The tenant's slot comes back: a new SSE stream gets its `connected` frame (on a fresh
    connection: a request the server failed may have closed the pooled one)."""
    deadline = time.monotonic() + WAIT
    async with http_client(base_url) as client:
        while True:
            try:
                async with open_sse(client, key):
                    return
            except AssertionError:
                assert time.monotonic() < deadline, "the tenant's stream slot was never released"
                await asyncio.sleep(0.2)


def _slow_start(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Delay the start-position lookup of every stream by `seconds` (the server runs in a
    thread of this process, so the patch reaches it)."""
    original = realtime_router._start_id

    async def slow(*args: Any) -> int:
        await asyncio.sleep(seconds)
        return await original(*args)

    monkeypatch.setattr(realtime_router, "_start_id", slow)


# -- slots are always released ------------------------------------------------------------------


async def test_ws_client_gone_right_after_handshake_frees_its_slot(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key, tier="free")
        _slow_start(monkeypatch, 0.5)  # the client is gone before `connected` is sent
        async with asyncio.timeout(WAIT):
            ws = await connect(live.ws_url, additional_headers={"X-API-Key": key})
        await ws.close()
        monkeypatch.undo()
        await _until_ws_connects(live.ws_url, key)
        await _until_sse_connects(live.base_url, key)


@pytest.mark.parametrize("odd", ODD_IDS, ids=["superscript-two", "5000-digits"])
async def test_ws_odd_last_event_id_starts_now_and_frees_its_slot(live: Live, odd: str) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key, tier="free")
        before = await create_packet(client, key)
        url = f"{live.ws_url}?{httpx.QueryParams({'last_event_id': odd})}"
        async with open_ws(url, key) as ws:
            after = await create_packet(client, key)
            event = await ws_recv(ws)
            assert (event["type"], event["packet_id"]) == ("packet.created", after)
            assert before != after
        await _until_ws_connects(live.ws_url, key)
        await _until_sse_connects(live.base_url, key)


# -- odd Last-Event-ID values are treated as absent, never a 500 ---------------------------------


async def _first_event_after_connect(
    response: httpx.Response, client: httpx.AsyncClient, key: str
) -> None:
    """The stream is up, starts at now (an earlier packet is not replayed), and carries the
    next packet."""
    assert response.status_code == 200, (await response.aread()).decode()
    reader = SSEReader(response)
    assert (await reader.next()).event == "connected"
    packet = await create_packet(client, key)
    frame = await reader.next()
    assert frame.data["packet_id"] == packet, frame


@pytest.mark.parametrize("odd", ODD_IDS, ids=["superscript-two", "5000-digits"])
async def test_sse_odd_last_event_id_query_starts_now(live: Live, odd: str) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
        await create_packet(client, key)
        params, headers = {"last_event_id": odd}, {"X-API-Key": key}
        async with client.stream("GET", "/events", params=params, headers=headers) as response:
            await _first_event_after_connect(response, client, key)


async def test_sse_odd_last_event_id_header_starts_now(live: Live) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
        await create_packet(client, key)
        headers = {b"X-API-Key": key.encode(), **SUPERSCRIPT_TWO_HEADER}
        async with client.stream("GET", "/events", headers=headers) as response:
            await _first_event_after_connect(response, client, key)


async def test_dashboard_stream_odd_last_event_id_starts_now(live: Live) -> None:
    async with http_client(live.base_url) as client, http_client(live.base_url) as browser:
        _, key = await new_tenant_key(client, live.operator_key)
        form = await browser.get("/dashboard")
        match = _CSRF.search(form.text)
        assert match is not None, form.text
        data = {"api_key": key, "csrf_token": match.group(1)}
        signed = await browser.post("/dashboard/session", data=data)
        assert signed.status_code == 303, signed.text
        await create_packet(client, key)
        headers = SUPERSCRIPT_TWO_HEADER
        async with browser.stream("GET", "/dashboard/events", headers=headers) as response:
            await _first_event_after_connect(response, client, key)


# -- key guessing on the stream routes ----------------------------------------------------------


async def test_sse_key_guessing_is_throttled_like_rest(live: Live) -> None:
    async with http_client(live.base_url) as client:
        bogus = {"X-API-Key": "hr_" + "g" * 43}
        for _ in range(AUTH_FAILURES):
            assert (await client.get("/events", headers=bogus)).status_code == 401
        throttled = await client.get("/events", headers=bogus)
        assert throttled.status_code == 429, throttled.text
        assert throttled.headers["content-type"].startswith("application/problem+json")
        assert throttled.json()["code"] == "rate_limit.exceeded"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 60
        # One budget per client IP: REST is throttled now too.
        assert (await client.get("/api/v1/packets", headers=bogus)).status_code == 429


async def test_ws_key_guessing_is_throttled_like_rest(live: Live) -> None:
    bogus = {"X-API-Key": "hr_" + "w" * 43}
    for _ in range(AUTH_FAILURES):
        assert await _close_of(live.ws_url, bogus) == (1008, "invalid or missing API key")
    code, reason = await _close_of(live.ws_url, bogus)
    assert (code, reason) == (1008, "too many failed authentication attempts")
    async with http_client(live.base_url) as client:
        assert (await client.get("/events", headers=bogus)).status_code == 429


# -- the per-tier cap holds under parallel connects ---------------------------------------------


async def _status_of_sse(client: httpx.AsyncClient, key: str) -> int:
    async with client.stream("GET", "/events", headers={"X-API-Key": key}) as response:
        return response.status_code


async def test_parallel_sse_connects_never_exceed_the_tier_cap(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key, tier="free")
        _slow_start(monkeypatch, 0.5)  # both requests pass the check before either streams
        statuses = await asyncio.gather(_status_of_sse(client, key), _status_of_sse(client, key))
        assert sorted(statuses) == [200, 429]
        monkeypatch.undo()
        await _until_sse_connects(live.base_url, key)


async def test_sse_slot_is_released_when_the_stream_never_starts(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key, tier="free")

        async def broken(*args: Any) -> int:
            raise RuntimeError("database went away")

        monkeypatch.setattr(realtime_router, "_start_id", broken)
        assert (await client.get("/events", headers={"X-API-Key": key})).status_code == 500
        monkeypatch.undo()
        await _until_sse_connects(live.base_url, key)


# -- odd WebSocket frames get an error message; the connection stays usable ---------------------


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"\x00\x01binary", "Binary frames are not supported"),
        ("[" * 100_000 + "]" * 100_000, "Invalid JSON"),
        ('{"action": "ping", "n": ' + "9" * 5000 + "}", "Invalid JSON"),
    ],
    ids=["binary-frame", "deep-nesting", "5000-digit-number"],
)
async def test_ws_odd_frames_are_answered_and_the_connection_stays_usable(
    live: Live, frame: str | bytes, error: str
) -> None:
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
    async with open_ws(live.ws_url, key) as ws:
        await ws.send(frame)
        assert await ws_recv(ws) == {"type": "error", "message": error}
        await ws.send('{"action": "ping"}')
        assert (await ws_recv(ws))["type"] == "pong"


async def test_ws_subscriptions_per_connection_are_capped(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(realtime_router, "MAX_CHANNELS", 3)
    async with http_client(live.base_url) as client:
        _, key = await new_tenant_key(client, live.operator_key)
    async with open_ws(live.ws_url, key) as ws:
        for n in range(3):
            await ws.send(f'{{"action": "subscribe", "channel": "agent:{n}"}}')
            assert (await ws_recv(ws))["type"] == "subscribed"
        await ws.send('{"action": "subscribe", "channel": "agent:3"}')
        refused = await ws_recv(ws)
        assert refused["type"] == "error"
        assert "at most 3" in refused["message"]
        await ws.send('{"action": "subscribe", "channel": "agent:1"}')  # already held: fine
        assert (await ws_recv(ws))["type"] == "subscribed"
        await ws.send('{"action": "unsubscribe", "channel": "agent:0"}')
        assert (await ws_recv(ws))["type"] == "unsubscribed"
        await ws.send('{"action": "subscribe", "channel": "agent:3"}')
        assert (await ws_recv(ws))["type"] == "subscribed"
