"""Hostile JSON Schemas over HTTP: unresolvable references and catastrophic regular expressions.

A registered schema is used on every create, batch and chain that names it, so what it cannot do
must be refused at registration (422 `schema.invalid`), and a schema stored before that check
must answer 422 too, never 500. Regular expressions run within a time budget per validation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import PacketSchema
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.schema_registry import validation
from tests.conftest import Api, packet_body
from tests.contract.helpers import P, assert_problem, create_packet

UNRESOLVABLE: dict[str, dict[str, Any]] = {
    "remote": {"type": "object", "$ref": "https://example.com/s.json"},
    "pointer": {"type": "object", "$ref": "#/nope"},
    "dynamic": {"type": "object", "$dynamicRef": "#meta"},
    "nested": {"type": "object", "properties": {"summary": {"$ref": "#/$defs/missing"}}},
    "draft7": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"summary": {"$ref": "#/definitions/missing"}},
    },
    "relative": {"type": "object", "properties": {"summary": {"$ref": "other.json"}}},
}
HOSTILE_PATTERN = {
    "type": "object",
    "properties": {"summary": {"type": "string", "pattern": "^(a+)+$"}},
}
#: `re` needs about 10 s for this against ^(a+)+$ (doubling with every further "a")
EVIL_SUMMARY = "a" * 28 + "!"
#: catastrophic for `re` and for the `regex` module alike: only the time budget ends it
RUNAWAY = {
    "type": "object",
    "properties": {"summary": {"type": "string", "pattern": "^(a|ab|b)*$"}},
}
RUNAWAY_SUMMARY = "ab" * 40 + "!"


async def register(api: Api, json_schema: dict[str, Any], name: str = "s") -> Any:
    return await api.client.post(
        f"{P}/schemas", json={"name": name, "json_schema": json_schema}, headers=api.headers()
    )


async def registered(api: Api, json_schema: dict[str, Any], name: str = "s") -> str:
    response = await register(api, json_schema, name)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def store_behind_the_api(api: Api, schema_id: str, json_schema: dict[str, Any]) -> None:
    """Replace a registered schema in the database, as if stored before registration checks."""
    engine = create_engine(api.url, pool_size=1, max_overflow=0)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            await session.execute(
                update(PacketSchema)
                .where(PacketSchema.id == schema_id)
                .values(json_schema=json_schema)
            )
    finally:
        await engine.dispose()


#: the summary of packets whose test is not about it
SUMMARY = "Customer wants a refund"


def with_schema(schema_id: str, summary: str = SUMMARY) -> dict[str, Any]:
    return {**packet_body(summary), "schema_id": schema_id}


async def create_with_schema(api: Api, schema_id: str, summary: str = SUMMARY) -> httpx.Response:
    """POST /packets naming `schema_id` (the response, whatever its status)."""
    return await api.client.post(
        f"{P}/packets", json=with_schema(schema_id, summary), headers=api.headers()
    )


@pytest.mark.parametrize("name", sorted(UNRESOLVABLE))
async def test_schemas_with_unresolvable_references_are_refused_at_registration(
    api: Api, name: str
) -> None:
    response = await register(api, UNRESOLVABLE[name])
    body = assert_problem(response, 422, "schema.invalid")
    assert "does not resolve" in body["detail"]


@pytest.mark.parametrize(
    "json_schema",
    [
        {"type": "object", "$schema": 5},
        {"type": "object", "$id": "http://[x", "properties": {"summary": {"$id": "y"}}},
    ],
    ids=["schema-not-a-string", "malformed-id"],
)
async def test_schemas_jsonschema_cannot_load_are_refused_not_500(
    api: Api, json_schema: dict[str, Any]
) -> None:
    assert_problem(await register(api, json_schema), 422, "schema.invalid")


async def test_references_inside_the_schema_are_accepted_and_used(api: Api) -> None:
    schema_id = await registered(
        api,
        {
            "type": "object",
            "$defs": {"text": {"type": "string", "maxLength": 40}},
            "properties": {"summary": {"$ref": "#/$defs/text"}},
        },
    )
    await create_packet(api, body=with_schema(schema_id))
    response = await create_with_schema(api, schema_id, "x" * 41)
    assert_problem(response, 422, "schema.validation_failed")


@pytest.mark.parametrize(
    "json_schema",
    [
        *(UNRESOLVABLE[name] for name in sorted(UNRESOLVABLE)),
        {"type": "object", "$ref": "#"},
        {"type": "object", "$schema": 5},
        {"type": "object", "$id": "http://[x", "properties": {"summary": {"$id": "y"}}},
    ],
    ids=[*sorted(UNRESOLVABLE), "self", "schema-not-a-string", "malformed-id"],
)
async def test_a_stored_schema_that_cannot_be_used_is_422_on_create_batch_and_chain(
    api: Api, json_schema: dict[str, Any]
) -> None:
    parent = await create_packet(api)
    schema_id = await registered(api, {"type": "object"})
    await store_behind_the_api(api, schema_id, json_schema)
    body = with_schema(schema_id)

    created = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert_problem(created, 422, "schema.invalid")
    chained = await api.client.post(
        f"{P}/packets/{parent['id']}/chain", json=body, headers=api.headers()
    )
    assert_problem(chained, 422, "schema.invalid")
    batch = await api.client.post(
        f"{P}/packets/batch", json={"packets": [body]}, headers=api.headers()
    )
    assert batch.status_code == 201, batch.text
    assert batch.json()["created"] == []
    [error] = batch.json()["errors"]
    assert error["index"] == 0
    assert "cannot be used" in error["error"]


async def test_a_pattern_catastrophic_for_re_is_answered(api: Api) -> None:
    schema_id = await registered(api, HOSTILE_PATTERN)
    response = await create_with_schema(api, schema_id, EVIL_SUMMARY)
    assert_problem(response, 422, "schema.validation_failed")
    await create_packet(api, body=with_schema(schema_id, "a" * 5_000))


async def test_a_catastrophic_pattern_property_and_additional_properties_are_answered(
    api: Api,
) -> None:
    custom = {
        "type": "object",
        "patternProperties": {"^(a+)+$": {"type": "string"}},
        "additionalProperties": False,
    }
    schema_id = await registered(api, {"type": "object", "properties": {"custom": custom}})
    body = with_schema(schema_id)
    body["context"]["custom"] = {EVIL_SUMMARY: "x"}
    response = await api.client.post(f"{P}/packets", json=body, headers=api.headers())
    assert_problem(response, 422, "schema.validation_failed")


@pytest.mark.parametrize(
    "json_schema",
    [
        {"type": "object", "properties": {"summary": {"pattern": "(unclosed"}}},
        {"type": "object", "patternProperties": {"[z-a]": {}}},
        {
            "type": "object",
            "patternProperties": {"^x-": {"type": "string"}},
            "unevaluatedProperties": False,
        },
    ],
    ids=["unclosed-group", "bad-range", "unevaluated"],
)
async def test_regular_expressions_that_cannot_be_used_are_refused_at_registration(
    api: Api, json_schema: dict[str, Any]
) -> None:
    assert_problem(await register(api, json_schema), 422, "schema.invalid")


async def test_lookahead_and_backreferences_work_as_json_schema_recommends(api: Api) -> None:
    password_like = {
        "type": "object",
        "properties": {"summary": {"type": "string", "pattern": "^(?=.*[A-Z])(?=.*\\d).{8,}$"}},
    }
    schema_id = await registered(api, password_like)
    await create_packet(api, body=with_schema(schema_id, "Refund of 42 EUR"))
    refused = await create_with_schema(api, schema_id, "no capitals 42")
    assert_problem(refused, 422, "schema.validation_failed")


async def test_matching_past_the_time_budget_is_422_too_costly(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema_id = await registered(api, RUNAWAY)
    monkeypatch.setattr(validation, "VALIDATION_SECONDS", 0.05)
    response = await create_with_schema(api, schema_id, RUNAWAY_SUMMARY)
    body = assert_problem(response, 422, "schema.validation_too_costly")
    assert body.get("field") == "context"
    listed = await api.client.get(f"{P}/packets", headers=api.headers())
    assert listed.json()["total"] == 0


def nested_any_of(depth: int) -> dict[str, Any]:
    """No regular expression: each level tries both branches, so a string costs 2^depth checks."""
    levels: dict[str, Any] = {
        f"l{n}": {"anyOf": [{"$ref": f"#/$defs/l{n + 1}"}, {"$ref": f"#/$defs/l{n + 1}"}]}
        for n in range(depth)
    }
    levels[f"l{depth}"] = {"type": "number"}
    return {
        "type": "object",
        "$defs": levels,
        "properties": {"summary": {"$ref": "#/$defs/l0"}},
    }


async def test_a_schema_exponential_without_any_regex_is_422_too_costly(api: Api) -> None:
    """2^26 keyword checks would hold the event loop for many minutes; the budget ends it."""
    schema_id = await registered(api, nested_any_of(26))
    response = await create_with_schema(api, schema_id)
    assert_problem(response, 422, "schema.validation_too_costly")
    shallow = await registered(api, nested_any_of(3), name="shallow")
    refused = await create_with_schema(api, shallow)
    assert_problem(refused, 422, "schema.validation_failed")


async def test_a_batch_shares_one_validation_budget(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each packet alone may take VALIDATION_SECONDS; the batch together only the request's."""
    schema_id = await registered(api, RUNAWAY)
    monkeypatch.setattr(validation, "VALIDATION_SECONDS", 30.0)
    monkeypatch.setattr(validation, "REQUEST_VALIDATION_SECONDS", 0.2)
    runaway = with_schema(schema_id, RUNAWAY_SUMMARY)
    fine = with_schema(schema_id, "abab")
    started = time.monotonic()
    response = await api.client.post(
        f"{P}/packets/batch", json={"packets": [runaway, runaway, fine]}, headers=api.headers()
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["created"] == []
    assert [error["index"] for error in body["errors"]] == [0, 1, 2]
    assert all("too long" in error["error"] for error in body["errors"])
    # per-packet budgets would have run 30 s for each runaway packet
    assert elapsed < 10, elapsed


@pytest.mark.parametrize(("divisor", "status"), [(0.5, 201), (0.3, 422)])
async def test_numbers_past_the_float_range_against_multiple_of_are_answered_not_500(
    api: Api, divisor: float, status: int
) -> None:
    """10**400 is a multiple of 0.5 and not of the binary 0.3 (jsonschema raised OverflowError)."""
    custom = {"type": "object", "properties": {"n": {"multipleOf": divisor}}}
    schema_id = await registered(api, {"type": "object", "properties": {"custom": custom}})
    body = with_schema(schema_id)
    body["context"]["custom"] = {"n": "NUMBER"}
    raw = json.dumps(body).replace('"NUMBER"', "1" + "0" * 400)  # json.dumps cannot write it
    response = await api.client.post(
        f"{P}/packets", content=raw, headers={**api.headers(), "content-type": "application/json"}
    )
    assert response.status_code == status, response.text
