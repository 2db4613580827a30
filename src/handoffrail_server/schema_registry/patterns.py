"""Regular expressions of tenants' JSON Schemas (`pattern`, `patternProperties`), in bounded time.

`re` backtracks without bound: `^(a|aa)+$` against forty `a`s and a `!` runs for minutes, and it
holds the GIL the whole time, so no thread or `asyncio` timeout can stop it (a tenant's schema
could stall every request of the process). The `regex` module reads the same syntax as `re`
(its V0 mode: lookaround and backreferences included, as json-schema.org recommends) and stops a
match at a timeout. One validation has one time `Budget`, shared by all its matches.
"""

from __future__ import annotations

import time
from functools import lru_cache

import regex

#: patterns compiled once per process (a schema's patterns repeat across packets)
CACHED_PATTERNS = 1024


class PatternUnsupported(ValueError):
    """The pattern is not a valid regular expression."""


class BudgetExceeded(RuntimeError):
    """Validation (its regular expressions included) needed more time than its budget."""


class Budget:
    """A validation's time, spent by each keyword and each match (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; `BudgetExceeded` when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BudgetExceeded("validation exceeded its time budget")
        return left


@lru_cache(maxsize=CACHED_PATTERNS)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """`pattern` compiled, or `PatternUnsupported` saying why not."""
    try:
        return regex.compile(pattern, regex.VERSION0)
    except (regex.error, OverflowError, RecursionError, ValueError) as exc:
        raise PatternUnsupported(str(exc)) from None


def search(pattern: str, text: str, budget: Budget) -> bool:
    """Whether `pattern` matches anywhere in `text` (as `re.search`), within `budget`."""
    try:
        return compile_pattern(pattern).search(text, timeout=budget.remaining()) is not None
    except TimeoutError:
        raise BudgetExceeded("regular expressions exceeded their time budget") from None
