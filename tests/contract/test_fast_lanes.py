"""Fast lanes answer exactly as FastAPI's routes do (api/lanes.py, issue 10).

Every case runs against two apps on one database: one with the lanes (`HR_FAST_LANES`, the
default) and one without. Status, content type, headers and body must agree once the values
that differ between any two requests (ids, timestamps, request ids, rate-limit counters) are
masked. A spy on the lanes checks which requests they served themselves and which they handed to
FastAPI, so a lane that silently stopped serving (the speed lost) fails here too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.api import lanes
from handoffrail_server.api.roles import Role
from handoffrail_server.main import create_app
from tests.conftest import Api, bootstrap_operator_key, make_settings, packet_body

P = "/api/v1"
_MASKS = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<hex>"),
)
#: headers whose values differ between any two requests; only their presence is compared
_VOLATILE = {
    "x-request-id",
    "content-length",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "retry-after",
    "date",
}


def _masked(text: str) -> str:
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return text


@dataclass
class Side:
    """One app (with or without lanes) and the keys every case may use."""

    api: Api
    keys: dict[str, str]

    async def send(
        self,
        method: str,
        path: str,
        *,
        key: str = "admin",
        content: bytes | AsyncIterator[bytes] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if key != "none":
            sent["X-API-Key"] = self.keys.get(key, key)
        return await self.api.client.request(
            method, f"{P}{path}", content=content, json=json, headers=sent
        )

    async def new_packet(self, **kwargs: Any) -> str:
        response = await self.send("POST", "/packets", json=packet_body(**kwargs))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def claimed_packet(self) -> str:
        packet_id = await self.new_packet()
        response = await self.send("POST", f"/packets/{packet_id}/claim", json=CLAIM)
        assert response.status_code == 200, response.text
        return packet_id


VALID = json.dumps(packet_body()).encode()
CLAIM = {"agent_id": "worker-1", "agent_name": "Worker", "framework": "pytest"}
Case = Callable[[Side], Awaitable[httpx.Response]]


async def _create(side: Side) -> httpx.Response:
    return await side.send("POST", "/packets", json=packet_body(tags=["a", "b"]))


async def _create_hitl(side: Side) -> httpx.Response:
    hitl = {"required": True, "reason": "approve the refund", "approvers": ["ops"]}
    return await side.send("POST", "/packets", json=packet_body(hitl=hitl))


async def _create_with_parent(side: Side) -> httpx.Response:
    body = packet_body() | {"parent_packet_id": await side.new_packet()}
    return await side.send("POST", "/packets", json=body)


async def _create_unknown_parent(side: Side) -> httpx.Response:
    body = packet_body() | {"parent_packet_id": "00000000-0000-4000-8000-000000000000"}
    return await side.send("POST", "/packets", json=body)


def _raw_create(content: bytes, content_type: str | None = "application/json") -> Case:
    async def case(side: Side) -> httpx.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        return await side.send("POST", "/packets", content=content, headers=headers)

    return case


def _create_as(key: str) -> Case:
    async def case(side: Side) -> httpx.Response:
        return await side.send("POST", "/packets", key=key, json=packet_body())

    return case


async def _create_with_query(side: Side) -> httpx.Response:
    return await side.send("POST", "/packets?dry=1", json=packet_body())


async def _create_too_large(side: Side) -> httpx.Response:
    body = packet_body("x" * 70_000)  # over the free tier's 64 KB
    return await side.send("POST", "/packets", key="free", json=body)


async def _create_chunked_over_the_cap(side: Side) -> httpx.Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"metadata": {}, "context": {"summary": "'
        for _ in range(40):
            yield b"x" * 32_768
        yield b'"}}'

    return await side.send(
        "POST", "/packets", content=chunks(), headers={"Content-Type": "application/json"}
    )


async def _claim_nul_in_path(side: Side) -> httpx.Response:
    return await side.send("POST", "/packets/%00/claim", json=CLAIM)


async def _claim(side: Side) -> httpx.Response:
    return await side.send("POST", f"/packets/{await side.new_packet()}/claim", json=CLAIM)


async def _claim_twice(side: Side) -> httpx.Response:
    packet_id = await side.claimed_packet()
    other = CLAIM | {"agent_id": "worker-2"}
    return await side.send("POST", f"/packets/{packet_id}/claim", json=other)


async def _claim_unknown(side: Side) -> httpx.Response:
    return await side.send(
        "POST", "/packets/00000000-0000-4000-8000-000000000000/claim", json=CLAIM
    )


async def _claim_bad_id(side: Side) -> httpx.Response:
    return await side.send("POST", "/packets/not-a-uuid/claim", json=CLAIM)


async def _claim_as_reader(side: Side) -> httpx.Response:
    path = f"/packets/{await side.new_packet()}/claim"
    return await side.send("POST", path, key="reader", json=CLAIM)


async def _claim_bad_body(side: Side) -> httpx.Response:
    path = f"/packets/{await side.new_packet()}/claim"
    return await side.send("POST", path, json={"agent_name": "nobody"})


async def _patch_progress(side: Side) -> httpx.Response:
    packet_id = await side.claimed_packet()
    body = {"status": "in_progress", "context": {"summary": "started"}}
    return await side.send("PATCH", f"/packets/{packet_id}", json=body)


async def _patch_illegal(side: Side) -> httpx.Response:
    body = {"status": "completed"}
    return await side.send("PATCH", f"/packets/{await side.new_packet()}", json=body)


async def _patch_unknown_status(side: Side) -> httpx.Response:
    body = {"status": "teleported"}
    return await side.send("PATCH", f"/packets/{await side.new_packet()}", json=body)


async def _patch_claim_next_path(side: Side) -> httpx.Response:
    return await side.send("PATCH", "/packets/claim-next", json={"status": "in_progress"})


async def _get(side: Side) -> httpx.Response:
    return await side.send("GET", f"/packets/{await side.claimed_packet()}")


def _get_as(key: str) -> Case:
    async def case(side: Side) -> httpx.Response:
        return await side.send("GET", f"/packets/{await side.new_packet()}", key=key)

    return case


async def _get_unknown(side: Side) -> httpx.Response:
    return await side.send("GET", "/packets/00000000-0000-4000-8000-000000000000")


async def _get_awaiting(side: Side) -> httpx.Response:
    return await side.send("GET", "/packets/awaiting")


async def _get_with_a_body(side: Side) -> httpx.Response:
    path = f"/packets/{await side.new_packet()}"
    return await side.send("GET", path, content=b"{}", headers={"Content-Type": "application/json"})


async def _claim_next(side: Side) -> httpx.Response:
    await side.new_packet(target="lane-target")
    body = {"agent_id": "lane-target", "agent_name": "Lane"}
    return await side.send("POST", "/packets/claim-next", json=body)


async def _claim_next_none(side: Side) -> httpx.Response:
    body = {"agent_id": "nobody-waits-for-me", "agent_name": "Nobody"}
    return await side.send("POST", "/packets/claim-next", json=body)


#: (name, case, served by the lane itself)
CASES: list[tuple[str, Case, bool]] = [
    ("create", _create, True),
    ("create awaiting a human", _create_hitl, True),
    ("create with a parent", _create_with_parent, True),
    ("create with an unknown parent", _create_unknown_parent, True),
    ("create: invalid JSON", _raw_create(b'{"metadata": '), False),
    ("create: empty body", _raw_create(b""), False),
    (
        "create: absurd nesting",
        _raw_create(b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        False,
    ),
    ("create: invalid UTF-8", _raw_create(b'{"metadata": "\xff\xfe"}'), False),
    (
        "create: unpaired surrogate",
        _raw_create(b'{"metadata": {}, "context": {"x": "\\ud800"}}'),
        False,
    ),
    ("create: a list", _raw_create(b"[]"), False),
    ("create: NaN", _raw_create(b'{"metadata": {}, "context": {"x": NaN}}'), False),
    ("create: NUL", _raw_create(b'{"metadata": {}, "context": {"x": "\\u0000"}}'), False),
    ("create: text/plain", _raw_create(VALID, "text/plain"), False),
    ("create: no content type", _raw_create(VALID, None), False),
    ("create: charset", _raw_create(VALID, "application/json; charset=utf-8"), False),
    ("create: +json", _raw_create(VALID, "application/vnd.handoff+json"), False),
    ("create: missing fields", _raw_create(b'{"context": {}}'), False),
    ("create without a key", _create_as("none"), True),
    ("create with a wrong key", _create_as("hr_live_wrong"), True),
    ("create as a reader", _create_as("reader"), True),
    ("create with a query string", _create_with_query, False),
    ("create over the tier's size", _create_too_large, True),
    ("create: chunked body over the cap", _create_chunked_over_the_cap, True),
    ("claim: NUL in the path", _claim_nul_in_path, False),
    ("claim", _claim, True),
    ("claim a claimed packet", _claim_twice, True),
    ("claim an unknown packet", _claim_unknown, True),
    ("claim: not a uuid", _claim_bad_id, False),
    ("claim as a reader", _claim_as_reader, True),
    ("claim: invalid body", _claim_bad_body, False),
    ("patch to in_progress", _patch_progress, True),
    ("patch: illegal transition", _patch_illegal, True),
    ("patch: unknown status", _patch_unknown_status, False),
    ("patch /packets/claim-next", _patch_claim_next_path, False),
    ("get", _get, True),
    ("get as a reader", _get_as("reader"), True),
    ("get without a key", _get_as("none"), True),
    ("get an unknown packet", _get_unknown, True),
    ("get /packets/awaiting (not a uuid)", _get_awaiting, False),
    ("get with a body", _get_with_a_body, False),
    ("claim-next", _claim_next, True),
    ("claim-next: nothing to claim", _claim_next_none, True),
]


async def _side(url: str, operator_key: str, keys: dict[str, str], fast: bool) -> Side:
    app = create_app(make_settings(url, fast_lanes=fast))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return Side(Api(app=app, url=url, operator_key=operator_key, client=client), keys)


@pytest.fixture
async def sides(migrated_url: str) -> AsyncIterator[tuple[Side, Side]]:
    """(with lanes, without lanes) on one database, sharing keys."""
    operator = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    keys = {"admin": operator}
    fast = await _side(migrated_url, operator, keys, fast=True)
    plain = await _side(migrated_url, operator, keys, fast=False)
    async with (
        fast.api.app.router.lifespan_context(fast.api.app),
        plain.api.app.router.lifespan_context(plain.api.app),
        fast.api.client,
        plain.api.client,
    ):
        keys["reader"] = await plain.api.new_key(Role.READER)
        keys["free"] = (await plain.api.new_tenant_admin(tier="free"))[1]
        yield fast, plain


def _comparable(response: httpx.Response) -> dict[str, Any]:
    headers = sorted(
        (name, "<varies>" if name in _VOLATILE else _masked(value))
        for name, value in response.headers.items()
    )
    return {"status": response.status_code, "headers": headers, "body": _masked(response.text)}


@pytest.fixture
def hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths the lanes handed to FastAPI's routes."""
    seen: list[str] = []
    original = lanes.Lane._hand_over

    async def spy(self: lanes.Lane, scope: Any, receive: Any, send: Any) -> None:
        seen.append(str(scope["path"]))
        await original(self, scope, receive, send)

    monkeypatch.setattr(lanes.Lane, "_hand_over", spy)
    return seen


