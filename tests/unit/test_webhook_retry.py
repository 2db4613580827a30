"""Retry schedule: the original server's delays, ±10 % jitter, attempt and horizon cut-offs."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from handoffrail_server.webhooks import retry

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
DAY = 86_400.0


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(1, 1), (2, 5), (3, 30), (4, 300), (5, 3600), (6, 21600), (7, 21600), (20, 21600)],
)
def test_delay_after_n_failures_follows_the_schedule(attempts: int, seconds: int) -> None:
    assert retry.delay_after(attempts) == seconds


def test_no_delay_before_the_first_attempt() -> None:
    assert retry.delay_after(0) == 0.0
    assert retry.delay_after(-3) == 0.0


@pytest.mark.parametrize("attempts", range(1, 8))
def test_jitter_is_bounded_to_ten_percent(attempts: int) -> None:
    base = retry.delay_after(attempts)
    assert retry.delay_after(attempts, 1.0) == pytest.approx(base * 1.1)
    assert retry.delay_after(attempts, -1.0) == pytest.approx(base * 0.9)
    # out-of-range jitter is clamped
    assert retry.delay_after(attempts, 5.0) == pytest.approx(base * 1.1)
    assert retry.delay_after(attempts, -5.0) == pytest.approx(base * 0.9)


@pytest.mark.parametrize("attempts", range(1, 7))
def test_next_attempt_stays_within_the_jitter_band(attempts: int) -> None:
    rng = random.Random(1234 + attempts)
    base = retry.BASE_DELAYS_SECONDS[attempts - 1]
    seen: set[float] = set()
    for _ in range(200):
        when = retry.next_attempt(
            attempts, NOW, NOW, max_attempts=10, horizon_seconds=7 * DAY, rng=rng
        )
        assert when is not None
        delay = (when - NOW).total_seconds()
        assert base * 0.9 - 1e-6 <= delay <= base * 1.1 + 1e-6
        seen.add(round(delay, 6))
    assert len(seen) > 100  # really jittered, not a constant


def test_next_attempt_is_reproducible_with_a_seeded_rng() -> None:
    first = retry.next_attempt(
        3, NOW, NOW, max_attempts=7, horizon_seconds=DAY, rng=random.Random(7)
    )
    second = retry.next_attempt(
        3, NOW, NOW, max_attempts=7, horizon_seconds=DAY, rng=random.Random(7)
    )
    assert first == second


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "gives_up"),
    [(1, 2, False), (2, 2, True), (3, 2, True), (6, 7, False), (7, 7, True), (1, 1, True)],
)
def test_max_attempts_dead_letters(attempts: int, max_attempts: int, gives_up: bool) -> None:
    when = retry.next_attempt(
        attempts, NOW, NOW, max_attempts=max_attempts, horizon_seconds=7 * DAY
    )
    assert (when is None) is gives_up


def test_the_default_schedule_dead_letters_after_seven_attempts() -> None:
    created = NOW
    now = NOW
    rng = random.Random(0)
    tries = 0
    for attempts in range(1, 20):
        tries = attempts
        when = retry.next_attempt(
            attempts, now, created, max_attempts=7, horizon_seconds=2 * DAY, rng=rng
        )
        if when is None:
            break
        now = when
    assert tries == 7
    # six waits of roughly 1 s + 5 s + 30 s + 5 min + 1 h + 6 h
    assert timedelta(hours=6.5) < now - created < timedelta(hours=8)


def test_a_retry_past_the_horizon_dead_letters() -> None:
    created = NOW - timedelta(seconds=100)
    # the 30 s retry would land 130 s after creation: beyond a 120 s horizon
    assert (
        retry.next_attempt(
            3, NOW, created, max_attempts=50, horizon_seconds=120, rng=random.Random(1)
        )
        is None
    )
    # the 5 s retry lands 105 s after creation even with +10 % jitter: inside it
    when = retry.next_attempt(
        2, NOW, created, max_attempts=50, horizon_seconds=120, rng=random.Random(1)
    )
    assert when is not None
    assert when <= created + timedelta(seconds=120)


def test_horizon_is_measured_from_creation_not_from_the_last_attempt() -> None:
    created = NOW - timedelta(days=2)
    assert retry.next_attempt(1, NOW, created, max_attempts=50, horizon_seconds=DAY) is None
    assert retry.next_attempt(1, NOW, NOW, max_attempts=50, horizon_seconds=DAY) is not None
