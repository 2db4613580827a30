"""A first end-to-end check through ASGI on both databases."""

from __future__ import annotations

from tests.conftest import Api, packet_body


async def test_created_packet_can_be_read_back(api: Api) -> None:
    created = await api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers())
    assert created.status_code == 201, created.text
    fetched = await api.client.get(f"/api/v1/packets/{created.json()['id']}", headers=api.headers())
    assert fetched.status_code == 200
    assert fetched.json()["context"]["summary"] == "Customer wants a refund"
