"""Hostile input never yields a 5xx and never corrupts stored data, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.exceptions import RequestValidationError

from tests.conftest import Api, packet_body
from tests.contract.helpers import P, assert_problem, create_packet, get_packet

MIB = 1024 * 1024


def _with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A valid create body with the value at `path` replaced (dict keys or list indexes)."""
    body: dict[str, Any] = copy.deepcopy(packet_body(tags=["ok"]))
    body["context"]["conversation_state"] = [{"role": "user", "content": "hi"}]
    body["context"]["custom"] = {"k": "v"}
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return body


NUL = "bad\u0000value"

NUL_BODIES = {
    "summary": _with(("context", "summary"), NUL),
    "source-agent-id": _with(("metadata", "source_agent", "id"), NUL),
    "target-agent-id": _with(("metadata", "target_agent", "id"), NUL),
    "agent-name": _with(("metadata", "source_agent", "name"), NUL),
    "tag": _with(("metadata", "tags"), ["ok", NUL]),
    "custom-key": _with(("context", "custom"), {NUL: 1}),
    "custom-value": _with(("context", "custom"), {"deep": [{"x": NUL}]}),
    "conversation": _with(("context", "conversation_state", 0, "content"), NUL),
    "lone-nul": _with(("context", "summary"), "\u0000"),
}


async def _assert_still_healthy(api: Api, survivor: dict[str, Any]) -> None:
    """The database still answers and the packet made before the attack is unchanged."""
    listed = await api.client.get(f"{P}/packets", headers=api.headers())
    assert listed.status_code == 200, listed.text
    again = await get_packet(api, survivor["id"])
    assert again == survivor
    assert (await create_packet(api))["status"] == "created"


@pytest.fixture
async def survivor(api: Api) -> dict[str, Any]:
    """A packet that must come through every attack unchanged."""
    return await create_packet(api, summary="survivor packet", tags=["keep"])


@pytest.mark.parametrize("route", ["create", "batch", "chain", "patch"])
async def test_nul_characters_anywhere_are_422_on_every_write(
    api: Api, survivor: dict[str, Any], route: str
) -> None:
    for name, body in NUL_BODIES.items():
        if route == "create":
            response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
        elif route == "chain":
            response = await api.client.post(
                f"{P}/packets/{survivor['id']}/chain", json=body, headers=api.headers()
            )
        elif route == "patch":
            if name not in {"summary", "custom-key", "custom-value", "conversation", "lone-nul"}:
                continue
            response = await api.client.patch(
                f"{P}/packets/{survivor['id']}",
                json={"context": body["context"]},
                headers=api.headers(),
            )
        else:
            response = await api.client.post(
                f"{P}/packets/batch", json={"packets": [body]}, headers=api.headers()
            )
            if response.status_code == 201:
                assert response.json()["created"] == [], name
                assert response.json()["errors"][0]["index"] == 0
                continue
        assert_problem(response, 422)
    await _assert_still_healthy(api, survivor)


async def test_nul_in_other_bodies_is_422(api: Api, survivor: dict[str, Any]) -> None:
    cases = [
        ("POST", f"/packets/{survivor['id']}/claim", {"agent_id": NUL, "agent_name": "x"}),
        ("POST", "/packets/claim-next", {"agent_id": "a", "agent_name": "x", "tags": [NUL]}),
        ("POST", "/keys", {"name": NUL, "role": "reader"}),
        ("POST", "/tenants", {"name": NUL}),
        ("POST", "/schemas", {"name": "s", "json_schema": {"type": "object", NUL: 1}}),
    ]
    for method, path, body in cases:
        response = await api.client.request(method, f"{P}{path}", json=body, headers=api.headers())
        assert_problem(response, 422)
    await _assert_still_healthy(api, survivor)


def _raw_create(custom_value: str) -> bytes:
    """A create body whose context.custom.v is the raw JSON text `custom_value`."""
    text = json.dumps(packet_body())
    marker = '"context": {'
    return text.replace(marker, marker + f'"custom": {{"v": {custom_value}}}, ', 1).encode()


