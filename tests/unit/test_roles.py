"""RBAC rule table (CONTRACT.md §1): minimum role per method and path, default deny."""

from __future__ import annotations

import itertools

import pytest

from handoffrail_server.api.roles import Role, allows, required_role

PACKET_ID = "0b7c6f6e-6f1c-4c55-9a57-0a3b1c2d3e4f"

RULE_TABLE: list[tuple[str, str, Role]] = [
    # admin: keys, tenants, system, any method
    ("GET", "/api/v1/keys", Role.ADMIN),
    ("POST", "/api/v1/keys", Role.ADMIN),
    ("DELETE", "/api/v1/keys/some-key", Role.ADMIN),
    ("POST", "/api/v1/keys/some-key/rotate", Role.ADMIN),
    ("GET", "/api/v1/tenants", Role.ADMIN),
    ("POST", "/api/v1/tenants", Role.ADMIN),
    ("PATCH", "/api/v1/tenants/t1", Role.ADMIN),
    ("GET", "/api/v1/tenants/t1/keys", Role.ADMIN),
    ("GET", "/api/v1/system/health", Role.ADMIN),
    # reader: packet reads
    ("GET", "/api/v1/packets", Role.READER),
    ("HEAD", "/api/v1/packets", Role.READER),
    ("GET", f"/api/v1/packets/{PACKET_ID}", Role.READER),
    ("GET", "/api/v1/packets/search", Role.READER),
    ("GET", "/api/v1/packets/awaiting", Role.READER),
    ("GET", f"/api/v1/packets/{PACKET_ID}/history", Role.READER),
    # agent: claim, claim-next, respond, PATCH
    ("POST", f"/api/v1/packets/{PACKET_ID}/claim", Role.AGENT),
    ("POST", f"/api/v1/packets/{PACKET_ID}/respond", Role.AGENT),
    ("POST", "/api/v1/packets/claim-next", Role.AGENT),
    ("PATCH", f"/api/v1/packets/{PACKET_ID}", Role.AGENT),
    # writer: every other packet route
    ("POST", "/api/v1/packets", Role.WRITER),
    ("POST", "/api/v1/packets/batch", Role.WRITER),
    ("POST", "/api/v1/packets/batch/complete", Role.WRITER),
    ("POST", f"/api/v1/packets/{PACKET_ID}/chain", Role.WRITER),
    ("DELETE", f"/api/v1/packets/{PACKET_ID}", Role.WRITER),
    ("PUT", f"/api/v1/packets/{PACKET_ID}", Role.WRITER),
    ("PATCH", "/api/v1/packets", Role.WRITER),
    # writer: schemas and hooks, any method
    ("GET", "/api/v1/schemas", Role.WRITER),
    ("POST", "/api/v1/schemas", Role.WRITER),
    ("GET", "/api/v1/schemas/s1", Role.WRITER),
    ("GET", "/api/v1/hooks", Role.WRITER),
    ("POST", "/api/v1/hooks", Role.WRITER),
    ("DELETE", "/api/v1/hooks/h1", Role.WRITER),
    ("GET", "/api/v1/hooks/h1/deliveries", Role.WRITER),
    # CONTRACT.md §5 marks the DLQ routes admin-only; they are matched before `hooks*` (writer).
    ("POST", "/api/v1/hooks/dlq/retry-all", Role.ADMIN),
    ("GET", "/api/v1/hooks/dlq", Role.ADMIN),
    # audit: GET reader, anything else writer
    ("GET", "/api/v1/audit", Role.READER),
    ("HEAD", "/api/v1/audit", Role.READER),
    ("POST", "/api/v1/audit", Role.WRITER),
    ("DELETE", "/api/v1/audit", Role.WRITER),
    # dashboard: reader, any method
    ("GET", "/api/v1/dashboard", Role.READER),
    ("GET", "/api/v1/dashboard/stats", Role.READER),
    ("POST", "/api/v1/dashboard/anything", Role.READER),
]

DEFAULT_DENY: list[tuple[str, str]] = [
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/unknown"),
    ("POST", "/api/v1/whatever/else"),
    ("GET", "/api/v1"),
    ("GET", "/"),
    ("GET", ""),
    ("GET", "/api/v1/keysmith"),
    ("GET", "/api/v1/packetsfoo"),
    ("GET", "/api/v2/packets"),
    ("GET", "/prefix/api/v1/packets"),
]


@pytest.mark.parametrize(("method", "path", "role"), RULE_TABLE)
def test_required_role_follows_contract_table(method: str, path: str, role: Role) -> None:
    assert required_role(method, path) is role


@pytest.mark.parametrize(("method", "path"), DEFAULT_DENY)
def test_unmatched_paths_need_admin(method: str, path: str) -> None:
    assert required_role(method, path) is Role.ADMIN


@pytest.mark.parametrize("method", ["get", "Get", "GET"])
def test_method_matching_ignores_case(method: str) -> None:
    assert required_role(method, "/api/v1/packets") is Role.READER


def test_claim_next_needs_agent_not_writer_though_it_is_a_packets_post() -> None:
    assert required_role("POST", "/api/v1/packets/claim-next") is Role.AGENT
    assert required_role("POST", "/api/v1/packets/claim-next/extra") is Role.WRITER


def test_batch_claim_needs_agent_like_a_single_claim_but_batch_complete_needs_writer() -> None:
    # `/packets/{id}/claim` also matches id "batch"; claiming is an agent's job either way.
    assert required_role("POST", "/api/v1/packets/batch/claim") is Role.AGENT
    assert required_role("POST", "/api/v1/packets/batch/complete") is Role.WRITER


def test_nested_packet_paths_do_not_borrow_reader_rule() -> None:
    assert required_role("GET", f"/api/v1/packets/{PACKET_ID}/chain") is Role.WRITER
    assert required_role("GET", f"/api/v1/packets/{PACKET_ID}/history/extra") is Role.WRITER


def test_admin_prefix_wins_over_later_rules_for_every_method() -> None:
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert required_role(method, "/api/v1/keys") is Role.ADMIN


ORDER = [Role.READER, Role.AGENT, Role.WRITER, Role.ADMIN]


@pytest.mark.parametrize(("held", "needed"), list(itertools.product(ORDER, ORDER)))
def test_allows_follows_hierarchy(held: Role, needed: Role) -> None:
    assert allows(held, needed) is (ORDER.index(held) >= ORDER.index(needed))


def test_role_values_are_the_wire_names() -> None:
    assert [role.value for role in ORDER] == ["reader", "agent", "writer", "admin"]
