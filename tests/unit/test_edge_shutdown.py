"""A request the server cancels at shutdown (its graceful timeout ran out) is answered 503."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from handoffrail_server.observability.edge import EdgeMiddleware


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/api/v1/packets", "headers": []}


async def _receive() -> Message:
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def _run_and_cancel(app: Any) -> tuple[asyncio.Task[None], list[Message]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    task = asyncio.create_task(EdgeMiddleware(app, 1024)(_scope(), _receive, send))
    for _ in range(5):  # the app is now parked
        await asyncio.sleep(0)
    task.cancel("Task cancelled, timeout graceful shutdown exceeded")  # as Uvicorn does
    return task, sent


async def test_a_request_cancelled_before_answering_gets_a_503_and_ends() -> None:
    async def stuck(_scope: Scope, _receive: Receive, _send: Send) -> None:
        await asyncio.Event().wait()

    task, sent = await _run_and_cancel(stuck)
    with pytest.raises(asyncio.CancelledError):
        await task  # still cancelled: whoever cancelled it (a timeout too) learns it was
    start, body = sent
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"1"
    assert headers[b"connection"] == b"close"
    assert b"x-request-id" in headers
    problem = json.loads(body["body"])
    assert problem["code"] == "service.shutting_down"
    assert problem["status"] == 503
    assert int(headers[b"content-length"]) == len(body["body"])


async def test_a_request_cancelled_mid_answer_stays_cancelled() -> None:
    async def streaming(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.Event().wait()

    task, sent = await _run_and_cancel(streaming)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [message.get("status") for message in sent] == [200, None]  # nothing added


async def test_a_timeout_around_an_in_process_request_still_fires() -> None:
    async def stuck(_scope: Scope, _receive: Receive, _send: Send) -> None:
        await asyncio.Event().wait()

    async def send(_message: Message) -> None:
        return None

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await EdgeMiddleware(stuck, 1024)(_scope(), _receive, send)


async def test_the_answer_is_built_afresh_for_every_request() -> None:
    async def stuck(_scope: Scope, _receive: Receive, _send: Send) -> None:
        await asyncio.Event().wait()

    answers = []
    for _ in range(2):
        task, sent = await _run_and_cancel(stuck)
        with pytest.raises(asyncio.CancelledError):
            await task
        ids = [value for name, value in sent[0]["headers"] if name == b"x-request-id"]
        assert len(ids) == 1, sent[0]["headers"]  # the shared answer gathered no headers
        answers.append(ids[0])
    assert answers[0] != answers[1]


async def test_a_failing_send_does_not_replace_the_cancel() -> None:
    async def stuck(_scope: Scope, _receive: Receive, _send: Send) -> None:
        await asyncio.Event().wait()

    async def gone(_message: Message) -> None:
        raise OSError("the client hung up")

    task = asyncio.create_task(EdgeMiddleware(stuck, 1024)(_scope(), _receive, gone))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
