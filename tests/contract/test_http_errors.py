"""Every error is an RFC 9457 problem document with a stable `code` (CONTRACT.md §2)."""

from __future__ import annotations

import uuid

import pytest

from handoffrail_server.api.roles import Role
from tests.conftest import Api, packet_body
from tests.contract.helpers import HITL, P, assert_problem, claim, create_packet, patch

# -- authentication ---------------------------------------------------------------------------


async def test_missing_api_key_is_401_problem_with_missing_key_code(api: Api) -> None:
    response = await api.client.get(f"{P}/packets")
    body = assert_problem(response, 401, "auth.missing_key")
    assert body["detail"] == "Missing X-API-Key header"


@pytest.mark.parametrize(
    "key",
    ["garbage", "hr_" + "A" * 43, "hr_" + "A" * 42, "hr_" + "A" * 44, " ", "hr_\u00e9" + "A" * 42],
    ids=["garbage", "well-formed-unknown", "short", "long", "blank", "non-ascii"],
)
async def test_unknown_or_malformed_api_key_is_401_invalid_key(api: Api, key: str) -> None:
    response = await api.client.get(f"{P}/packets", headers={b"X-API-Key": key.encode()})
    body = assert_problem(response, 401)
    assert body["code"] in {"auth.invalid_key", "auth.missing_key"}
    if body["code"] == "auth.invalid_key":
        assert body["detail"] == "Invalid API key"


async def test_revoked_key_is_403_with_revoked_code_and_stays_revoked(api: Api) -> None:
    made = await api.client.post(
        f"{P}/keys", json={"name": "short-lived", "role": "writer"}, headers=api.headers()
    )
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    assert (await api.client.get(f"{P}/packets", headers=api.headers(key))).status_code == 200

    revoked = await api.client.delete(f"{P}/keys/{key_id}", headers=api.headers())
    assert revoked.status_code == 204

    for _ in range(2):
        response = await api.client.get(f"{P}/packets", headers=api.headers(key))
        body = assert_problem(response, 403, "auth.key_revoked")
        assert body["detail"] == "API key has been revoked"
    again = await api.client.delete(f"{P}/keys/{key_id}", headers=api.headers())
    assert_problem(again, 409, "key.already_revoked")


# -- packets ----------------------------------------------------------------------------------


async def test_unknown_packet_is_404_naming_the_id(api: Api) -> None:
    missing = uuid.uuid4()
    response = await api.client.get(f"{P}/packets/{missing}", headers=api.headers())
    body = assert_problem(response, 404, "packet.not_found")
    assert body["detail"] == f"Packet {missing} not found"


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/claim"),
        ("POST", "/respond"),
        ("GET", "/history"),
        ("POST", "/chain"),
    ],
)
async def test_non_uuid_packet_id_is_422_not_404(api: Api, method: str, suffix: str) -> None:
    response = await api.client.request(
        method, f"{P}/packets/not-a-uuid{suffix}", json={}, headers=api.headers()
    )
    assert_problem(response, 422, "request.validation_failed")


async def test_illegal_transition_is_400_naming_allowed_targets(api: Api) -> None:
    packet = await create_packet(api)
    response = await patch(api, packet["id"], {"status": "completed"})
    body = assert_problem(response, 400, "packet.illegal_transition")
    assert body["detail"] == (
        "Cannot transition from 'created' to 'completed'. "
        "Allowed transitions from 'created': ['awaiting_human', 'claimed', 'expired', 'failed']"
    )


async def test_completing_straight_after_claim_is_400(api: Api) -> None:
    packet = await create_packet(api)
    assert (await claim(api, packet["id"])).status_code == 200
    response = await patch(api, packet["id"], {"status": "completed"})
    body = assert_problem(response, 400, "packet.illegal_transition")
    assert body["detail"].startswith("Cannot transition from 'claimed' to 'completed'.")


