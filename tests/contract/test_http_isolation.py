"""Tenant isolation over HTTP: another tenant's data is invisible and untouchable (both DBs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from handoffrail_server.api.roles import Role
from tests.conftest import Api, packet_body
from tests.contract.helpers import HITL, P, assert_problem, create_packet, get_packet, history

#: one body that every packet-id route accepts (extra keys are ignored by each model)
UNIVERSAL_BODY: dict[str, Any] = {
    **packet_body("tenant b was here"),
    "status": "failed",
    "agent_id": "intruder",
    "agent_name": "Intruder",
    "response": "approved by intruder",
    "responded_by": "intruder",
    "decisions": [{"id": "d1", "decision": "steal", "rationale": "because"}],
}


def _route_paths(routes: Any) -> Iterator[tuple[str, str]]:
    """(METHOD, path) of every route, looking inside included routers."""
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path is not None and methods:
            yield from ((method, path) for method in methods)
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                inner = getattr(context.original_route, "methods", None) or ()
                yield from ((method, context.path) for method in inner)
        nested = getattr(route, "routes", None)
        if nested:
            yield from _route_paths(nested)


def routes_with(app: FastAPI, placeholder: str) -> list[tuple[str, str]]:
    """Every (METHOD, path template) whose path contains `placeholder`, from app.routes and
    the OpenAPI document (so a route added later is covered without editing this test)."""
    found = {
        (method, path)
        for method, path in _route_paths(app.routes)
        if placeholder in path and method != "HEAD"
    }
    for path, operations in app.openapi().get("paths", {}).items():
        if placeholder in path:
            found.update((method.upper(), path) for method in operations)
    return sorted(found)


@dataclass
class Tenants:
    """Tenant A with data, tenant B with an admin key; both made by the operator."""

    a_id: str
    a_key: str
    a_key_id: str
    b_id: str
    b_key: str
    a_packet: dict[str, Any]
    a_hitl_packet: dict[str, Any]
    a_schema_id: str


async def _setup(api: Api) -> Tenants:
    a_id, a_key = await api.new_tenant_admin()
    b_id, b_key = await api.new_tenant_admin()
    keys = await api.client.get(f"{P}/keys", headers=api.headers(a_key))
    assert keys.status_code == 200
    (a_key_id,) = [key["id"] for key in keys.json()]
    a_packet = await create_packet(
        api, a_key, summary="secret merger plan zebracorn", tags=["secret"], target="shared-agent"
    )
    a_hitl = await create_packet(api, a_key, summary="secret approval zebracorn", hitl=HITL)
    schema = await api.client.post(
        f"{P}/schemas",
        json={"name": "a-only", "json_schema": {"type": "object"}},
        headers=api.headers(a_key),
    )
    assert schema.status_code == 201, schema.text
    return Tenants(a_id, a_key, a_key_id, b_id, b_key, a_packet, a_hitl, str(schema.json()["id"]))


async def test_packet_id_routes_are_discovered_from_the_app(api: Api) -> None:
    routes = routes_with(api.app, "{packet_id}")
    assert len(routes) >= 7
    for expected in (
        ("GET", "/api/v1/packets/{packet_id}"),
        ("PATCH", "/api/v1/packets/{packet_id}"),
        ("DELETE", "/api/v1/packets/{packet_id}"),
        ("POST", "/api/v1/packets/{packet_id}/claim"),
        ("POST", "/api/v1/packets/{packet_id}/respond"),
        ("GET", "/api/v1/packets/{packet_id}/history"),
        ("POST", "/api/v1/packets/{packet_id}/chain"),
    ):
        assert expected in routes


async def test_other_tenants_packet_is_404_on_every_packet_id_route(api: Api) -> None:
    t = await _setup(api)
    routes = routes_with(api.app, "{packet_id}")
    assert routes
    for target in (t.a_packet, t.a_hitl_packet):
        for method, template in routes:
            url = template.replace("{packet_id}", target["id"])
            response = await api.client.request(
                method, url, json=UNIVERSAL_BODY, headers=api.headers(t.b_key)
            )
            problem = assert_problem(response, 404)
            assert problem["code"] == "packet.not_found", (method, template, problem)
            assert "zebracorn" not in response.text
    # A's packets are untouched: same document, only the "created" event.
    for target in (t.a_packet, t.a_hitl_packet):
        assert await get_packet(api, target["id"], t.a_key) == target
        assert [event["event_type"] for event in await history(api, target["id"], t.a_key)] == [
            "created"
        ]


async def test_operator_key_does_not_see_tenant_packets_either(api: Api) -> None:
    t = await _setup(api)
    response = await api.client.get(f"{P}/packets/{t.a_packet['id']}", headers=api.headers())
    assert_problem(response, 404, "packet.not_found")


async def test_other_tenants_lists_search_awaiting_and_audit_stay_empty(api: Api) -> None:
    t = await _setup(api)
    b_packet = await create_packet(api, t.b_key, summary="b's own zebracorn", tags=["secret"])
    reads = [
        ("/packets", {}),
        ("/packets", {"tags": "secret"}),
        ("/packets", {"target_agent": "shared-agent"}),
        ("/packets", {"status": "created,awaiting_human"}),
        ("/packets/search", {"q": "zebracorn"}),
        ("/packets/search", {"q": "secret merger"}),
        ("/packets/awaiting", {}),
    ]
    for path, params in reads:
        response = await api.client.get(f"{P}{path}", params=params, headers=api.headers(t.b_key))
        assert response.status_code == 200, response.text
        ids = {packet["id"] for packet in response.json()["packets"]}
        assert t.a_packet["id"] not in ids, (path, params)
        assert t.a_hitl_packet["id"] not in ids, (path, params)
        assert response.json()["total"] == len(ids), (path, params)
        assert ids <= {b_packet["id"]}
    audit = await api.client.get(
        f"{P}/audit", params={"resource": "packet"}, headers=api.headers(t.b_key)
    )
    assert {entry["packet_id"] for entry in audit.json()["entries"]} == {b_packet["id"]}
    assert audit.json()["total"] == 1
    # Administrative rows B sees are about B's own tenant only (its creation, its key).
    everything = await api.client.get(
        f"{P}/audit", params={"resource": "all"}, headers=api.headers(t.b_key)
    )
    admin_rows = [entry for entry in everything.json()["entries"] if entry["resource"] != "packet"]
    assert admin_rows
    for entry in admin_rows:
        assert entry["resource_id"] != t.a_packet["id"]
        assert entry["packet_id"] == ""
    filtered = await api.client.get(
        f"{P}/audit", params={"packet_id": t.a_packet["id"]}, headers=api.headers(t.b_key)
    )
    assert filtered.json()["entries"] == []
    assert filtered.json()["total"] == 0


async def test_other_tenant_cannot_claim_next_or_batch_touch_packets(api: Api) -> None:
    t = await _setup(api)
    claim_next = await api.client.post(
        f"{P}/packets/claim-next",
        json={"agent_id": "intruder", "agent_name": "Intruder"},
        headers=api.headers(t.b_key),
    )
    assert claim_next.status_code == 204
    ids = [t.a_packet["id"], t.a_hitl_packet["id"]]
    claimed = await api.client.post(
        f"{P}/packets/batch/claim",
        json={"packet_ids": ids, "agent_id": "intruder", "agent_name": "Intruder"},
        headers=api.headers(t.b_key),
    )
    assert claimed.status_code == 200
    assert claimed.json()["claimed"] == []
    assert sorted(error["packet_id"] for error in claimed.json()["errors"]) == sorted(ids)
    completed = await api.client.post(
        f"{P}/packets/batch/complete", json={"packet_ids": ids}, headers=api.headers(t.b_key)
    )
    assert completed.json()["completed"] == []
    parented = await api.client.post(
        f"{P}/packets",
        json={**packet_body(), "parent_packet_id": t.a_packet["id"]},
        headers=api.headers(t.b_key),
    )
    assert_problem(parented, 404, "packet.not_found")
    assert await get_packet(api, t.a_packet["id"], t.a_key) == t.a_packet


async def test_other_tenants_schema_is_invisible_and_unusable(api: Api) -> None:
    t = await _setup(api)
    schema_routes = routes_with(api.app, "{schema_id}")
    assert schema_routes
    for method, template in schema_routes:
        url = template.replace("{schema_id}", t.a_schema_id)
        response = await api.client.request(method, url, headers=api.headers(t.b_key))
        assert_problem(response, 404)
    listed = await api.client.get(f"{P}/schemas", headers=api.headers(t.b_key))
    assert listed.json()["schemas"] == []
    assert listed.json()["total"] == 0
    using = await api.client.post(
        f"{P}/packets",
        json={**packet_body(), "schema_id": t.a_schema_id},
        headers=api.headers(t.b_key),
    )
    assert_problem(using, 422)


async def test_tenant_admin_cannot_manage_another_tenant(api: Api) -> None:
    t = await _setup(api)
    b = api.headers(t.b_key)
    for target in (t.a_id, "default"):
        for method, path, body in (
            ("GET", f"/tenants/{target}", None),
            ("PATCH", f"/tenants/{target}", {"name": "hijacked"}),
            ("PATCH", f"/tenants/{target}", {"tier": "business"}),
            ("DELETE", f"/tenants/{target}", None),
            ("GET", f"/tenants/{target}/keys", None),
            ("POST", "/keys", {"name": "sneaky", "role": "admin", "tenant_id": target}),
        ):
            response = await api.client.request(method, f"{P}{path}", json=body, headers=b)
            problem = assert_problem(response, response.status_code)
            assert (response.status_code, problem["code"]) in {
                (403, "auth.operator_required"),
                (404, "tenant.not_found"),
            }, (method, path, problem)
    created = await api.client.post(f"{P}/tenants", json={"name": "b-made"}, headers=b)
    assert_problem(created, 403, "auth.operator_required")
    tenants = await api.client.get(f"{P}/tenants", headers=b)
    assert [tenant["id"] for tenant in tenants.json()] == [t.b_id]
    # A is unchanged and its admin key still works.
    a_view = await api.client.get(f"{P}/tenants/{t.a_id}", headers=api.headers(t.a_key))
    assert a_view.status_code == 200
    assert a_view.json()["name"] != "hijacked"
    assert a_view.json()["deleted_at"] is None


async def test_tenant_admin_cannot_revoke_or_rotate_or_list_another_tenants_keys(
    api: Api,
) -> None:
    t = await _setup(api)
    b = api.headers(t.b_key)
    key_routes = routes_with(api.app, "{key_id}")
    assert key_routes
    for method, template in key_routes:
        url = template.replace("{key_id}", t.a_key_id)
        assert_problem(await api.client.request(method, url, headers=b), 404, "key.not_found")
    listed = await api.client.get(f"{P}/keys", headers=b)
    assert t.a_key_id not in {key["id"] for key in listed.json()}
    assert all(key["tenant_id"] == t.b_id for key in listed.json())
    assert all(key["key"] is None for key in listed.json())
    still = await api.client.get(f"{P}/packets", headers=api.headers(t.a_key))
    assert still.status_code == 200


async def test_keys_made_by_a_tenant_admin_land_in_its_own_tenant(api: Api) -> None:
    t = await _setup(api)
    made = await api.client.post(
        f"{P}/keys", json={"name": "b-writer", "role": "writer"}, headers=api.headers(t.b_key)
    )
    assert made.status_code == 201
    assert made.json()["tenant_id"] == t.b_id
    writer = made.json()["key"]
    mine = await create_packet(api, writer)
    listed = await api.client.get(f"{P}/packets", headers=api.headers(t.a_key))
    assert mine["id"] not in {packet["id"] for packet in listed.json()["packets"]}


async def test_deleted_tenant_keys_stop_working(api: Api) -> None:
    tenant_id, key = await api.new_tenant_admin()
    writer = await api.new_key(Role.WRITER, tenant_id)
    packet = await create_packet(api, writer)
    deleted = await api.client.delete(f"{P}/tenants/{tenant_id}", headers=api.headers())
    assert deleted.status_code == 204
    for plain in (key, writer):
        response = await api.client.get(f"{P}/packets/{packet['id']}", headers=api.headers(plain))
        assert_problem(response, 401)
    gone = await api.client.get(f"{P}/tenants/{tenant_id}", headers=api.headers())
    assert_problem(gone, 404, "tenant.not_found")


async def test_random_ids_are_404_for_everyone(api: Api) -> None:
    _tenant, key = await api.new_tenant_admin()
    for placeholder in ("{packet_id}", "{schema_id}", "{key_id}"):
        for method, template in routes_with(api.app, placeholder):
            url = template.replace(placeholder, str(uuid.uuid4()))
            response = await api.client.request(
                method, url, json=UNIVERSAL_BODY, headers=api.headers(key)
            )
            assert_problem(response, 404)
