"""Small helpers shared by the HTTP contract tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Api, packet_body

P = "/api/v1"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    """The response is an RFC 9457 problem document with `status` (and `code`); returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert body["status"] == status
    detail = body["detail"]
    if isinstance(detail, dict):  # the original server's object (CONTRACT.md §2): a 409 claim only
        assert body["code"] == "packet.already_claimed", body
        assert set(detail) == {"message", "claimed_by"}, body
        detail = detail["message"]
    assert isinstance(detail, str)
    assert detail
    assert isinstance(body["title"], str)
    assert isinstance(body["type"], str)
    assert isinstance(body["code"], str)
    assert body["code"]
    if code is not None:
        assert body["code"] == code, body
    return body


async def create_packet(
    api: Api, key: str | None = None, body: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Create a packet (201 expected) and return its JSON."""
    response = await api.client.post(
        f"{P}/packets", json=body or packet_body(**kwargs), headers=api.headers(key)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def claim(
    api: Api, packet_id: str, key: str | None = None, agent_id: str = "worker-1"
) -> httpx.Response:
    """POST /packets/{id}/claim for `agent_id`."""
    return await api.client.post(
        f"{P}/packets/{packet_id}/claim",
        json={"agent_id": agent_id, "agent_name": agent_id.title(), "framework": "pytest"},
        headers=api.headers(key),
    )


async def patch(
    api: Api, packet_id: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    """PATCH /packets/{id}."""
    return await api.client.patch(f"{P}/packets/{packet_id}", json=body, headers=api.headers(key))


async def history(api: Api, packet_id: str, key: str | None = None) -> list[dict[str, Any]]:
    """Event list of a packet (200 expected)."""
    response = await api.client.get(f"{P}/packets/{packet_id}/history", headers=api.headers(key))
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def get_packet(api: Api, packet_id: str, key: str | None = None) -> dict[str, Any]:
    """GET /packets/{id} (200 expected)."""
    response = await api.client.get(f"{P}/packets/{packet_id}", headers=api.headers(key))
    assert response.status_code == 200, response.text
    packet: dict[str, Any] = response.json()
    return packet


HITL = {"required": True, "reason": "Refund above limit", "question": "Approve?"}
