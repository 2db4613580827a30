"""A first end-to-end check through ASGI on both databases."""

from __future__ import annotations

import gc

from handoffrail_server.main import create_app
from tests.conftest import Api, make_settings, packet_body


async def test_created_packet_can_be_read_back(api: Api) -> None:
    created = await api.client.post("/api/v1/packets", json=packet_body(), headers=api.headers())
    assert created.status_code == 201, created.text
    fetched = await api.client.get(f"/api/v1/packets/{created.json()['id']}", headers=api.headers())
    assert fetched.status_code == 200
    assert fetched.json()["context"]["summary"] == "Customer wants a refund"


async def test_the_served_app_collects_young_objects_at_its_threshold(migrated_url: str) -> None:
    """HR_GC_THRESHOLD holds while the app is served and is undone when it stops."""
    before = gc.get_threshold()
    app = create_app(make_settings(migrated_url, gc_threshold=4321))
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == (4321, before[1], before[2])
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
