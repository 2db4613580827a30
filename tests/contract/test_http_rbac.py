"""The role matrix of CONTRACT.md §1 over HTTP: reader < agent < writer < admin (both DBs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from handoffrail_server.api.roles import RANK, Role
from tests.conftest import Api, packet_body
from tests.contract.helpers import HITL, P, assert_problem, claim, create_packet


@dataclass
class Call:
    """One request and the least role allowed to make it."""

    method: str
    path: str
    body: dict[str, Any] | list[Any] | None
    needs: Role
    ok: int


Builder = Callable[[Api, str], Awaitable[Call]]
CLAIMANT = {"agent_id": "agent-7", "agent_name": "Agent Seven"}


async def _packet(api: Api, writer: str, **kwargs: Any) -> str:
    return str((await create_packet(api, writer, **kwargs))["id"])


async def list_packets(api: Api, writer: str) -> Call:
    return Call("GET", "/packets", None, Role.READER, 200)


async def get_packet(api: Api, writer: str) -> Call:
    return Call("GET", f"/packets/{await _packet(api, writer)}", None, Role.READER, 200)


async def packet_history(api: Api, writer: str) -> Call:
    return Call("GET", f"/packets/{await _packet(api, writer)}/history", None, Role.READER, 200)


async def search(api: Api, writer: str) -> Call:
    return Call("GET", "/packets/search?q=refund", None, Role.READER, 200)


async def awaiting(api: Api, writer: str) -> Call:
    return Call("GET", "/packets/awaiting", None, Role.READER, 200)


async def audit(api: Api, writer: str) -> Call:
    return Call("GET", "/audit", None, Role.READER, 200)


async def claim_packet(api: Api, writer: str) -> Call:
    path = f"/packets/{await _packet(api, writer)}/claim"
    return Call("POST", path, CLAIMANT, Role.AGENT, 200)


async def patch_packet(api: Api, writer: str) -> Call:
    packet_id = await _packet(api, writer)
    assert (await claim(api, packet_id, writer)).status_code == 200
    return Call("PATCH", f"/packets/{packet_id}", {"status": "in_progress"}, Role.AGENT, 200)


async def respond(api: Api, writer: str) -> Call:
    path = f"/packets/{await _packet(api, writer, hitl=HITL)}/respond"
    return Call("POST", path, {"response": "ok", "responded_by": "boss"}, Role.AGENT, 200)


async def claim_next(api: Api, writer: str) -> Call:
    await _packet(api, writer)
    return Call("POST", "/packets/claim-next", CLAIMANT, Role.AGENT, 200)


async def create(api: Api, writer: str) -> Call:
    return Call("POST", "/packets", packet_body(), Role.WRITER, 201)


async def batch_create(api: Api, writer: str) -> Call:
    return Call("POST", "/packets/batch", {"packets": [packet_body()]}, Role.WRITER, 201)


async def batch_claim(api: Api, writer: str) -> Call:
    body = {"packet_ids": [await _packet(api, writer)], **CLAIMANT}
    # `/packets/{id}/claim` matches `batch` as the id, as in the original server: agents batch-claim
    return Call("POST", "/packets/batch/claim", body, Role.AGENT, 200)


async def batch_complete(api: Api, writer: str) -> Call:
    body = {"packet_ids": [await _packet(api, writer)]}
    return Call("POST", "/packets/batch/complete", body, Role.WRITER, 200)


async def chain(api: Api, writer: str) -> Call:
    path = f"/packets/{await _packet(api, writer)}/chain"
    return Call("POST", path, packet_body("next"), Role.WRITER, 201)


async def delete(api: Api, writer: str) -> Call:
    return Call("DELETE", f"/packets/{await _packet(api, writer)}", None, Role.WRITER, 204)


async def create_schema(api: Api, writer: str) -> Call:
    body = {"name": "ticket", "json_schema": {"type": "object"}}
    return Call("POST", "/schemas", body, Role.WRITER, 201)


async def list_schemas(api: Api, writer: str) -> Call:
    return Call("GET", "/schemas", None, Role.WRITER, 200)


async def list_keys(api: Api, writer: str) -> Call:
    return Call("GET", "/keys", None, Role.ADMIN, 200)


async def create_key(api: Api, writer: str) -> Call:
    return Call("POST", "/keys", {"name": "made", "role": "reader"}, Role.ADMIN, 201)


async def list_tenants(api: Api, writer: str) -> Call:
    return Call("GET", "/tenants", None, Role.ADMIN, 200)


ACTIONS: list[Builder] = [
    list_packets,
    get_packet,
    packet_history,
    search,
    awaiting,
    audit,
    claim_packet,
    patch_packet,
    respond,
    claim_next,
    create,
    batch_create,
    batch_claim,
    batch_complete,
    chain,
    delete,
    create_schema,
    list_schemas,
    list_keys,
    create_key,
    list_tenants,
]


@pytest.mark.parametrize("role", list(Role), ids=[role.value for role in Role])
async def test_role_matrix(api: Api, role: Role) -> None:
    tenant_id, _admin = await api.new_tenant_admin()
    writer = await api.new_key(Role.WRITER, tenant_id)
    caller = await api.new_key(role, tenant_id)
    outcomes = []
    for build in ACTIONS:
        call = await build(api, writer)
        response = await api.client.request(
            call.method, f"{P}{call.path}", json=call.body, headers=api.headers(caller)
        )
        allowed = RANK[role] >= RANK[call.needs]
        if allowed:
            assert response.status_code == call.ok, (build.__name__, response.text)
        else:
            problem = assert_problem(response, 403, "auth.insufficient_role")
            assert problem["detail"] == (
                f"Insufficient permissions. Required role: {call.needs.value}, "
                f"current role: {role.value}"
            ), build.__name__
        outcomes.append((build.__name__, response.status_code))
    assert len(outcomes) == len(ACTIONS)


async def test_reader_post_packets_message_is_exact(api: Api) -> None:
    reader = await api.new_key(Role.READER)
    response = await api.client.post(
        f"{P}/packets", json=packet_body(), headers=api.headers(reader)
    )
    problem = assert_problem(response, 403, "auth.insufficient_role")
    assert problem["detail"] == (
        "Insufficient permissions. Required role: writer, current role: reader"
    )


async def test_denied_writes_leave_no_trace(api: Api) -> None:
    reader = await api.new_key(Role.READER)
    agent = await api.new_key(Role.AGENT)
    packet = await create_packet(api)
    for key in (reader, agent):
        for method, path, body in (
            ("POST", "/packets", packet_body("should not exist")),
            ("DELETE", f"/packets/{packet['id']}", None),
            ("POST", f"/packets/{packet['id']}/chain", packet_body("child")),
            ("POST", "/packets/batch", {"packets": [packet_body("nor this")]}),
        ):
            response = await api.client.request(
                method, f"{P}{path}", json=body, headers=api.headers(key)
            )
            assert response.status_code == 403
    listed = await api.client.get(f"{P}/packets", headers=api.headers())
    assert [row["id"] for row in listed.json()["packets"]] == [packet["id"]]
    assert listed.json()["packets"][0]["status"] == "created"


async def test_role_is_checked_before_the_body_is_validated(api: Api) -> None:
    reader = await api.new_key(Role.READER)
    response = await api.client.post(f"{P}/packets", json={}, headers=api.headers(reader))
    assert_problem(response, 403, "auth.insufficient_role")


async def test_admin_keys_of_a_tenant_can_manage_its_own_keys(api: Api) -> None:
    tenant_id, admin = await api.new_tenant_admin()
    made = await api.client.post(
        f"{P}/keys", json={"name": "r", "role": "reader"}, headers=api.headers(admin)
    )
    assert made.status_code == 201
    assert made.json()["role"] == "reader"
    assert made.json()["key"].startswith("hr_")
    assert len(made.json()["key"]) == 46
    assert made.json()["key_prefix"] == made.json()["key"][:8]
    listed = await api.client.get(f"{P}/keys", headers=api.headers(admin))
    assert made.json()["id"] in {key["id"] for key in listed.json()}
    rotated = await api.client.post(
        f"{P}/keys/{made.json()['id']}/rotate", headers=api.headers(admin)
    )
    assert rotated.status_code == 201
    assert rotated.json()["role"] == "reader"
    old = await api.client.get(f"{P}/packets", headers=api.headers(made.json()["key"]))
    assert_problem(old, 403, "auth.key_revoked")
    new = await api.client.get(f"{P}/packets", headers=api.headers(rotated.json()["key"]))
    assert new.status_code == 200
    revoked = await api.client.delete(
        f"{P}/keys/{rotated.json()['id']}", headers=api.headers(admin)
    )
    assert revoked.status_code == 204
    own = await api.client.get(f"{P}/tenants/{tenant_id}", headers=api.headers(admin))
    assert own.status_code == 200


async def test_unknown_role_in_key_creation_is_422(api: Api) -> None:
    response = await api.client.post(
        f"{P}/keys", json={"name": "x", "role": "superuser"}, headers=api.headers()
    )
    assert_problem(response, 422)


async def test_roles_hold_behind_a_root_path(api: Api) -> None:
    """Served under a prefix (`uvicorn --root-path /hr`, a proxy's sub-path), a path's role is
    decided on the path below the prefix, as routing does: a writer may still create."""
    writer = await api.new_key(Role.WRITER)
    reader = await api.new_key(Role.READER)
    transport = httpx.ASGITransport(app=api.app, root_path="/hr")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for query in ("", "?via=fastapi"):  # served by the fast lane, and by FastAPI's route
            created = await client.post(
                f"/hr{P}/packets{query}", json=packet_body(), headers={"X-API-Key": writer}
            )
            assert created.status_code == 201, created.text
        listed = await client.get(f"/hr{P}/packets", headers={"X-API-Key": reader})
        assert listed.status_code == 200, listed.text
        refused = await client.post(
            f"/hr{P}/packets", json=packet_body(), headers={"X-API-Key": reader}
        )
        assert_problem(refused, 403, "auth.insufficient_role")