async def _post_raw_create(api: Api, custom_value: str) -> httpx.Response:
    """POST /packets with `_raw_create(custom_value)` as a JSON body."""
    return await api.client.post(
        f"{P}/packets",
        content=_raw_create(custom_value),
        headers={**api.headers(), "Content-Type": "application/json"},
    )


async def test_non_finite_numbers_are_422(api: Api, survivor: dict[str, Any]) -> None:
    for number in ("NaN", "Infinity", "-Infinity", "1e999", "[1, -1e400]", '{"a": NaN}'):
        response = await _post_raw_create(api, number)
        body = assert_problem(response, 422)
        assert "non-finite" in body["detail"], number
    await _assert_still_healthy(api, survivor)


async def test_unpaired_surrogates_are_422_on_both_databases(
    api: Api, survivor: dict[str, Any]
) -> None:
    """JSON may spell half a surrogate pair; neither database can store it (SQLite cannot even
    encode it): 422, not 500."""
    for value in ('"\\ud800"', '"x\\udfffy"', '["ok", "\\ud83d"]', '{"\\udc00": 1}'):
        response = await _post_raw_create(api, value)
        body = assert_problem(response, 422)
        assert "unpaired surrogate" in body["detail"], value
    emoji = await _post_raw_create(api, '"\\ud83d\\ude00 ok"')
    assert emoji.status_code == 201, emoji.text
    assert emoji.json()["context"]["custom"]["v"] == "\U0001f600 ok"
    patched = await api.client.patch(
        f"{P}/packets/{survivor['id']}",
        content=b'{"context": {"summary": "s", "note": "\\ud800"}}',
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert_problem(patched, 422)
    await _assert_still_healthy(api, survivor)


async def test_absurd_nesting_is_422_not_500(api: Api, survivor: dict[str, Any]) -> None:
    for depth in (100, 900, 10_000, 100_000):
        for opener, closer in (('{"a":', "}"), ("[", "]")):
            response = await api.client.post(
                f"{P}/packets",
                content=_raw_create(opener * depth + "1" + closer * depth),
                headers={**api.headers(), "Content-Type": "application/json"},
            )
            assert_problem(response, 422)
    await _assert_still_healthy(api, survivor)


async def test_body_over_the_cap_is_413_problem(api: Api, survivor: dict[str, Any]) -> None:
    body = packet_body(summary="x" * (2 * MIB))
    response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    problem = assert_problem(response, 413, "request.too_large")
    assert problem["limit_bytes"] >= MIB
    assert response.headers.get("x-request-id")
    await _assert_still_healthy(api, survivor)


async def test_streamed_body_without_content_length_over_the_cap_is_413(
    api: Api, survivor: dict[str, Any]
) -> None:
    text = json.dumps(packet_body(summary="y" * (2 * MIB))).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(text), 64 * 1024):
            yield text[start : start + 64 * 1024]

    response = await api.client.post(
        f"{P}/packets",
        content=chunks(),
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert_problem(response, 413, "request.too_large")
    await _assert_still_healthy(api, survivor)


async def test_lying_small_content_length_does_not_sneak_a_big_body_in(
    api: Api, survivor: dict[str, Any]
) -> None:
    text = json.dumps(packet_body(summary="z" * (2 * MIB))).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield text

    response = await api.client.post(
        f"{P}/packets",
        content=chunks(),
        headers={**api.headers(), "Content-Type": "application/json", "Content-Length": "10"},
    )
    assert 400 <= response.status_code < 500
    await _assert_still_healthy(api, survivor)


async def test_body_just_under_the_cap_is_accepted(api: Api) -> None:
    body = packet_body(summary="w" * (MIB - 4096))
    response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert response.status_code == 201, response.text[:300]
    assert len((await get_packet(api, response.json()["id"]))["context"]["summary"]) == MIB - 4096


async def test_malformed_json_is_422(api: Api, survivor: dict[str, Any]) -> None:
    for raw in (b"{", b'{"metadata": }', b"not json", b"\xff\xfe\x00", b"", b"null", b"42"):
        response = await api.client.post(
            f"{P}/packets",
            content=raw,
            headers={**api.headers(), "Content-Type": "application/json"},
        )
        assert_problem(response, 422)
    await _assert_still_healthy(api, survivor)


async def test_malformed_json_leaves_no_cycle_for_the_collector(api: Api) -> None:
    """A body that is not JSON is answered and freed at once: its error, the frames that raised
    it and the body they hold are not left in a reference cycle for the collector to find."""
    headers = {**api.headers(), "Content-Type": "application/json"}
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            response = await api.client.post(
                f"{P}/packets", content=b'{"metadata": ', headers=headers
            )
            assert_problem(response, 422)
        gc.collect()
        kept = Counter(
            type(thing).__name__
            for thing in gc.garbage
            if isinstance(thing, (RequestValidationError, json.JSONDecodeError))
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert kept == Counter()


async def test_json_array_instead_of_object_is_422(api: Api) -> None:
    for path in ("/packets", "/packets/batch", "/packets/claim-next", "/keys", "/schemas"):
        response = await api.client.post(f"{P}{path}", json=[packet_body()], headers=api.headers())
        assert_problem(response, 422)


WRONG_TYPES = {
    "metadata-string": _with(("metadata",), "x"),
    "summary-number": _with(("context", "summary"), 12),
    "summary-object": _with(("context", "summary"), {"a": 1}),
    "tags-string": _with(("metadata", "tags"), "a,b"),
    "tags-numbers": _with(("metadata", "tags"), [1, 2]),
    "priority-unknown": _with(("metadata", "priority"), "urgent"),
    "priority-number": _with(("metadata", "priority"), 3),
    "created-at-garbage": _with(("metadata", "created_at"), "yesterday"),
    "conversation-object": _with(("context", "conversation_state"), {"role": "user"}),
    "role-unknown": _with(("context", "conversation_state", 0, "role"), "robot"),
    "custom-list": _with(("context", "custom"), [1, 2]),
    "decisions-object": _with(("decisions",), {"id": "d1"}),
    "actions-list": _with(("actions",), []),
    "hitl-string": _with(("hitl",), "yes"),
    "hitl-timeout-negative": _with(("hitl",), {"reason": "r", "timeout_seconds": -5}),
    "hitl-timeout-huge": _with(("hitl",), {"reason": "r", "timeout_seconds": 10**30}),
    "parent-not-uuid": _with(("parent_packet_id",), "nope"),
    "empty-agent-id": _with(("metadata", "source_agent", "id"), ""),
    "schema-id-object": _with(("schema_id",), {"a": 1}),
    "too-many-tags": _with(("metadata", "tags"), [f"t{i}" for i in range(65)]),
    # longer than the 256-character columns: refused, not a database error
    "tag-too-long": _with(("metadata", "tags"), ["ok", "x" * 257]),
    "source-id-too-long": _with(("metadata", "source_agent", "id"), "s" * 257),
    "target-id-too-long": _with(("metadata", "target_agent", "id"), "t" * 257),
}


async def test_wrong_types_everywhere_are_422(api: Api, survivor: dict[str, Any]) -> None:
    for name, body in WRONG_TYPES.items():
        response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
        assert response.status_code == 422, (name, response.text)
        assert_problem(response, 422)
    for body in (
        {"status": "done"},
        {"status": 1},
        {"decisions": [{"id": "d"}]},
        {"actions": {"pending": [{"id": "a"}]}},
        {"context": "x"},
    ):
        response = await api.client.patch(
            f"{P}/packets/{survivor['id']}", json=body, headers=api.headers()
        )
        assert_problem(response, 422)
    for body in ({}, {"agent_id": 1, "agent_name": "x"}, {"agent_id": "", "agent_name": "x"}):
        response = await api.client.post(
            f"{P}/packets/{survivor['id']}/claim", json=body, headers=api.headers()
        )
        assert_problem(response, 422)
    for body in ({"packets": []}, {"packets": "x"}, {"packets": [1]}):
        response = await api.client.post(f"{P}/packets/batch", json=body, headers=api.headers())
        assert 400 <= response.status_code < 500, response.text
        if response.status_code == 201:
            assert response.json()["created"] == []
    await _assert_still_healthy(api, survivor)


SEARCH_QUERIES = [
    '" ',
    '""',
    "**",
    "refund*",
    "AND OR NOT",
    "-x",
    "--",
    "((",
    ") ",
    "NEAR(",
    "NEAR(a b, 2)",
    "col:refund",
    "summary:refund",
    "^refund",
    "a'b",
    "'; DROP TABLE packet; --",
    "%_",
    "\\\\",
    "{}[]",
    "\U0001f600\U0001f600",
    "r\u00e9fund \u00fc\u00df",
    "x" * 500,
    "refund " * 70,
    "!@#$%^&*()",
    "a & b | !c",
    "<->",
]


async def test_search_text_with_engine_syntax_never_fails(
    api: Api, survivor: dict[str, Any]
) -> None:
    for query in SEARCH_QUERIES:
        response = await api.client.get(
            f"{P}/packets/search", params={"q": query[:512]}, headers=api.headers()
        )
        assert response.status_code == 200, (query, response.text)
        assert isinstance(response.json()["packets"], list)
    found = await api.client.get(
        f"{P}/packets/search", params={"q": '"survivor" -packet*'}, headers=api.headers()
    )
    assert [packet["id"] for packet in found.json()["packets"]] == [survivor["id"]]
    await _assert_still_healthy(api, survivor)


QUERY_ATTACKS = [
    "/packets?source_agent=%00",
    "/packets?target_agent=a%00b",
    "/packets?tags=%00",
    "/packets?status=%00",
    "/packets?priority=%00",
    "/packets?cursor=%00",
    "/packets?created_after=%00",
    "/packets?limit=%00",
    "/packets/search?q=ab%00cd",
    "/packets/search?q=%00%00",
    "/audit?actor=%00",
    "/audit?action=x%00",
    "/audit?packet_id=%00",
    "/schemas/%00",
    "/schemas/a%00b",
    "/packets/%00",
    "/packets/%00/history",
    "/tenants/%00",
    "/tenants/%00/keys",
]


async def test_nul_in_query_or_path_is_4xx_not_500(api: Api, survivor: dict[str, Any]) -> None:
    bad = []
    for url in QUERY_ATTACKS:
        response = await api.client.get(f"{P}{url}", headers=api.headers())
        if not 400 <= response.status_code < 500:
            bad.append((url, response.status_code))
            continue
        assert_problem(response, response.status_code)
    assert bad == []
    for method, url in (("DELETE", "/keys/%00"), ("POST", "/keys/%00/rotate")):
        response = await api.client.request(method, f"{P}{url}", headers=api.headers())
        assert 400 <= response.status_code < 500, (url, response.text)
    await _assert_still_healthy(api, survivor)


ABSURD_LIST_PARAMS = [
    {"offset": str(10**12)},
    {"offset": "99999999999999999999999999"},
    {"limit": "1e3"},
    {"created_after": "garbage"},
    {"created_before": "2024-13-45"},
    {"created_after": "9" * 40},
    {"source_agent": "a" * 5000},
    {"tags": ",".join(["t"] * 3000)},
]


async def test_absurd_list_params_are_422(api: Api, survivor: dict[str, Any]) -> None:
    for params in ABSURD_LIST_PARAMS:
        response = await api.client.get(f"{P}/packets", params=params, headers=api.headers())
        assert_problem(response, 422)
    await _assert_still_healthy(api, survivor)


async def test_odd_but_valid_list_params_do_not_fail(api: Api, survivor: dict[str, Any]) -> None:
    for params in (
        {"tags": ",,, ,"},
        {"status": ","},
        {"source_agent": "'; DROP TABLE packet; --"},
        {"tags": "%,_"},
        {"created_after": "1970-01-01T00:00:00"},
        {"created_before": "9999-12-31T23:59:59+00:00"},
        {"created_after": "2000-01-01T00:00:00-12:00"},
        {"offset": "1000000000"},
    ):
        response = await api.client.get(f"{P}/packets", params=params, headers=api.headers())
        assert response.status_code == 200, (params, response.text)
    await _assert_still_healthy(api, survivor)


async def test_large_unicode_and_odd_strings_round_trip_exactly(api: Api) -> None:
    summary = "\U0001f600 r\u00e9sum\u00e9 \u202e rtl \t tab \n newline \\ ' \" " + "\u4e2d" * 1000
    custom = {"k\u00e9y": ["\U0001f4a9", {"nested": "\u0001\u001f"}], "big": 10**18, "f": 1.5}
    body = packet_body(summary=summary, tags=["\u00e9t\u00e9", "a b", "'"])
    context: dict[str, Any] = body["context"]  # type: ignore[assignment]
    context["custom"] = custom
    created = await create_packet(api, body=body)
    fetched = await get_packet(api, created["id"])
    assert fetched["context"]["summary"] == summary
    assert fetched["context"]["custom"] == custom
    assert fetched["metadata"]["tags"] == ["\u00e9t\u00e9", "a b", "'"]
    tagged = await api.client.get(
        f"{P}/packets", params={"tags": "\u00e9t\u00e9"}, headers=api.headers()
    )
    assert [packet["id"] for packet in tagged.json()["packets"]] == [created["id"]]


async def test_tags_and_agent_ids_of_the_column_width_are_stored_whole(api: Api) -> None:
    body = _with(("metadata", "tags"), ["w" * 256, "short"])
    body["metadata"]["source_agent"]["id"] = "s" * 256
    body["metadata"]["target_agent"]["id"] = "t" * 256
    created = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert created.status_code == 201, created.text
    found = await api.client.get(f"{P}/packets", params={"tags": "w" * 256}, headers=api.headers())
    assert [packet["id"] for packet in found.json()["packets"]] == [created.json()["id"]]
    assert found.json()["packets"][0]["metadata"]["source_agent"]["id"] == "s" * 256


async def test_integers_beyond_64_bits_survive_create_chain_patch_and_reads(api: Api) -> None:
    """orjson refuses integers past 64 bits: the size check of a chain (the parent's
    conversation included) answered 500 on them."""
    huge = "1" + "0" * 400
    body = packet_body()
    body["context"] = {"summary": "s", "conversation_state": [{"role": "user", "content": "c"}]}
    marker = '"conversation_state": ['
    raw = json.dumps(body).replace(marker, f'"custom": {{"v": {huge}}}, {marker}', 1).encode()
    headers = {**api.headers(), "Content-Type": "application/json"}
    created = await api.client.post(f"{P}/packets", content=raw, headers=headers)
    assert created.status_code == 201, created.text
    packet_id = created.json()["id"]
    chained = await api.client.post(f"{P}/packets/{packet_id}/chain", content=raw, headers=headers)
    assert chained.status_code == 201, chained.text
    patched = await api.client.patch(f"{P}/packets/{packet_id}", content=raw, headers=headers)
    assert patched.status_code == 200, patched.text
    for path in (f"{P}/packets/{packet_id}", f"{P}/packets/{chained.json()['id']}"):
        read = await api.client.get(path, headers=api.headers())
        assert read.status_code == 200, read.text
        assert json.loads(read.text)["context"]["custom"]["v"] == 10**400
