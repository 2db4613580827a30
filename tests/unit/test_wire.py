"""Request bodies refuse what PostgreSQL cannot store: NUL characters and non-finite numbers."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from handoffrail_server.api.wire import MAX_DEPTH, NoNulModel, _surely_storable, find_unstorable

NUL = "a NUL character (\\u0000)"
NON_FINITE = "a non-finite number (NaN or Infinity)"
SURROGATE = "an unpaired surrogate (invalid Unicode)"


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        "",
        "plain text with unicode ☃ and \\u0000 spelled out",
        "beyond the BMP: \U0001f600 (one code point, no surrogates)",
        json.loads('"\\ud83d\\ude00"'),  # an escaped surrogate *pair* is one character
        [],
        {},
        {"a": [1, 2.5, {"b": None}], "c": ("t", 1)},
        _nested(MAX_DEPTH, "leaf"),
    ],
)
def test_storable_values_pass(value: Any) -> None:
    assert find_unstorable(value) is None


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("\x00", NUL),
        ("before\x00after", NUL),
        ({"summary": "ok", "context": {"deep": ["x", "y\x00"]}}, NUL),
        ({"key\x00": "value"}, NUL),
        (("tuple", "\x00"), NUL),
        (math.nan, NON_FINITE),
        (math.inf, NON_FINITE),
        (-math.inf, NON_FINITE),
        ({"numbers": [1.0, {"x": math.nan}]}, NON_FINITE),
        ("\ud800", SURROGATE),
        ("low alone \udfff", SURROGATE),
        ({"deep": ["x", {"key\udc00": 1}]}, SURROGATE),
        (json.loads('{"a": "\\ud83d"}'), SURROGATE),
        (json.loads('["\\ude00\\ud83d"]'), SURROGATE),  # reversed pair: two lone halves
    ],
)
def test_unstorable_values_are_described(value: Any, found: str) -> None:
    assert find_unstorable(value) == found


def test_first_problem_in_order_is_reported() -> None:
    assert find_unstorable(["\x00", math.nan]) == NUL
    assert find_unstorable([math.nan, "\x00"]) == NON_FINITE


def test_nesting_past_the_limit_is_refused() -> None:
    assert (
        find_unstorable(_nested(MAX_DEPTH + 1, "leaf")) == f"nesting deeper than {MAX_DEPTH} levels"
    )


def test_very_deep_nesting_does_not_recurse_without_bound() -> None:
    assert find_unstorable(_nested(50_000, 1)) == f"nesting deeper than {MAX_DEPTH} levels"


class Body(NoNulModel):
    name: str
    score: float = 0.0
    extra: dict[str, Any] = {}


def test_model_accepts_clean_body() -> None:
    body = Body.model_validate({"name": "ok", "score": 1.5, "extra": {"list": [1, "two"]}})

    assert body.name == "ok"


@pytest.mark.parametrize(
    ("payload", "found"),
    [
        ({"name": "bad\x00name"}, NUL),
        ({"name": "ok", "extra": {"nested": ["\x00"]}}, NUL),
        ({"name": "ok", "unknown_field": "\x00"}, NUL),
        ({"name": "ok", "score": math.inf}, NON_FINITE),
        ({"name": "ok", "extra": {"x": math.nan}}, NON_FINITE),
    ],
)
def test_model_refuses_unstorable_body_with_a_message(payload: dict[str, Any], found: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(payload)

    assert f"body contains {found}, which cannot be stored" in str(caught.value)


def test_model_refuses_nan_parsed_from_json_text() -> None:
    with pytest.raises(ValidationError, match="non-finite"):
        Body.model_validate(json.loads('{"name": "ok", "score": NaN}'))


@pytest.mark.parametrize(
    "text",
    ['{"name": "\\ud800"}', '{"name": "ok", "extra": {"\\udfff": 1}}', '{"name": "a\\ud83d"}'],
)
def test_model_refuses_an_unpaired_surrogate_from_json_text(text: str) -> None:
    with pytest.raises(ValidationError, match="unpaired surrogate"):
        Body.model_validate(json.loads(text))


def test_surely_storable_is_false_for_an_unpaired_surrogate_and_true_for_emoji() -> None:
    assert not _surely_storable({"x": ["\ud800"]})
    assert _surely_storable({"x": ["\U0001f600", "☃"]})


def test_model_refuses_nul_escape_from_json_text() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        Body.model_validate_json('{"name": "a\\u0000b"}')


def test_refusal_happens_before_field_validation() -> None:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"score": math.nan})

    errors = caught.value.errors()
    assert len(errors) == 1
    assert "non-finite" in errors[0]["msg"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=40,
)


@given(JSON)
def test_the_cheap_proof_never_passes_what_the_walk_refuses(value: Any) -> None:
    # NaN, infinities and NUL come up often from these strategies: the shortcut must send
    # every one of them to the walk
    if _surely_storable(value):
        assert find_unstorable(value) is None


@pytest.mark.parametrize(
    ("value", "walked"),
    [
        ({"a": ["clean", 1.5]}, False),
        ({"a": "x\x00y"}, True),
        ({"a": math.nan}, True),
        ({"a": "literal \\u0000 text"}, True),  # decided by the walk: storable
        (_nested(MAX_DEPTH, 1), False),
        (_nested(MAX_DEPTH + 1, 1), True),
    ],
)
def test_the_walk_runs_only_when_the_cheap_proof_fails(value: Any, walked: bool) -> None:
    assert _surely_storable(value) is not walked


def test_deep_bodies_are_still_refused_through_the_model() -> None:
    with pytest.raises(ValidationError, match="nesting deeper"):
        Body.model_validate({"name": "ok", "extra": {"deep": _nested(MAX_DEPTH + 1, 1)}})