async def test_second_claim_is_409_with_the_holder(api: Api) -> None:
    packet = await create_packet(api)
    assert (await claim(api, packet["id"], agent_id="first")).status_code == 200
    response = await claim(api, packet["id"], agent_id="second")
    body = assert_problem(response, 409, "packet.already_claimed")
    holder = {"id": "first", "name": "First", "framework": "pytest"}
    # the original server's shape, which its clients read (CONTRACT.md §2), and a member
    assert body["detail"] == {
        "message": f"Packet {packet['id']} is already claimed by agent 'first' (First)",
        "claimed_by": holder,
    }
    assert body["claimed_by"] == holder


async def test_claiming_a_soft_deleted_packet_is_410(api: Api) -> None:
    packet = await create_packet(api)
    deleted = await api.client.delete(f"{P}/packets/{packet['id']}", headers=api.headers())
    assert deleted.status_code == 204
    assert deleted.content == b""
    body = assert_problem(await claim(api, packet["id"]), 410, "packet.expired")
    assert body["detail"] == f"Packet {packet['id']} has expired"


async def test_deleting_twice_is_409(api: Api) -> None:
    packet = await create_packet(api)
    url = f"{P}/packets/{packet['id']}"
    assert (await api.client.delete(url, headers=api.headers())).status_code == 204
    response = await api.client.delete(url, headers=api.headers())
    assert_problem(response, 409, "packet.already_expired")


async def test_respond_when_not_awaiting_human_is_409(api: Api) -> None:
    packet = await create_packet(api)
    response = await api.client.post(
        f"{P}/packets/{packet['id']}/respond",
        json={"response": "yes", "responded_by": "alice"},
        headers=api.headers(),
    )
    assert_problem(response, 409, "packet.not_awaiting_human")


async def test_respond_on_packet_without_hitl_checkpoint_is_400(api: Api) -> None:
    packet = await create_packet(api)
    moved = await patch(api, packet["id"], {"status": "awaiting_human"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["hitl"] is None
    response = await api.client.post(
        f"{P}/packets/{packet['id']}/respond",
        json={"response": "yes", "responded_by": "alice"},
        headers=api.headers(),
    )
    assert_problem(response, 400, "packet.no_hitl")


@pytest.mark.parametrize(
    "cursor", ["garbage", "e30", "eyJjcmVhdGVkX2F0IjogIngiLCAiaWQiOiAieSJ9", "!!!", "\u00e9\u00e9"]
)
async def test_bad_cursor_is_400_invalid_cursor(api: Api, cursor: str) -> None:
    await create_packet(api)
    response = await api.client.get(
        f"{P}/packets", params={"cursor": cursor}, headers=api.headers()
    )
    body = assert_problem(response, 400, "pagination.invalid_cursor")
    assert body["detail"] == "Invalid cursor"


EDGE_INSTANTS = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.mark.parametrize("path", ["/packets", "/audit", "/audit/export"])
@pytest.mark.parametrize("bound", ["created_after", "created_before"])
async def test_time_bounds_beyond_the_representable_years_are_clamped(
    api: Api, path: str, bound: str
) -> None:
    """An instant outside the years 1-9999 in UTC selects as the first or last one would."""
    await create_packet(api)
    for instant in EDGE_INSTANTS:
        response = await api.client.get(
            f"{P}{path}", params={bound: instant}, headers=api.headers()
        )
        if response.status_code == 403:  # the export is a Business feature
            assert_problem(response, 403, "quota.audit_export")
            continue
        assert response.status_code == 200, response.text
    before_start = await api.client.get(
        f"{P}/packets", params={"created_after": EDGE_INSTANTS[0]}, headers=api.headers()
    )
    assert before_start.json()["total"] == 1
    after_end = await api.client.get(
        f"{P}/packets", params={"created_before": EDGE_INSTANTS[1]}, headers=api.headers()
    )
    assert after_end.json()["total"] == 1


PAGING_ERRORS = [
    {"limit": "0"},
    {"limit": "201"},
    {"offset": "-1"},
    {"limit": "x"},
    {"offset": str(10**12)},
]


@pytest.mark.parametrize("path", ["/packets", "/packets/awaiting", "/audit", "/schemas"])
async def test_out_of_range_paging_params_are_422(api: Api, path: str) -> None:
    for params in PAGING_ERRORS:
        response = await api.client.get(f"{P}{path}", params=params, headers=api.headers())
        body = assert_problem(response, 422, "request.validation_failed")
        assert body["field"] == next(iter(params))


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "201"}, {"offset": "-1"}, {"q": "a"}, {}]
)
async def test_bad_search_params_are_422(api: Api, params: dict[str, str]) -> None:
    query = {"q": "refund", **params}
    if not params:
        query = {}
    response = await api.client.get(f"{P}/packets/search", params=query, headers=api.headers())
    assert_problem(response, 422)


