"""Quota use cases: daily handoffs, API keys, agents; the usage report.

Counters live in the database and change in the caller's transaction, so a packet that is not
created (validation error, rollback) never consumes quota.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from handoffrail_server.clock import Clock
from handoffrail_server.limits import repository
from handoffrail_server.limits.errors import DailyHandoffQuotaExceeded, QuotaExceeded
from handoffrail_server.limits.tiers import Quotas, as_dict
from handoffrail_server.observability import metrics

AGENT_TOUCH_INTERVAL = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's tier and effective quotas, resolved once per request."""

    tenant_id: str
    tier: str
    quotas: Quotas


def utc_day(moment: datetime) -> str:
    """`YYYY-MM-DD` of the UTC day containing `moment`."""
    return moment.astimezone(UTC).date().isoformat()


def seconds_until_utc_midnight(moment: datetime) -> int:
    """Whole seconds (at least 1) until the next UTC midnight."""
    moment = moment.astimezone(UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - moment).total_seconds() + 0.999))


async def consume_handoffs(
    session: AsyncSession, clock: Clock, limits: TenantLimits, count: int = 1
) -> None:
    """Take `count` handoffs from today's quota or raise 429 until UTC midnight."""
    limit = limits.quotas.handoffs_per_day
    if limit is None:
        return
    now = clock.now()
    total = await repository.add_handoffs(session, limits.tenant_id, utc_day(now), count, limit)
    if total is None:
        metrics.QUOTA_REJECTIONS.labels(limits.tier, "handoffs_per_day").inc()
        raise DailyHandoffQuotaExceeded(
            "Daily handoff limit reached for your tier",
            retry_after=seconds_until_utc_midnight(now),
            limit=limit,
            tier=limits.tier,
        )


async def check_api_key_quota(session: AsyncSession, limits: TenantLimits) -> None:
    """403 `quota.max_api_keys` when the tenant already has its maximum of active keys."""
    limit = limits.quotas.max_api_keys
    if limit is None:
        return
    if await repository.active_key_count(session, limits.tenant_id) >= limit:
        metrics.QUOTA_REJECTIONS.labels(limits.tier, "max_api_keys").inc()
        raise QuotaExceeded(
            f"The {limits.tier} tier allows {limit} active API key(s); revoke one first",
            quota="max_api_keys",
            limit=limit,
            tier=limits.tier,
        )


class RecentAgents:
    """Agents this process saw registered and touched lately (bounded; per process).

    Agent rows are never deleted (a deleted tenant is soft-deleted), so "registered" cannot go
    stale; skipping the touch only leaves `last_seen_at` up to AGENT_TOUCH_INTERVAL behind,
    which the conditional touch allows anyway. Saves three statements per packet create.
    """

    def __init__(self, max_entries: int = 50_000, ttl: timedelta = AGENT_TOUCH_INTERVAL) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._max = max_entries
        self._ttl = ttl.total_seconds()

    def fresh(self, tenant_id: str, agent_ids: Iterable[str]) -> bool:
        """True when every agent was seen within the TTL."""
        horizon = time.monotonic() - self._ttl
        return all(self._seen.get((tenant_id, agent), -1.0) > horizon for agent in agent_ids)

    def remember(self, tenant_id: str, agent_ids: Iterable[str]) -> None:
        """Mark `agent_ids` as seen now."""
        if len(self._seen) >= self._max:
            self._seen.clear()
        now = time.monotonic()
        for agent in agent_ids:
            self._seen[(tenant_id, agent)] = now

    def clear(self) -> None:
        """Forget everything (tests)."""
        self._seen.clear()


#: one memory per engine (per database): tests run several databases in one process
_recently_seen: weakref.WeakKeyDictionary[Any, RecentAgents] = weakref.WeakKeyDictionary()


def _recent_agents(session: AsyncSession) -> RecentAgents:
    engine = session.get_bind().engine  # the Engine also when bound to one of its connections
    memory = _recently_seen.get(engine)
    if memory is None:
        memory = _recently_seen[engine] = RecentAgents()
    return memory


