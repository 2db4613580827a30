"""The tier table (PURE): seed 000's Free / Pro / Business limits and `HR_TIER_QUOTAS` overrides.

`None` means unlimited. A tenant's own `handoffs_per_day` / `max_api_keys` override its tier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

TIER_NAMES = ("free", "pro", "business")
KB = 1024


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits of one tier; `None` is unlimited."""

    handoffs_per_day: int | None
    max_agents: int | None
    max_api_keys: int | None
    max_packet_size: int
    requests_per_hour: int | None
    max_webhooks: int | None
    audit_retention_days: int | None
    audit_enabled: bool
    audit_export: bool


#: seed 000's tier table
DEFAULT_TIERS: dict[str, Quotas] = {
    "free": Quotas(
        handoffs_per_day=5,
        max_agents=2,
        max_api_keys=1,
        max_packet_size=64 * KB,
        requests_per_hour=100,
        max_webhooks=0,
        audit_retention_days=0,
        audit_enabled=False,
        audit_export=False,
    ),
    "pro": Quotas(
        handoffs_per_day=None,
        max_agents=10,
        max_api_keys=5,
        max_packet_size=256 * KB,
        requests_per_hour=1_000,
        max_webhooks=5,
        audit_retention_days=30,
        audit_enabled=True,
        audit_export=False,
    ),
    "business": Quotas(
        handoffs_per_day=None,
        max_agents=50,
        max_api_keys=25,
        max_packet_size=1024 * KB,
        requests_per_hour=10_000,
        max_webhooks=None,
        audit_retention_days=None,
        audit_enabled=True,
        audit_export=True,
    ),
}

_INT_OR_NULL = {
    "handoffs_per_day",
    "max_agents",
    "max_api_keys",
    "requests_per_hour",
    "max_webhooks",
    "audit_retention_days",
}
_KNOWN_KEYS = {*_INT_OR_NULL, "max_packet_size", "unlimited_handoffs"}


class TierConfigError(ValueError):
    """`HR_TIER_QUOTAS` is invalid; the message names the tier and key."""


def _check_int(tier: str, key: str, value: Any, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        allowed = "a non-negative integer or null" if nullable else "a positive integer"
        raise TierConfigError(f"HR_TIER_QUOTAS: {tier}.{key} must be {allowed}, got {value!r}")
    return value


def parse_overrides(raw: str | dict[str, Any] | None) -> dict[str, Quotas]:
    """The tier table with `raw` (JSON text or dict) applied over the defaults.

    Seed 000's keys are accepted, including `unlimited_handoffs` (true makes handoffs unlimited;
    a `handoffs_per_day` of 0 together with it is also unlimited).
    """
    tiers = dict(DEFAULT_TIERS)
    if raw is None or raw == "":
        return tiers
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TierConfigError(f"HR_TIER_QUOTAS: not valid JSON ({exc.msg})") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise TierConfigError("HR_TIER_QUOTAS: must be a JSON object keyed by tier name")
    for tier, overrides in data.items():
        if tier not in tiers:
            raise TierConfigError(
                f"HR_TIER_QUOTAS: unknown tier {tier!r}; expected one of {list(TIER_NAMES)}"
            )
        if not isinstance(overrides, dict):
            raise TierConfigError(f"HR_TIER_QUOTAS: {tier} must be an object of limits")
        unknown = set(overrides) - _KNOWN_KEYS
        if unknown:
            raise TierConfigError(
                f"HR_TIER_QUOTAS: unknown key {tier}.{sorted(unknown)[0]}; "
                f"expected some of {sorted(_KNOWN_KEYS)}"
            )
        changes: dict[str, Any] = {}
        for key in _INT_OR_NULL & overrides.keys():
            changes[key] = _check_int(tier, key, overrides[key], nullable=True)
        if "max_packet_size" in overrides:
            size = _check_int(tier, "max_packet_size", overrides["max_packet_size"], nullable=False)
            if not size:
                raise TierConfigError(f"HR_TIER_QUOTAS: {tier}.max_packet_size must be > 0")
            changes["max_packet_size"] = size
        unlimited = overrides.get("unlimited_handoffs")
        if unlimited is not None and not isinstance(unlimited, bool):
            raise TierConfigError(f"HR_TIER_QUOTAS: {tier}.unlimited_handoffs must be true/false")
        if unlimited:
            changes["handoffs_per_day"] = None
        if "audit_retention_days" in changes:
            changes["audit_enabled"] = changes["audit_retention_days"] != 0
        tiers[tier] = replace(tiers[tier], **changes)
    return tiers


def effective_quotas(
    tiers: dict[str, Quotas],
    tier: str,
    *,
    handoffs_per_day: int | None = None,
    max_api_keys: int | None = None,
) -> Quotas:
    """A tenant's limits: its tier's, with the tenant's own overrides on top."""
    base = tiers.get(tier, tiers["free"])
    changes: dict[str, Any] = {}
    if handoffs_per_day is not None:
        changes["handoffs_per_day"] = handoffs_per_day
    if max_api_keys is not None:
        changes["max_api_keys"] = max_api_keys
    return replace(base, **changes) if changes else base


def as_dict(quotas: Quotas) -> dict[str, Any]:
    """Plain dict of a tier's limits (for the usage endpoint)."""
    return {field.name: getattr(quotas, field.name) for field in fields(quotas)}


def allows(limit: int | None, used: int, wanted: int = 1) -> bool:
    """True when `used + wanted` stays within `limit` (None is unlimited)."""
    return limit is None or used + wanted <= limit