@pytest.mark.parametrize(("name", "case", "served"), CASES, ids=[case[0] for case in CASES])
async def test_a_lane_answers_as_fastapi_does(
    sides: tuple[Side, Side], hand_overs: list[str], name: str, case: Case, served: bool
) -> None:
    fast, plain = sides
    expected = _comparable(await case(plain))
    assert not hand_overs  # the app without lanes has none
    got = _comparable(await case(fast))
    assert got == expected, name
    final_path = hand_overs[-1:] if hand_overs else []
    if served:
        assert not final_path, f"{name}: handed over instead of served"
    else:
        assert final_path, f"{name}: served by the lane, expected a hand-over"


async def test_lanes_are_not_in_the_openapi_document(sides: tuple[Side, Side]) -> None:
    fast, plain = sides
    answers = [await side.api.client.get("/openapi.json") for side in (fast, plain)]
    assert answers[0].json() == answers[1].json()


async def test_a_lane_commits_before_it_answers(sides: tuple[Side, Side]) -> None:
    fast, plain = sides
    packet_id = await fast.new_packet()
    claimed = await fast.send("POST", f"/packets/{packet_id}/claim", json=CLAIM)
    assert claimed.status_code == 200
    read = await plain.send("GET", f"/packets/{packet_id}")
    assert read.json()["status"] == "claimed"
    history = await plain.send("GET", f"/packets/{packet_id}/history")
    assert [event["event_type"] for event in history.json()["events"]] == ["created", "claimed"]


