"""The request counter moves before the client can have its answer."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from starlette.types import Message, Receive, Scope, Send

from handoffrail_server.observability.edge import EdgeMiddleware


def counted(status: str = "200") -> float:
    # a path no route matches is counted under the fixed label "unmatched"
    labels = {"method": "GET", "endpoint": "unmatched", "status_code": status}
    return REGISTRY.get_sample_value("handoffrail_requests_total", labels) or 0.0


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"o", "more_body": True})
    await send({"type": "http.response.body", "body": b"k"})


async def failing(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom")


def scope() -> Scope:
    return {"type": "http", "method": "GET", "path": "/unit-metrics-probe", "headers": []}


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


def test_a_request_is_counted_before_its_last_byte_is_sent() -> None:
    before = counted()
    seen: list[tuple[str, bool, float]] = []

    async def send(message: Message) -> None:
        seen.append((message["type"], bool(message.get("more_body")), counted()))

    asyncio.run(EdgeMiddleware(answer, max_bytes=1024)(scope(), receive, send))
    # headers and the first chunk go out uncounted; the final chunk only after counting
    assert seen == [
        ("http.response.start", False, before),
        ("http.response.body", True, before),
        ("http.response.body", False, before + 1),
    ]
    assert counted() == before + 1


def test_a_request_whose_app_fails_is_counted_once_as_a_500() -> None:
    before = counted("500")

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    with pytest.raises(RuntimeError):
        asyncio.run(EdgeMiddleware(failing, max_bytes=1024)(scope(), receive, send))
    assert counted("500") == before + 1
