"""`fast.together` (several statements become one, placeholders renumbered), `dump_json` and
`load_json`."""

from __future__ import annotations

import json

import pytest

from handoffrail_server.db import fast


def test_writes_become_ctes_and_placeholders_follow_on() -> None:
    first = fast.Statement("INSERT INTO a (x, y) VALUES ($1, $2)", (1, 2))
    second = fast.Statement("INSERT INTO b (z) SELECT unnest($1::text[])", (["p", "q"],))
    then = fast.Statement("SELECT events FROM c WHERE t = $1 AND u = $2", ("t", "u"))
    combined = fast.together([first, second], then)
    assert combined.sql == (
        "WITH w0 AS (INSERT INTO a (x, y) VALUES ($1, $2)),"
        " w1 AS (INSERT INTO b (z) SELECT unnest($3::text[]))"
        " SELECT events FROM c WHERE t = $4 AND u = $5"
    )
    assert combined.args == (1, 2, ["p", "q"], "t", "u")


def test_two_digit_placeholders_are_renumbered_whole() -> None:
    wide = fast.Statement(
        "VALUES (" + ", ".join(f"${n}" for n in range(1, 12)) + ")", tuple(range(11))
    )
    combined = fast.together([wide], fast.Statement("SELECT $1", ("last",)))
    assert "$11)" in combined.sql
    assert combined.sql.endswith("SELECT $12")
    assert combined.args[-1] == "last"


def test_without_writes_the_query_is_unchanged() -> None:
    query = fast.Statement("SELECT $1", (1,))
    assert fast.together([], query) == query


@pytest.mark.parametrize(
    "value",
    [
        {"summary": "Ünïcode ☃ stays", "nested": [1, 2.5, None, True, {"k": "v"}]},
        {"big": 2**64, "negative": -(2**70)},  # beyond orjson's 64 bits: the json fallback
        [],
        "text",
    ],
)
def test_dump_json_round_trips_what_json_would(value: object) -> None:
    assert json.loads(fast.dump_json(value)) == value


@pytest.mark.parametrize(
    "text",
    [
        '{"summary": "Ünï ☃", "n": [1, -2, 3.5, 0.1, -0.0, 1e-7, 9223372036854775807]}',
        "1180591620717411303424",  # 2**70: orjson would read a float
        "-9223372036854775809",  # just below int64
        "18446744073709551616",  # 2**64
        '{"id": "0123456789012345678901234567890"}',  # long digits in a string: json, same value
        "1" + "0" * 400,  # how PostgreSQL writes 1e400 back
        "1e400",  # beyond a double: json reads inf, orjson refuses
        '"\\ud800"',  # a lone surrogate: orjson refuses
        '[true, false, null, {"a": {}}, []]',
    ],
)
def test_load_json_reads_what_json_reads(text: str) -> None:
    expected = json.loads(text)
    loaded = fast.load_json(text)
    assert loaded == expected
    assert type(loaded) is type(expected)
    assert fast.load_json(text.encode()) == expected


def test_load_json_reads_text_holding_a_lone_surrogate_itself() -> None:
    assert fast.load_json('["\ud800"]') == ["\ud800"]


def test_load_json_keeps_integer_types_inside_documents() -> None:
    loaded = fast.load_json('{"a": [18446744073709551615, 2], "b": 12345678901234567890123}')
    assert loaded == {"a": [18446744073709551615, 2], "b": 12345678901234567890123}
    assert all(type(number) is int for number in (*loaded["a"], loaded["b"]))
