"""Root routes `/events` (SSE) and `/ws` (WebSocket) (CONTRACT.md §6), tenant-isolated.

A missing or invalid key is refused (SSE 401, WebSocket close 1008) — the original server's
silent fallback to a default tenant is a hole we do not copy. Keys may come in the `X-API-Key`
header or the `api_key` query parameter (what the SDK's clients send); access logs never carry
query strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse, ServerSentEvent

from handoffrail_server.api.deps import AppState, app_state, throttle_auth_failure
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import AuthenticationFailed, DomainError
from handoffrail_server.keys import service as keys_service
from handoffrail_server.keys.service import Principal
from handoffrail_server.limits.errors import RateLimited
from handoffrail_server.realtime import service
from handoffrail_server.realtime.service import Subscription
from handoffrail_server.realtime.slots import SlotResponse, StreamSlot, reserve

router = APIRouter(tags=["realtime"])
log = structlog.get_logger(__name__)

#: concurrent stream connections per tenant and tier (CONTRACT.md §6)
MAX_CONNECTIONS = {"free": 1, "pro": 5, "business": 25}
HEARTBEAT_SECONDS = 30.0
SEND_TIMEOUT_SECONDS = 5.0
BATCH = 200
#: channels one WebSocket may subscribe to (each kept in memory for the connection's life)
MAX_CHANNELS = 256

_open: dict[str, int] = defaultdict(int)


class TooManyStreams(DomainError):
    """The tenant's tier allows no more concurrent stream connections."""

    code = "stream.too_many_connections"
    status = 429
    title = "Too many requests"


async def _authenticate(state: AppState, key: str | None) -> Principal:
    async with unit_of_work(state.sessions) as session:
        return await keys_service.authenticate(session, key, state.principals)


def _reserve(principal: Principal) -> StreamSlot | None:
    """Take a slot if the tier allows one more stream."""
    return reserve(_open, principal.tenant_id, MAX_CONNECTIONS.get(principal.tier, 1))


def _channels(subscribe: list[str], agent: str | None, status: str | None) -> Subscription:
    channels = {channel for channel in subscribe if channel and len(channel) <= 300}
    if agent:
        channels.add(f"agent:{agent}")
    if status:
        channels.add(f"status:{status}")
    return Subscription(channels=channels)


async def _start_id(state: AppState, tenant_id: str, last_event_id: int | None) -> int:
    if last_event_id is not None:
        return last_event_id
    async with unit_of_work(state.sessions) as session:
        return await service.newest_id(session, tenant_id)


async def _batches(state: AppState, tenant_id: str, after_id: int) -> AsyncIterator[list[Any]]:
    """Yield batches of new events forever, waiting on the broker between empty reads."""
    while True:
        async with unit_of_work(state.sessions) as session:
            batch = await service.read_batch(session, tenant_id, after_id, BATCH)
        events = batch.events
        if events:
            after_id = events[-1].id
            yield events
        if batch.held_back:
            await asyncio.sleep(service.HELD_BACK_RETRY_SECONDS)
        elif len(events) < BATCH:
            assert state.broker is not None
            await state.broker.wait(tenant_id, state.settings.stream_poll_seconds)


