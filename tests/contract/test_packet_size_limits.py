"""The tier's packet size over HTTP: the request body, a chained packet as stored, and a tier
raised above the default edge cap (`HR_TIER_QUOTAS`), both backends."""

from __future__ import annotations

from typing import Any

from tests.conftest import packet_body
from tests.contract.helpers import P, assert_problem
from tests.contract.limits_support import KIB, Db, create, serve


async def test_body_over_the_tier_packet_size_is_refused_with_the_limit(db: Db) -> None:
    async with serve(db) as api:
        _, free = await api.new_tenant_admin(tier="free")
        _, pro = await api.new_tenant_admin(tier="pro")
        big = "x" * (65 * KIB)
        refused = await create(api, free, big)
        body = assert_problem(refused, 413)
        assert (body["limit_bytes"], body["tier"]) == (64 * KIB, "free")
        assert (await create(api, pro, big)).status_code == 201
        assert (await create(api, pro, "x" * (257 * KIB))).status_code == 413
        assert (await create(api, free, "x" * (60 * KIB))).status_code == 201


async def test_chains_cannot_grow_a_packet_past_the_tier_size(db: Db) -> None:
    """Each chained packet copies its parent's conversation: the packet as stored, not only
    the request body, must fit the tier's size."""
    turn = {"role": "user", "content": "y" * (25 * KIB)}

    def body(summary: str) -> dict[str, Any]:
        document: dict[str, Any] = packet_body(summary)
        document["context"]["conversation_state"] = [turn]
        return document

    async with serve(db) as api:
        _, free = await api.new_tenant_admin(tier="free")
        parent = await api.client.post(f"{P}/packets", json=body("p"), headers=api.headers(free))
        assert parent.status_code == 201, parent.text
        chain = f"{P}/packets/{parent.json()['id']}/chain"
        child = await api.client.post(chain, json=body("c1"), headers=api.headers(free))
        assert child.status_code == 201, child.text  # two turns, ~50 KiB
        assert len(child.json()["context"]["conversation_state"]) == 2
        grandchild_chain = f"{P}/packets/{child.json()['id']}/chain"
        refused = await api.client.post(
            grandchild_chain, json=body("c2"), headers=api.headers(free)
        )
        problem = assert_problem(refused, 413, "request.too_large")  # three turns, ~75 KiB
        assert (problem["limit_bytes"], problem["tier"]) == (64 * KIB, "free")
        assert problem["detail"].startswith("Chained packet")
        listed = await api.client.get(f"{P}/packets", headers=api.headers(free))
        assert listed.json()["total"] == 2  # nothing written for the refused chain


async def test_a_tier_may_allow_packets_above_one_mebibyte(db: Db) -> None:
    """`HR_TIER_QUOTAS` raising a tier's packet size above the default edge cap takes effect."""
    raised = '{"business": {"max_packet_size": 3145728}}'
    async with serve(db, tier_quotas=raised) as api:
        _, business = await api.new_tenant_admin(tier="business")
        _, pro = await api.new_tenant_admin(tier="pro")
        big = "x" * (2 * 1024 * KIB)
        assert (await create(api, business, big)).status_code == 201
        refused = await create(api, pro, big)
        body = assert_problem(refused, 413)
        assert (body["limit_bytes"], body["tier"]) == (256 * KIB, "pro")
        too_big = await create(api, business, "x" * (3 * 1024 * KIB))
        assert_problem(too_big, 413)
