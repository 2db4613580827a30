"""Seconds until a rate-limit window frees capacity (pure)."""

from __future__ import annotations

import math

import pytest

from handoffrail_server.limits.ratelimit import reset_after


@pytest.mark.parametrize(
    ("seconds", "window", "remaining", "expected"),
    [
        (12.2, 60, 0, 13),  # rounded up: never claim capacity before it frees
        (59.9, 60, 0, 60),
        (75.0, 60, 0, 60),  # never beyond the window
        (0.0, 60, 0, 60),  # `limits`' modulo at the window boundary: a whole window
        (-0.4, 3600, 0, 3600),
        (math.inf, 60, 0, 60),
        (math.nan, 60, 0, 60),
        (0.0, 60, 2, 0),  # capacity left: nothing to wait for
        (-1.0, 60, 1, 0),
        (0.3, 60, 1, 1),
    ],
)
def test_reset_after(seconds: float, window: int, remaining: int, expected: int) -> None:
    assert reset_after(seconds, window, remaining) == expected