@router.get("/events")
async def sse_events(
    request: Request,
    api_key: Annotated[str | None, Query(max_length=128)] = None,
    subscribe: Annotated[list[str] | None, Query(max_length=32)] = None,
    agent: Annotated[str | None, Query(max_length=256)] = None,
    status: Annotated[str | None, Query(max_length=32)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key", max_length=128)] = None,
) -> EventSourceResponse:
    """Server-sent events of the caller's tenant; resumes after `Last-Event-ID`."""
    state = app_state(request)
    try:
        principal = await _authenticate(state, x_api_key or api_key)
    except AuthenticationFailed:
        await throttle_auth_failure(request, state)  # the same per-IP budget as REST
        raise
    slot = _reserve(principal)
    if slot is None:
        cap = MAX_CONNECTIONS.get(principal.tier, 1)
        raise TooManyStreams(f"The {principal.tier} tier allows {cap} concurrent stream(s)")
    try:
        resume = service.parse_last_event_id(
            last_event_id or request.query_params.get("last_event_id")
        )
        after_id = await _start_id(state, principal.tenant_id, resume)
    except BaseException:
        slot.release()
        raise
    subscription = _channels(subscribe or [], agent, status)
    connection_id = uuid.uuid4().hex

    async def frames() -> AsyncIterator[ServerSentEvent]:
        hello = {"type": "connected", "connection_id": connection_id, "message": "connected"}
        yield ServerSentEvent(data=json.dumps(hello), event="connected")
        async for batch in _batches(state, principal.tenant_id, after_id):
            for event in batch:
                if subscription.matches(event):
                    yield ServerSentEvent(
                        data=json.dumps(service.envelope(event)),
                        event=event.event_type,
                        id=str(event.id),
                    )

    def ping() -> ServerSentEvent:
        now = datetime.now(UTC).isoformat()
        return ServerSentEvent(data=json.dumps({"type": "ping", "timestamp": now}), event="ping")

    return SlotResponse(
        frames(),
        slot=slot,
        ping=int(state.settings.stream_heartbeat_seconds),
        ping_message_factory=ping,
        send_timeout=SEND_TIMEOUT_SECONDS,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _ws_reader(websocket: WebSocket, subscription: Subscription) -> None:
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(received.get("code", 1000), received.get("reason"))
        raw = received.get("text")
        if raw is None:  # a binary frame: the protocol is JSON text
            await websocket.send_json(
                {"type": "error", "message": "Binary frames are not supported"}
            )
            continue
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError; > 4,300 digits; deep nesting
            await websocket.send_json({"type": "error", "message": "Invalid JSON"})
            continue
        action = message.get("action") if isinstance(message, dict) else None
        channel = message.get("channel") if isinstance(message, dict) else None
        if action == "ping":
            await websocket.send_json({"type": "pong", "timestamp": datetime.now(UTC).isoformat()})
        elif action in {"subscribe", "unsubscribe"} and isinstance(channel, str) and channel:
            name = channel[:300]
            if action == "unsubscribe":
                subscription.channels.discard(name)
            elif len(subscription.channels) >= MAX_CHANNELS and name not in subscription.channels:
                refusal = f"Too many subscriptions (at most {MAX_CHANNELS} per connection)"
                await websocket.send_json({"type": "error", "message": refusal})
                continue
            else:
                subscription.channels.add(name)
            await websocket.send_json({"type": f"{action}d", "channel": name})
        else:
            await websocket.send_json({"type": "error", "message": "Unknown action"})


async def _ws_pusher(
    websocket: WebSocket, state: AppState, tenant_id: str, after_id: int, subscription: Subscription
) -> None:
    async for batch in _batches(state, tenant_id, after_id):
        for event in batch:
            if subscription.matches(event):
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                    await websocket.send_json(service.envelope(event))


async def _ws_heartbeat(websocket: WebSocket) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        beat = {"type": "heartbeat", "timestamp": datetime.now(UTC).isoformat()}
        async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
            await websocket.send_json(beat)


@router.websocket("/ws")
async def websocket_events(websocket: WebSocket) -> None:
    """WebSocket events of the caller's tenant, with subscribe/unsubscribe/ping actions."""
    state: AppState = websocket.app.state.hr
    key = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
    await websocket.accept()
    try:
        principal = await _authenticate(state, key)
    except DomainError as exc:
        reason = "invalid or missing API key"
        if isinstance(exc, AuthenticationFailed):
            try:
                # Only `client` is read, which a WebSocket has as well as a Request.
                await throttle_auth_failure(websocket, state)
            except RateLimited:
                reason = "too many failed authentication attempts"
        await websocket.close(code=1008, reason=reason)
        return
    slot = _reserve(principal)
    if slot is None:
        await websocket.close(code=1008, reason="too many connections for this tier")
        return
    tasks: list[asyncio.Task[None]] = []
    try:
        # Everything after the slot is taken can fail (client gone, database error): the
        # `finally` below gives it back.
        subscription = Subscription()
        resume = service.parse_last_event_id(websocket.query_params.get("last_event_id"))
        after_id = await _start_id(state, principal.tenant_id, resume)
        await websocket.send_json(
            {
                "type": "connected",
                "connection_id": uuid.uuid4().hex,
                "tier": principal.tier,
                "message": "connected",
            }
        )
        tasks = [
            asyncio.create_task(_ws_reader(websocket, subscription)),
            asyncio.create_task(
                _ws_pusher(websocket, state, principal.tenant_id, after_id, subscription)
            ),
            asyncio.create_task(_ws_heartbeat(websocket)),
        ]
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, TimeoutError):
                log.info("stream.slow_client_dropped", tenant_id=principal.tenant_id)
                with contextlib.suppress(Exception):
                    await websocket.close(code=1008, reason="client too slow")
            elif error is not None and not isinstance(error, WebSocketDisconnect):
                log.warning("stream.websocket_failed", error=type(error).__name__)
                with contextlib.suppress(Exception):
                    await websocket.close(code=1011, reason="internal error")
    except WebSocketDisconnect:
        pass  # gone before `connected` was sent
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        slot.release()
