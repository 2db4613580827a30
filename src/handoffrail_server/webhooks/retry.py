"""Retry schedule (PURE): the original server's delays with jitter, and when to give up."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

#: delay before retry n (after the n-th failed attempt): 1 s, 5 s, 30 s, 5 min, 1 h, 6 h
BASE_DELAYS_SECONDS: tuple[int, ...] = (1, 5, 30, 300, 3600, 21600)
JITTER_FRACTION = 0.1


def delay_after(attempts: int, jitter: float = 0.0) -> float:
    """Seconds to wait after `attempts` failed attempts; `jitter` in [-1, 1] scales ±10 %."""
    if attempts < 1:
        return 0.0
    base = BASE_DELAYS_SECONDS[min(attempts, len(BASE_DELAYS_SECONDS)) - 1]
    return base * (1 + JITTER_FRACTION * max(-1.0, min(1.0, jitter)))


def next_attempt(
    attempts: int,
    now: datetime,
    first_created: datetime,
    *,
    max_attempts: int,
    horizon_seconds: float,
    rng: random.Random | None = None,
) -> datetime | None:
    """When to try again after `attempts` failures, or None to dead-letter the delivery."""
    if attempts >= max_attempts:
        return None
    jitter = (rng or random).uniform(-1.0, 1.0)
    when = now + timedelta(seconds=delay_after(attempts, jitter))
    if when > first_created + timedelta(seconds=horizon_seconds):
        return None
    return when
