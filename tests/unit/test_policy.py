"""Pure packet rules: merges, cursors, search text and FTS5 query quoting."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handoffrail_server.packets.policy import (
    MAX_SEARCH_TERMS,
    MAX_SEARCH_TEXT,
    PRIORITY_RANK,
    InvalidCursor,
    decode_cursor,
    encode_cursor,
    fts5_match,
    merge_actions,
    merge_decisions,
    search_terms,
    search_text,
    split_csv,
)

PACKET_ID = uuid.UUID("0b7c6f6e-6f1c-4c55-9a57-0a3b1c2d3e4f")
CREATED_AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_of(payload: object) -> str:
    return _b64(json.dumps(payload).encode())


# -- merges -------------------------------------------------------------------------------------


def _decision(identifier: str, text: str) -> dict[str, Any]:
    return {"id": identifier, "decision": text, "rationale": f"because {text}"}


def test_merge_decisions_replaces_same_id_in_place() -> None:
    current = [_decision("d1", "a"), _decision("d2", "b"), _decision("d3", "c")]

    merged = merge_decisions(current, [_decision("d2", "B")])

    assert [item["id"] for item in merged] == ["d1", "d2", "d3"]
    assert merged[1]["decision"] == "B"


def test_merge_decisions_appends_new_ids_in_order() -> None:
    current = [_decision("d1", "a")]

    merged = merge_decisions(current, [_decision("d9", "z"), _decision("d5", "y")])

    assert [item["id"] for item in merged] == ["d1", "d9", "d5"]


def test_merge_decisions_mixes_replace_and_append() -> None:
    current = [_decision("d1", "a"), _decision("d2", "b")]

    merged = merge_decisions(current, [_decision("d3", "c"), _decision("d1", "A")])

    assert [(item["id"], item["decision"]) for item in merged] == [
        ("d1", "A"),
        ("d2", "b"),
        ("d3", "c"),
    ]


def test_merge_decisions_later_duplicate_in_update_wins() -> None:
    merged = merge_decisions([], [_decision("d1", "first"), _decision("d1", "second")])

    assert merged == [_decision("d1", "second")]


def test_merge_decisions_does_not_mutate_inputs() -> None:
    current = [_decision("d1", "a")]
    incoming = [_decision("d1", "A"), _decision("d2", "b")]
    snapshot = json.dumps([current, incoming])

    merge_decisions(current, incoming)

    assert json.dumps([current, incoming]) == snapshot


def test_merge_decisions_with_empty_update_keeps_current() -> None:
    current = [_decision("d1", "a")]

    assert merge_decisions(current, []) == current


def test_merge_actions_replaces_only_buckets_the_update_carries() -> None:
    current = {
        "pending": [{"id": "p1"}],
        "completed": [{"id": "c1"}],
        "failed": [{"id": "f1"}],
    }

    merged = merge_actions(current, {"pending": [], "failed": [{"id": "f2"}]})

    assert merged == {"pending": [], "completed": [{"id": "c1"}], "failed": [{"id": "f2"}]}
    assert current["pending"] == [{"id": "p1"}]


def test_merge_actions_fills_missing_buckets_with_empty_lists() -> None:
    merged = merge_actions({}, {"completed": [{"id": "c1"}]})

    assert merged == {"pending": [], "completed": [{"id": "c1"}], "failed": []}


def test_merge_actions_ignores_unknown_buckets_in_update() -> None:
    merged = merge_actions({"pending": [{"id": "p1"}]}, {"skipped": [{"id": "x"}]})

    assert merged == {"pending": [{"id": "p1"}], "completed": [], "failed": []}


# -- cursors ------------------------------------------------------------------------------------


def test_cursor_round_trips_timestamp_and_id() -> None:
    cursor = encode_cursor(CREATED_AT, PACKET_ID)

    assert decode_cursor(cursor) == (CREATED_AT, PACKET_ID)


def test_cursor_is_url_safe_base64_without_padding_of_created_at_and_id() -> None:
    cursor = encode_cursor(CREATED_AT, PACKET_ID)

    assert "=" not in cursor
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    padded = cursor + "=" * (-len(cursor) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == {
        "created_at": CREATED_AT.isoformat(),
        "id": str(PACKET_ID),
    }


def test_cursor_keeps_non_utc_offset() -> None:
    moment = datetime(2024, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))

    decoded, _ = decode_cursor(encode_cursor(moment, PACKET_ID))

    assert decoded == moment
    assert decoded.utcoffset() == timedelta(hours=5, minutes=30)


def test_cursor_with_padding_left_on_still_decodes() -> None:
    raw = json.dumps({"created_at": CREATED_AT.isoformat(), "id": str(PACKET_ID)}).encode()
    padded = base64.urlsafe_b64encode(raw).decode()

    assert decode_cursor(padded) == (CREATED_AT, PACKET_ID)


@given(
    moment=st.datetimes(timezones=st.just(UTC)),
    packet_id=st.uuids(),
)
@settings(max_examples=100, deadline=None)
def test_any_aware_timestamp_and_uuid_round_trip(moment: datetime, packet_id: uuid.UUID) -> None:
    assert decode_cursor(encode_cursor(moment, packet_id)) == (moment, packet_id)


GARBAGE_CURSORS = {
    "empty": "",
    "not base64 at all": "!!!!",
    "single base64 char": "A",
    "non-ascii": "ümläut",
    "non-utf8 bytes": _b64(b"\xff\xfe\xfd\xfc"),
    "plain text": _b64(b"hello world"),
    "truncated json": _b64(b'{"created_at": "2024-01-01T00:00:00+00:00", "id": '),
    "json list": _cursor_of(["2024-01-01T00:00:00+00:00", str(PACKET_ID)]),
    "json string": _cursor_of("2024-01-01T00:00:00+00:00"),
    "json number": _cursor_of(42),
    "json null": _cursor_of(None),
    "empty object": _cursor_of({}),
    "missing id": _cursor_of({"created_at": "2024-01-01T00:00:00+00:00"}),
    "missing created_at": _cursor_of({"id": str(PACKET_ID)}),
    "naive datetime": _cursor_of({"created_at": "2024-01-01T00:00:00", "id": str(PACKET_ID)}),
    "bad datetime": _cursor_of({"created_at": "yesterday", "id": str(PACKET_ID)}),
    "before year 1 in UTC": _cursor_of(
        {"created_at": "0001-01-01T00:00:00+14:00", "id": str(PACKET_ID)}
    ),
    "after year 9999 in UTC": _cursor_of(
        {"created_at": "9999-12-31T23:59:59-14:00", "id": str(PACKET_ID)}
    ),
    "numeric datetime": _cursor_of({"created_at": 1704067200, "id": str(PACKET_ID)}),
    "null datetime": _cursor_of({"created_at": None, "id": str(PACKET_ID)}),
    "bad uuid": _cursor_of({"created_at": "2024-01-01T00:00:00+00:00", "id": "not-a-uuid"}),
    "numeric uuid": _cursor_of({"created_at": "2024-01-01T00:00:00+00:00", "id": 7}),
    "object uuid": _cursor_of({"created_at": "2024-01-01T00:00:00+00:00", "id": {"a": 1}}),
    "deeply nested json": _b64(b"[" * 5000),
}


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS.values(), ids=GARBAGE_CURSORS.keys())
def test_garbage_cursor_raises_invalid_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match=r"^Invalid cursor$"):
        decode_cursor(cursor)


def test_invalid_cursor_is_a_value_error() -> None:
    assert issubclass(InvalidCursor, ValueError)


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_arbitrary_text_either_decodes_or_raises_invalid_cursor(cursor: str) -> None:
    try:
        created_at, _ = decode_cursor(cursor)
    except InvalidCursor:
        return
    assert created_at.tzinfo is not None


# -- search -------------------------------------------------------------------------------------


def _document() -> dict[str, Any]:
    return {
        "metadata": {
            "source_agent": {"id": "sales-01", "name": "Sales Bot"},
            "target_agent": {"id": "billing-01", "name": "Billing Bot", "framework": "crewai"},
            "tags": ["refund", "vip"],
            "priority": "high",
        },
        "context": {
            "summary": "Customer wants a refund",
            "conversation_state": [
                {"role": "user", "content": "My order arrived broken"},
                {"role": "agent", "content": "Sorry to hear that"},
            ],
            "artifacts": [
                {"key": "order_number", "value": "ORD-77"},
                {"key": "receipt", "value": {"total": 99}},
            ],
            "custom": {"secret_sauce": "not indexed"},
        },
        "decisions": [{"id": "d1", "decision": "Approve refund", "rationale": "Damaged goods"}],
        "actions": {
            "pending": [{"id": "a1", "description": "Issue credit note", "assignee": "x"}],
            "completed": [{"id": "a2", "description": "Verified photos", "result": "ok"}],
            "failed": [{"id": "a3", "description": "Call courier", "error": "busy"}],
        },
    }


def test_search_text_includes_every_searchable_field() -> None:
    text = search_text(_document())

    for expected in (
        "Customer wants a refund",
        "sales-01",
        "Sales Bot",
        "billing-01",
        "Billing Bot",
        "refund",
        "vip",
        "My order arrived broken",
        "Sorry to hear that",
        "order_number",
        "ORD-77",
        "receipt",
        "Approve refund",
        "Damaged goods",
        "Issue credit note",
        "Verified photos",
        "Call courier",
    ):
        assert expected in text


def test_search_text_leaves_out_structured_values_and_custom_data() -> None:
    text = search_text(_document())

    assert "not indexed" not in text
    assert "99" not in text
    assert "crewai" not in text
    assert "high" not in text


def test_search_text_of_minimal_document_is_the_summary() -> None:
    assert search_text({"context": {"summary": "Just this"}}) == "Just this"


def test_search_text_tolerates_missing_and_null_agents() -> None:
    document = {"metadata": {"source_agent": None}, "context": {"summary": "s"}}

    assert search_text(document) == "s"


def test_search_text_is_capped() -> None:
    document = {"context": {"summary": "x" * (MAX_SEARCH_TEXT + 500)}}

    assert len(search_text(document)) == MAX_SEARCH_TEXT


def test_search_terms_drop_punctuation_and_operators() -> None:
    assert search_terms('refund -"vip" OR (billing*) NEAR/3 ^x') == [
        "refund",
        "vip",
        "OR",
        "billing",
        "NEAR",
        "3",
        "x",
    ]


def test_search_terms_keep_unicode_words() -> None:
    assert search_terms("Müller café 東京") == ["Müller", "café", "東京"]


def test_search_terms_of_only_punctuation_are_empty() -> None:
    assert search_terms("-- '\" ** ()") == []


def test_search_terms_are_capped() -> None:
    query = " ".join(f"w{number}" for number in range(MAX_SEARCH_TERMS + 10))

    assert search_terms(query) == [f"w{number}" for number in range(MAX_SEARCH_TERMS)]


def test_fts5_match_quotes_each_term_so_operators_are_literal() -> None:
    assert fts5_match(["refund", "OR", "NOT"]) == '"refund" "OR" "NOT"'


def test_fts5_match_doubles_embedded_quotes() -> None:
    assert fts5_match(['say "hi"', 'a"b']) == '"say ""hi""" "a""b"'


def test_fts5_match_of_no_terms_is_empty() -> None:
    assert fts5_match([]) == ""


@given(st.text(max_size=100))
@settings(max_examples=200, deadline=None)
def test_fts5_match_of_any_query_is_only_quoted_words(query: str) -> None:
    terms = search_terms(query)
    expression = fts5_match(terms)

    assert len(terms) <= MAX_SEARCH_TERMS
    for term in terms:
        assert term
        assert '"' not in term
    assert expression == " ".join(f'"{term}"' for term in terms)


# -- small helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("a", ["a"]),
        ("a, b,,c", ["a", "b", "c"]),
        (" , ,", []),
        ("  x  ,y ", ["x", "y"]),
    ],
)
def test_split_csv_trims_and_drops_empty_items(value: str | None, expected: list[str]) -> None:
    assert split_csv(value) == expected


def test_priority_rank_orders_low_to_critical() -> None:
    ordered = sorted(PRIORITY_RANK, key=PRIORITY_RANK.__getitem__)

    assert ordered == ["low", "normal", "high", "critical"]