def agents_remembered(session: AsyncSession, limits: TenantLimits, agent_ids: list[str]) -> bool:
    """True when `register_agents` would write nothing for these agents: registered, and seen
    within AGENT_TOUCH_INTERVAL by this process."""
    return _recent_agents(session).fresh(limits.tenant_id, agent_ids)


async def register_agents(
    session: AsyncSession,
    clock: Clock,
    limits: TenantLimits,
    agents: Iterable[tuple[str, str, str | None]],
) -> None:
    """Record the agents a packet names; a new agent past the tier's cap is refused (403)."""
    wanted: dict[str, tuple[str, str | None]] = {}
    for agent_id, name, framework in agents:
        wanted.setdefault(agent_id, (name, framework))
    if not wanted:
        return
    recent = _recent_agents(session)
    if recent.fresh(limits.tenant_id, wanted):
        return  # registered, and last_seen_at moved forward within AGENT_TOUCH_INTERVAL
    now = clock.now()
    known = await repository.known_agents(session, limits.tenant_id, list(wanted))
    for agent_id in known:
        await repository.touch_agent(
            session, limits.tenant_id, agent_id, now, now - AGENT_TOUCH_INTERVAL
        )
    # Only committed rows are remembered (an agent registered below may still roll back).
    recent.remember(limits.tenant_id, known)
    new_ids = [agent_id for agent_id in wanted if agent_id not in known]
    if not new_ids:
        return
    await repository.lock_tenant(session, limits.tenant_id)
    # Re-read under the lock: a concurrent request may have just registered some of them.
    registered = await repository.known_agents(session, limits.tenant_id, new_ids)
    new_ids = [agent_id for agent_id in new_ids if agent_id not in registered]
    if not new_ids:
        return
    limit = limits.quotas.max_agents
    if limit is not None:
        count = await repository.agent_count(session, limits.tenant_id)
        if count + len(new_ids) > limit:
            metrics.QUOTA_REJECTIONS.labels(limits.tier, "max_agents").inc()
            raise QuotaExceeded(
                f"The {limits.tier} tier allows {limit} agent(s); "
                f"{count} are registered and this packet names {len(new_ids)} new one(s)",
                quota="max_agents",
                limit=limit,
                tier=limits.tier,
            )
    for agent_id in new_ids:
        name, framework = wanted[agent_id]
        await repository.register_agent(session, limits.tenant_id, agent_id, name, framework, now)


async def usage(session: AsyncSession, clock: Clock, limits: TenantLimits) -> dict[str, Any]:
    """Tier, limits and today's usage of a tenant."""
    now = clock.now()
    day = utc_day(now)
    if limits.quotas.handoffs_per_day is None:
        midnight = datetime.fromisoformat(day).replace(tzinfo=UTC)
        handoffs = await repository.packets_created_since(session, limits.tenant_id, midnight)
    else:
        handoffs = await repository.handoffs_on(session, limits.tenant_id, day)
    return {
        "tenant_id": limits.tenant_id,
        "tier": limits.tier,
        "limits": as_dict(limits.quotas),
        "usage": {
            "day": day,
            "handoffs_today": handoffs,
            "api_keys": await repository.active_key_count(session, limits.tenant_id),
            "agents": await repository.agent_count(session, limits.tenant_id),
            "webhooks": 0,
        },
        "resets_in_seconds": seconds_until_utc_midnight(now),
    }


async def list_agents(
    session: AsyncSession, tenant_id: str, *, limit: int, offset: int
) -> dict[str, Any]:
    """The agent registry page."""
    rows, total = await repository.list_agents(session, tenant_id, limit=limit, offset=offset)
    return {
        "agents": [
            {
                "id": row.agent_id,
                "name": row.name,
                "framework": row.framework,
                "first_seen_at": row.first_seen_at.isoformat(),
                "last_seen_at": row.last_seen_at.isoformat(),
            }
            for row in rows
        ],
        "total": total,
        "limit": limit,
        "offset": offset,
    }
