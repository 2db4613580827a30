"""Tenants' JSON Schema patterns on the `regex` module: `re`'s answers and syntax, bounded time.

`re` itself would run the catastrophic cases here for minutes; each is stopped by the validation's
time budget instead (a budget of 0 s refuses at once, whatever the pattern).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handoffrail_server.schema_registry.patterns import (
    Budget,
    BudgetExceeded,
    PatternUnsupported,
    compile_pattern,
    search,
)

PATTERNS = [
    r"^[a-z0-9_-]{3,16}$",
    r"^\d{4}-\d{2}-\d{2}$",
    r"^(\([0-9]{3}\))?[0-9]{3}-[0-9]{4}$",
    r"(a|b|)c",
    r"^$",
    r"a$",
    r"\Aab\Z",
    r"\bab\b",
    r"\w+@\w+\.com",
    r"^[^\s]+$",
    r"(?:a|b)+c?",
    r"a{2,}",
    r"[]a]",
    r"\u00e9+",
    r"^(?=.*[A-Z])(?=.*\d).{8,}$",  # lookahead: on json-schema.org's recommended list
    r"(a)\1",
    r"(?i)ab",
    r"(?<!a)b",
]
ALPHABET = "ab AB1 c\n_é-.@]x"


@pytest.mark.parametrize("pattern", PATTERNS)
@given(text=st.text(alphabet=ALPHABET, max_size=12))
def test_search_answers_as_re_search_does(pattern: str, text: str) -> None:
    expected = re.search(pattern, text) is not None
    assert search(pattern, text, Budget(5.0)) is expected


@pytest.mark.parametrize(
    ("pattern", "evil"),
    [
        (r"^(a|aa)+$", "a" * 60 + "!"),
        (r"^(a|ab|b)*$", "ab" * 40 + "!"),
        (r"^(\w|\w\w)+$", "ab" * 40 + "!"),
    ],
)
def test_catastrophic_matching_stops_at_the_budget(pattern: str, evil: str) -> None:
    """Both run for minutes under `re`; here the budget ends them with `BudgetExceeded`."""
    with pytest.raises(BudgetExceeded):
        search(pattern, evil, Budget(0.05))


def test_the_budget_is_shared_and_an_exhausted_one_refuses_at_once() -> None:
    budget = Budget(0.05)
    with pytest.raises(BudgetExceeded):
        search(r"^(a|aa)+$", "a" * 60 + "!", budget)
    with pytest.raises(BudgetExceeded):  # nothing left for a trivial match either
        search(r"^a", "a", budget)
    assert search(r"^a", "a", Budget(1.0)) is True


@pytest.mark.parametrize(
    "pattern", [r"(", r")", r"(?:a", r"[a", r"[z-a]", "a\\", r"a{3,2}", r"*a", r"(?P<n>a)(?P=m)"]
)
def test_invalid_syntax_is_refused(pattern: str) -> None:
    with pytest.raises(PatternUnsupported):
        compile_pattern(pattern)


def test_compiled_patterns_are_cached() -> None:
    assert compile_pattern(r"^[a-z]+$") is compile_pattern(r"^[a-z]+$")