@pytest.mark.parametrize("lanes_on", [True, False], ids=["lane", "fastapi"])
async def test_a_cancel_scope_cancelled_during_the_commit_does_not_interrupt_it(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch, lanes_on: bool
) -> None:
    """As FastAPI shields a dependency's exit, a lane shields the commit from anyio
    cancellation (a middleware's or task group's cancel scope); the request is still cancelled."""
    fast, plain = sides
    side = fast if lanes_on else plain
    packet_id = await side.new_packet()
    original = AsyncSession.commit
    answered = False
    with anyio.CancelScope() as outer:

        async def slow_commit(self: AsyncSession) -> None:
            outer.cancel()
            await asyncio.sleep(0.05)
            await original(self)

        monkeypatch.setattr(AsyncSession, "commit", slow_commit)
        await side.send("POST", f"/packets/{packet_id}/claim", json=CLAIM)
        answered = True
    monkeypatch.undo()
    assert outer.cancelled_caught
    assert not answered
    read = await plain.send("GET", f"/packets/{packet_id}")
    assert read.json()["status"] == "claimed"


async def test_cors_applies_to_what_lanes_serve(migrated_url: str) -> None:
    operator = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    origin = "https://agents.example.com"
    app = create_app(make_settings(migrated_url, cors_origins=[origin]))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        headers = {"X-API-Key": operator, "Origin": origin}
        created = await client.post(f"{P}/packets", json=packet_body(), headers=headers)
        assert created.status_code == 201, created.text
        assert created.headers["access-control-allow-origin"] == origin
        unauthorized = await client.post(
            f"{P}/packets", json=packet_body(), headers={"Origin": origin}
        )
        assert unauthorized.status_code == 401
        assert unauthorized.headers["access-control-allow-origin"] == origin
