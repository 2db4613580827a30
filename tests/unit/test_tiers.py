"""The tier table (seed 000), `HR_TIER_QUOTAS` overrides and the quota window arithmetic."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from handoffrail_server.clock import FrozenClock
from handoffrail_server.limits.ratelimit import Decision
from handoffrail_server.limits.service import seconds_until_utc_midnight, utc_day
from handoffrail_server.limits.tiers import (
    DEFAULT_TIERS,
    TIER_NAMES,
    TierConfigError,
    allows,
    as_dict,
    effective_quotas,
    parse_overrides,
)
from handoffrail_server.settings import Settings, SettingsError, load_settings

KIB = 1024

# Seed 000's table, column by column: Free / Pro / Business (None = unlimited).
SEED_TABLE: dict[str, tuple[Any, Any, Any]] = {
    "handoffs_per_day": (5, None, None),
    "max_agents": (2, 10, 50),
    "max_api_keys": (1, 5, 25),
    "max_packet_size": (64 * KIB, 256 * KIB, 1024 * KIB),
    "requests_per_hour": (100, 1_000, 10_000),
    "max_webhooks": (0, 5, None),
    "audit_retention_days": (0, 30, None),
    "audit_enabled": (False, True, True),
    "audit_export": (False, False, True),
}

# Seed 000's HR_TIER_QUOTAS example, verbatim.
SEED_EXAMPLE = """{
  "free": {"handoffs_per_day": 10, "max_agents": 3, "max_api_keys": 2, "max_packet_size": 65536,
           "unlimited_handoffs": false},
  "pro": {"handoffs_per_day": 0, "max_agents": 20, "max_api_keys": 10, "max_packet_size": 524288,
          "unlimited_handoffs": true}
}"""


# -- the table ----------------------------------------------------------------------------------


def test_there_are_exactly_three_tiers_in_price_order() -> None:
    assert TIER_NAMES == ("free", "pro", "business")
    assert set(DEFAULT_TIERS) == set(TIER_NAMES)


@pytest.mark.parametrize("limit", sorted(SEED_TABLE))
@pytest.mark.parametrize(("index", "tier"), list(enumerate(TIER_NAMES)))
def test_tier_table_matches_seed_000(limit: str, index: int, tier: str) -> None:
    assert getattr(DEFAULT_TIERS[tier], limit) == SEED_TABLE[limit][index]


def test_tier_table_has_no_limit_the_seed_does_not_list() -> None:
    assert set(as_dict(DEFAULT_TIERS["free"])) == set(SEED_TABLE)


def test_packet_sizes_are_the_seed_byte_counts() -> None:
    sizes = [DEFAULT_TIERS[tier].max_packet_size for tier in TIER_NAMES]
    assert sizes == [65_536, 262_144, 1_048_576]


def test_limits_grow_with_the_tier() -> None:
    free, pro, business = (DEFAULT_TIERS[tier] for tier in TIER_NAMES)
    for name in ("max_agents", "max_api_keys", "max_packet_size", "requests_per_hour"):
        assert getattr(free, name) < getattr(pro, name) < getattr(business, name), name


def test_quotas_are_immutable() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_TIERS["free"].max_agents = 99  # type: ignore[misc]


@pytest.mark.parametrize(
    ("limit", "used", "wanted", "expected"),
    [
        (None, 10**9, 1, True),
        (5, 4, 1, True),
        (5, 5, 1, False),
        (5, 0, 5, True),
        (5, 0, 6, False),
        (0, 0, 1, False),
    ],
)
def test_allows_treats_none_as_unlimited_and_the_limit_as_inclusive(
    limit: int | None, used: int, wanted: int, expected: bool
) -> None:
    assert allows(limit, used, wanted) is expected


# -- HR_TIER_QUOTAS parsing ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", {}, "{}"])
def test_no_overrides_give_the_seed_table(raw: str | dict[str, Any] | None) -> None:
    assert parse_overrides(raw) == DEFAULT_TIERS


def test_parsing_never_mutates_the_default_table() -> None:
    before = dict(DEFAULT_TIERS)
    parse_overrides({"free": {"max_agents": 9}})
    assert before == DEFAULT_TIERS


def test_seed_000_example_applies_every_key() -> None:
    tiers = parse_overrides(SEED_EXAMPLE)
    free, pro = tiers["free"], tiers["pro"]
    assert (free.handoffs_per_day, free.max_agents, free.max_api_keys) == (10, 3, 2)
    assert free.max_packet_size == 65_536
    assert (pro.max_agents, pro.max_api_keys, pro.max_packet_size) == (20, 10, 524_288)
    assert pro.handoffs_per_day is None, "unlimited_handoffs: true wins over handoffs_per_day: 0"
    assert tiers["business"] == DEFAULT_TIERS["business"]


def test_override_of_one_key_keeps_the_others() -> None:
    tiers = parse_overrides('{"free": {"handoffs_per_day": 10, "requests_per_hour": 200}}')
    assert tiers["free"] == replace(
        DEFAULT_TIERS["free"], handoffs_per_day=10, requests_per_hour=200
    )
    assert tiers["pro"] == DEFAULT_TIERS["pro"]


def test_a_dict_is_accepted_as_well_as_json_text() -> None:
    assert parse_overrides({"pro": {"max_webhooks": 7}}) == parse_overrides(
        json.dumps({"pro": {"max_webhooks": 7}})
    )


def test_null_makes_a_limit_unlimited() -> None:
    tiers = parse_overrides({"free": {"handoffs_per_day": None, "max_agents": None}})
    assert tiers["free"].handoffs_per_day is None
    assert tiers["free"].max_agents is None


def test_zero_is_a_valid_limit() -> None:
    assert parse_overrides({"pro": {"max_webhooks": 0}})["pro"].max_webhooks == 0


def test_unlimited_handoffs_false_keeps_the_daily_limit() -> None:
    tiers = parse_overrides({"free": {"unlimited_handoffs": False}})
    assert tiers["free"].handoffs_per_day == 5


def test_audit_retention_override_switches_audit_on_and_off() -> None:
    tiers = parse_overrides(
        {"free": {"audit_retention_days": 7}, "pro": {"audit_retention_days": 0}}
    )
    assert tiers["free"].audit_enabled is True
    assert tiers["pro"].audit_enabled is False


def _error(raw: str | dict[str, Any]) -> str:
    with pytest.raises(TierConfigError) as caught:
        parse_overrides(raw)
    return str(caught.value)


@pytest.mark.parametrize(
    "raw", ["{", "not json", '{"free": {"max_agents": 3,}}', "{'free': {}}", '{"free": NaN']
)
def test_bad_json_is_refused(raw: str) -> None:
    message = _error(raw)
    assert message.startswith("HR_TIER_QUOTAS:")
    assert "JSON" in message


@pytest.mark.parametrize("raw", ["[]", '"free"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_refused(raw: str) -> None:
    assert "HR_TIER_QUOTAS" in _error(raw)


def test_unknown_tier_is_refused_naming_it() -> None:
    message = _error({"enterprise": {"max_agents": 100}})
    assert "'enterprise'" in message
    assert "free" in message
    assert "business" in message


def test_tier_names_are_case_sensitive() -> None:
    assert "'Free'" in _error({"Free": {"max_agents": 1}})


def test_unknown_key_is_refused_naming_tier_and_key() -> None:
    message = _error({"pro": {"max_agent": 3}})
    assert "pro.max_agent" in message


def test_tier_value_must_be_an_object() -> None:
    assert "free" in _error({"free": 10})


@pytest.mark.parametrize(
    "key",
    [
        "handoffs_per_day",
        "max_agents",
        "max_api_keys",
        "requests_per_hour",
        "max_webhooks",
        "audit_retention_days",
        "max_packet_size",
    ],
)
@pytest.mark.parametrize("value", [-1, -1000, True, False, 1.5, "10", [3], {"n": 1}])
def test_bad_numbers_are_refused_naming_tier_and_key(key: str, value: object) -> None:
    message = _error({"business": {key: value}})
    assert f"business.{key}" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", [None, 0])
def test_packet_size_must_be_positive(value: int | None) -> None:
    assert "free.max_packet_size" in _error({"free": {"max_packet_size": value}})


@pytest.mark.parametrize("value", [1, 0, "true", "yes"])
def test_unlimited_handoffs_must_be_a_boolean(value: object) -> None:
    assert "pro.unlimited_handoffs" in _error({"pro": {"unlimited_handoffs": value}})


def test_first_bad_key_of_a_later_tier_is_reported() -> None:
    message = _error({"free": {"max_agents": 3}, "pro": {"max_api_keys": -5}})
    assert "pro.max_api_keys" in message


def test_tier_config_error_is_a_value_error() -> None:
    assert issubclass(TierConfigError, ValueError)


# -- Settings -----------------------------------------------------------------------------------


def test_settings_apply_tier_quotas() -> None:
    settings = Settings(tier_quotas='{"free": {"handoffs_per_day": 10, "requests_per_hour": 200}}')
    assert settings.tiers["free"].handoffs_per_day == 10
    assert settings.tiers["free"].requests_per_hour == 200
    assert settings.tiers["pro"] == DEFAULT_TIERS["pro"]


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_settings_without_tier_quotas_use_the_seed_table(raw: str | None) -> None:
    settings = Settings(tier_quotas=raw)
    assert settings.tier_quotas is None
    assert settings.tiers == DEFAULT_TIERS


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "HR_TIER_QUOTAS"),
        ('{"gold": {}}', "'gold'"),
        ('{"free": {"max_widgets": 1}}', "free.max_widgets"),
        ('{"free": {"max_agents": -2}}', "free.max_agents"),
        ('{"pro": {"max_api_keys": true}}', "pro.max_api_keys"),
    ],
)
def test_load_settings_refuses_bad_tier_quotas_naming_the_variable(raw: str, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(tier_quotas=raw)
    message = str(caught.value)
    assert message.startswith("HR_TIER_QUOTAS:")
    assert named in message


def test_tier_quotas_from_the_environment_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HR_TIER_QUOTAS", '{"free": {"handoffs_per_day": -1}}')
    with pytest.raises(SettingsError, match=r"HR_TIER_QUOTAS: free\.handoffs_per_day"):
        load_settings()
    monkeypatch.setenv("HR_TIER_QUOTAS", '{"free": {"handoffs_per_day": 50}}')
    assert load_settings().tiers["free"].handoffs_per_day == 50


# -- a tenant's effective quotas ----------------------------------------------------------------


def test_tenant_without_overrides_gets_its_tier() -> None:
    assert effective_quotas(DEFAULT_TIERS, "pro") == DEFAULT_TIERS["pro"]


def test_tenant_overrides_win_over_the_tier() -> None:
    quotas = effective_quotas(DEFAULT_TIERS, "free", handoffs_per_day=50, max_api_keys=3)
    assert (quotas.handoffs_per_day, quotas.max_api_keys) == (50, 3)
    assert quotas.max_agents == DEFAULT_TIERS["free"].max_agents
    assert DEFAULT_TIERS["free"].handoffs_per_day == 5, "the shared table is untouched"


def test_tenant_override_can_limit_an_unlimited_tier() -> None:
    quotas = effective_quotas(DEFAULT_TIERS, "business", handoffs_per_day=0)
    assert quotas.handoffs_per_day == 0


def test_tenant_override_applies_over_env_overrides() -> None:
    tiers = parse_overrides({"free": {"handoffs_per_day": 10, "max_api_keys": 2}})
    quotas = effective_quotas(tiers, "free", max_api_keys=4)
    assert (quotas.handoffs_per_day, quotas.max_api_keys) == (10, 4)


def test_unknown_stored_tier_falls_back_to_free() -> None:
    assert effective_quotas(DEFAULT_TIERS, "platinum") == DEFAULT_TIERS["free"]


# -- window arithmetic --------------------------------------------------------------------------

DAY = 24 * 3600


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2025-03-10T00:00:00+00:00", DAY),
        ("2025-03-10T00:00:00.000001+00:00", DAY),
        ("2025-03-10T00:00:01+00:00", DAY - 1),
        ("2025-03-10T12:00:00+00:00", DAY // 2),
        ("2025-03-10T23:00:00+00:00", 3600),
        ("2025-03-10T23:59:00+00:00", 60),
        ("2025-03-10T23:59:59+00:00", 1),
        ("2025-03-10T23:59:59.500000+00:00", 1),
        ("2025-03-10T23:59:59.999999+00:00", 1),
        ("2025-03-10T23:59:58.250000+00:00", 2),
        ("2024-02-28T23:59:59+00:00", 1),
        ("2024-12-31T18:30:00+00:00", 5 * 3600 + 1800),
    ],
)
def test_seconds_until_utc_midnight(moment: str, expected: int) -> None:
    assert seconds_until_utc_midnight(_at(moment)) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2025-03-10T00:00:00+00:00", "2025-03-10"),
        ("2025-03-10T23:59:59.999999+00:00", "2025-03-10"),
        ("2024-02-29T12:00:00+00:00", "2024-02-29"),
        ("2024-12-31T23:59:59+00:00", "2024-12-31"),
        ("2025-01-01T00:00:00+00:00", "2025-01-01"),
    ],
)
def test_utc_day(moment: str, expected: str) -> None:
    assert utc_day(_at(moment)) == expected


def test_other_timezones_count_by_the_utc_day() -> None:
    # 23:30 in New York (UTC-5) is already 04:30 the next day in UTC.
    new_york = datetime(2025, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_day(new_york) == "2025-01-02"
    assert seconds_until_utc_midnight(new_york) == 19 * 3600 + 1800
    # 00:30 in Berlin (UTC+1) is still 23:30 of the previous day in UTC.
    berlin = datetime(2025, 1, 2, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert utc_day(berlin) == "2025-01-01"
    assert seconds_until_utc_midnight(berlin) == 1800


def test_frozen_clock_walks_across_midnight() -> None:
    clock = FrozenClock(datetime(2025, 6, 30, 23, 59, 59, 500_000, tzinfo=UTC))
    assert (utc_day(clock.now()), seconds_until_utc_midnight(clock.now())) == ("2025-06-30", 1)
    clock.advance(0.5)
    assert clock.now() == datetime(2025, 7, 1, tzinfo=UTC)
    assert (utc_day(clock.now()), seconds_until_utc_midnight(clock.now())) == ("2025-07-01", DAY)
    clock.advance(DAY - 1)
    assert (utc_day(clock.now()), seconds_until_utc_midnight(clock.now())) == ("2025-07-01", 1)


def test_retry_after_reaches_exactly_midnight() -> None:
    moment = datetime(2025, 3, 10, 17, 42, 13, 250_000, tzinfo=UTC)
    midnight = datetime(2025, 3, 11, tzinfo=UTC)
    waited = moment + timedelta(seconds=seconds_until_utc_midnight(moment))
    assert timedelta(0) <= waited - midnight < timedelta(seconds=1)
    assert utc_day(waited) != utc_day(moment)


@pytest.mark.parametrize(("reset_after", "expected"), [(0, 1), (1, 1), (42, 42), (3600, 3600)])
def test_retry_after_of_a_decision_is_at_least_one_second(reset_after: int, expected: int) -> None:
    decision = Decision(allowed=False, limit=5, remaining=0, reset_after=reset_after, window=60)
    assert decision.retry_after == expected
