"""The principal cache's rules (keys/cache.py): used only while enabled, never stores a lookup
that raced a clear, expires entries, stays bounded."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from handoffrail_server.keys.cache import PrincipalCache, clear_all, connect_arguments


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cache(ticks: Ticks, *, enabled: bool = True, max_entries: int = 10) -> PrincipalCache:
    cache = PrincipalCache(5.0, max_entries=max_entries, clock=ticks)
    if enabled:
        cache.enable()
    return cache


def _fill(cache: PrincipalCache, key: str = "h1", value: str = "p1") -> None:
    cache.put(key, value, cache.generation())


def _fresh(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)


def _expired(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    ticks.now += 5.0


def _nearly_expired(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    ticks.now += 4.9


def _cleared(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    cache.clear()


def _cleared_process_wide(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    clear_all()


def _disabled(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    cache.disable()


def _re_enabled(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache)
    cache.disable()
    cache.enable()


def _raced_a_clear(cache: PrincipalCache, ticks: Ticks) -> None:
    generation = cache.generation()  # the lookup starts...
    cache.clear()  # ...a notice arrives while it runs...
    cache.put("h1", "p1", generation)  # ...and its (maybe stale) result is dropped


def _begun_after_a_clear(cache: PrincipalCache, ticks: Ticks) -> None:
    cache.clear()
    _fill(cache)


def _other_key(cache: PrincipalCache, ticks: Ticks) -> None:
    _fill(cache, "h2", "p2")


STEPS: list[tuple[str, Callable[[PrincipalCache, Ticks], None], str | None]] = [
    ("a fresh entry is served", _fresh, "p1"),
    ("not served once its time is up", _expired, None),
    ("served just before", _nearly_expired, "p1"),
    ("cleared", _cleared, None),
    ("cleared by clear_all", _cleared_process_wide, None),
    ("disabled", _disabled, None),
    ("re-enabled: nothing from before", _re_enabled, None),
    ("a lookup that raced a clear is dropped", _raced_a_clear, None),
    ("a lookup begun after the clear is kept", _begun_after_a_clear, "p1"),
    ("other keys are not served", _other_key, None),
]


@pytest.mark.parametrize(("name", "steps", "served"), STEPS, ids=[step[0] for step in STEPS])
def test_cache_rules(
    name: str, steps: Callable[[PrincipalCache, Ticks], None], served: str | None
) -> None:
    ticks = Ticks()
    cache = _cache(ticks)
    steps(cache, ticks)
    assert cache.get("h1") == served, name


def test_a_disabled_cache_stores_and_serves_nothing() -> None:
    cache = _cache(Ticks(), enabled=False)
    _fill(cache)
    assert len(cache) == 0
    assert cache.get("h1") is None


def test_the_cache_stays_within_its_bound() -> None:
    cache = _cache(Ticks(), max_entries=3)
    for index in range(10):
        _fill(cache, f"h{index}", f"p{index}")
        assert len(cache) <= 3
    assert cache.get("h9") == "p9"


def test_the_listener_connects_like_the_engine_but_outside_its_pool() -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://app:pw@db.internal:6543/handoffrail?timeout=3&ssl=require"
    )
    arguments = connect_arguments(engine)
    assert arguments["host"] == "db.internal"
    assert arguments["port"] == 6543
    assert (arguments["user"], arguments["password"]) == ("app", "pw")
    assert arguments["database"] == "handoffrail"
    assert arguments["ssl"] == "require"
    assert arguments["timeout"] == 3.0  # the URL's own (as a number), not a second keyword
    assert arguments["statement_cache_size"] == 0
    assert arguments["server_settings"] == {"application_name": "handoffrail-listener"}