@pytest.mark.parametrize("path", ["/packets", "/packets/search?q=refund"])
async def test_unknown_status_filter_is_422(api: Api, path: str) -> None:
    separator = "&" if "?" in path else "?"
    response = await api.client.get(
        f"{P}{path}{separator}status=created,bogus", headers=api.headers()
    )
    body = assert_problem(response, 422, "packet.invalid_filter")
    assert "bogus" in body["detail"]


async def test_unknown_priority_filter_is_422(api: Api) -> None:
    response = await api.client.get(
        f"{P}/packets", params={"priority": "urgent"}, headers=api.headers()
    )
    assert_problem(response, 422, "request.validation_failed")


# -- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/packets/x/y/z", "/nothing-here"])
async def test_unknown_route_is_404_problem(api: Api, path: str) -> None:
    for headers in ({}, api.headers()):
        response = await api.client.get(path, headers=headers)
        assert_problem(response, 404, "route.not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/packets"),
        ("DELETE", "/packets"),
        ("PUT", "/packets/7c118c9d-85d3-45e1-a2c7-e7468499fa77"),
    ],
)
async def test_wrong_method_is_405_problem_with_allow(api: Api, method: str, path: str) -> None:
    response = await api.client.request(method, f"{P}{path}", headers=api.headers())
    assert_problem(response, 405, "route.method_not_allowed")
    assert response.headers.get("allow")


# -- request ids ------------------------------------------------------------------------------


async def test_sane_request_id_is_echoed_on_success_and_error(api: Api) -> None:
    for path, headers in ((f"{P}/packets", api.headers()), (f"{P}/packets", {})):
        response = await api.client.get(path, headers={**headers, "X-Request-ID": "abc-123.x:y_z"})
        assert response.headers["x-request-id"] == "abc-123.x:y_z"


@pytest.mark.parametrize(
    "incoming", ["a" * 300, "has spaces in it", "semi;colon", "", "\u00e9t\u00e9"]
)
async def test_insane_request_id_is_replaced(api: Api, incoming: str) -> None:
    response = await api.client.get(
        f"{P}/packets",
        headers=[(b"X-API-Key", api.operator_key.encode()), (b"X-Request-ID", incoming.encode())],
    )
    echoed = response.headers["x-request-id"]
    assert echoed != incoming
    assert 1 <= len(echoed) <= 128
    assert " " not in echoed


async def test_request_id_is_generated_when_absent_and_differs_per_request(api: Api) -> None:
    first = await api.client.get(f"{P}/packets", headers=api.headers())
    second = await api.client.get(f"{P}/packets", headers=api.headers())
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_appears_in_the_audit_trail(api: Api) -> None:
    response = await api.client.post(
        f"{P}/packets",
        json=packet_body(),
        headers={**api.headers(), "X-Request-ID": "trace-me-42"},
    )
    assert response.status_code == 201
    audit = await api.client.get(
        f"{P}/audit", params={"packet_id": response.json()["id"]}, headers=api.headers()
    )
    assert audit.status_code == 200
    assert [entry.get("request_id") for entry in audit.json()["entries"]] == ["trace-me-42"]


# -- roles, briefly (the full matrix is in test_http_rbac.py) ---------------------------------


async def test_insufficient_role_is_403_problem(api: Api) -> None:
    reader = await api.new_key(Role.READER)
    response = await api.client.post(
        f"{P}/packets", json=packet_body(), headers=api.headers(reader)
    )
    body = assert_problem(response, 403, "auth.insufficient_role")
    assert body["detail"] == "Insufficient permissions. Required role: writer, current role: reader"


async def test_hitl_create_with_blank_reason_is_422(api: Api) -> None:
    body = packet_body(hitl={**HITL, "reason": "   "})
    response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert_problem(response, 422, "request.validation_failed")
