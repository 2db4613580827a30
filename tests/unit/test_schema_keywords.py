"""Keywords replaced for bounded time and total behaviour: uniqueItems (linear time, same
equality as jsonschema) and multipleOf (exact past the float range)."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from handoffrail_server.schema_registry import validation

UNIQUE = {"type": "array", "uniqueItems": True}

CASES: list[tuple[str, list[Any], bool]] = [
    ("empty", [], True),
    ("ints", [1, 2, 3], True),
    ("int-and-float-equal", [1, 1.0], False),
    ("true-and-one-differ", [True, 1], True),
    ("false-and-zero-differ", [False, 0], True),
    ("null-and-false-differ", [None, False], True),
    ("two-nulls", [None, None], False),
    ("strings", ["a", "b", "a"], False),
    ("string-and-number-differ", ["1", 1], True),
    ("objects-key-order", [{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),
    ("objects-differ", [{"a": 1}, {"a": 2}], True),
    ("objects-bool-vs-int", [{"a": True}, {"a": 1}], True),
    ("nested-float-int", [{"a": [1, {"b": 2}]}, {"a": [1.0, {"b": 2.0}]}], False),
    ("arrays-order-matters", [[1, 2], [2, 1]], True),
    ("arrays-equal", [[1, [2]], [1, [2]]], False),
    ("array-vs-object", [[], {}], True),
    ("mixed-types", [1, "1", [1], {"1": 1}, None, True], True),
]


@pytest.mark.parametrize(
    ("items", "unique"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize(
    "draft", [Draft202012Validator, Draft7Validator], ids=["2020-12", "draft7"]
)
def test_same_answer_as_jsonschema(items: list[Any], unique: bool, draft: Any) -> None:
    schema = {**UNIQUE, "$schema": draft.META_SCHEMA["$schema"]}
    ours = validation.first_error(schema, items) is None
    theirs = draft(schema).is_valid(items)
    assert ours == theirs == unique


def test_thousands_of_objects_are_compared_by_hash_not_in_pairs() -> None:
    """jsonschema's pairwise fallback took ~20 s for 5,000 objects; the budget is 0.25 s."""
    items = [{"id": n, "tags": [str(n)]} for n in range(50_000)]
    assert validation.first_error(UNIQUE, items) is None
    error = validation.first_error(UNIQUE, [*items, {"tags": ["7"], "id": 7.0}])
    assert error is not None
    assert error.message.endswith("has non-unique elements")
    assert len(error.message) < 200  # not the whole array


def test_unique_items_false_allows_duplicates() -> None:
    assert validation.first_error({"type": "array", "uniqueItems": False}, [1, 1]) is None


@pytest.mark.parametrize(
    ("divisor", "instance", "multiple"),
    [
        (0.5, 10**400, True),
        (0.3, 10**400 + 1, False),
        (0.25, 10**400 + 2, True),
        (0.125, 10**400 + 3, True),
        (0.5, 3, True),
        (0.5, 2.25, False),
    ],
    ids=["huge-half", "huge-point-three", "huge-quarter", "huge-eighth", "small", "small-float"],
)
@pytest.mark.parametrize("keyword", ["multipleOf", "divisibleBy"])
def test_multiple_of_a_float_checks_integers_past_float_range_exactly(
    keyword: str, divisor: float, instance: float, multiple: bool
) -> None:
    """jsonschema divides in floating point: past ~1e308 it raised OverflowError (a 500)."""
    schema: dict[str, Any] = {keyword: divisor}
    if keyword == "divisibleBy":
        schema["$schema"] = "http://json-schema.org/draft-03/schema#"
    assert (validation.first_error(schema, instance) is None) is multiple
