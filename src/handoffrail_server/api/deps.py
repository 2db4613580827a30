"""Request dependencies: app state, one unit of work per request, the calling principal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette._utils import get_route_path
from starlette.requests import HTTPConnection

from handoffrail_server.api.roles import allows, required_role
from handoffrail_server.clock import Clock
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import AuthenticationFailed, PermissionDenied, Unprocessable
from handoffrail_server.keys import service as keys_service
from handoffrail_server.keys.cache import PrincipalCache, PrincipalListener
from handoffrail_server.keys.service import Principal
from handoffrail_server.limits.errors import PacketTooLarge, RateLimited
from handoffrail_server.limits.ratelimit import Decision, RateLimiter, per_hour, per_minute
from handoffrail_server.limits.service import TenantLimits
from handoffrail_server.limits.tiers import Quotas, effective_quotas
from handoffrail_server.observability import metrics
from handoffrail_server.packets import recent
from handoffrail_server.realtime.broker import Broker
from handoffrail_server.realtime.service import NOTIFY_KEY
from handoffrail_server.settings import Settings


@dataclass(slots=True)
class AppState:
    """What every request needs; built once in `create_app`."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    redis: Redis | None = None
    limiter: RateLimiter | None = None
    broker: Broker | None = None
    #: resolved principals (PostgreSQL with `HR_AUTH_CACHE_SECONDS` > 0), see keys/cache.py
    principals: PrincipalCache | None = None
    principal_listener: PrincipalListener | None = None


class NulInRequest(Unprocessable):
    """A NUL character in the path or query string (PostgreSQL cannot compare or store it)."""

    code = "request.nul_character"


async def reject_nul(request: Request) -> None:
    """Refuse NUL characters in the path and query string before any handler reads them."""
    scope = request.scope
    query: bytes = scope.get("query_string", b"")
    if "\x00" not in scope.get("path", "") and b"%00" not in query and b"\x00" not in query:
        return  # the common case, decided on the raw scope without building URL objects
    if "\x00" in request.url.path:
        raise NulInRequest("The path must not contain NUL characters", field="path")
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise NulInRequest(
                "Query parameters must not contain NUL characters", field=name.replace("\x00", "")
            )


class InsufficientRole(PermissionDenied):
    """The key's role is below what the route needs."""

    code = "auth.insufficient_role"


def app_state(request: Request) -> AppState:
    """The application's shared state."""
    state: AppState = request.app.state.hr
    return state


@asynccontextmanager
async def request_session(state: AppState) -> AsyncIterator[AsyncSession]:
    """A request's unit of work; once committed, keep the packet rows it left for the next
    claim or PATCH (`packets.recent`) and wake stream readers of the tenants whose events it
    wrote."""
    async with unit_of_work(state.sessions) as session:
        yield session
    recent.promote(session)
    if state.broker is not None:
        for tenant_id in session.info.pop(NOTIFY_KEY, ()):
            await state.broker.notify(tenant_id)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # scope="function": commit runs when the handler returns, before the response is sent,
    # so a client never sees success for a write that did not commit.
    async with request_session(app_state(request)) as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session, scope="function")]


async def _state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread
    return app_state(request)


State = Annotated[AppState, Depends(_state)]


def _client_ip(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


def _rate_headers(decision: Decision, tier: str, policy: str) -> list[tuple[str, str]]:
    # X-RateLimit-* as the original server and its SDK users expect; RateLimit-Policy/RateLimit
    # as draft-ietf-httpapi-ratelimit-headers structured fields.
    return [
        ("X-RateLimit-Limit", str(decision.limit)),
        ("X-RateLimit-Remaining", str(decision.remaining)),
        ("X-RateLimit-Reset", str(decision.reset_after)),
        ("X-RateLimit-Tier", tier),
        ("RateLimit-Policy", f'"{policy}";q={decision.limit};w={decision.window}'),
        ("RateLimit", f'"{policy}";r={decision.remaining};t={decision.reset_after}'),
    ]


def add_response_headers(request: Request, headers: list[tuple[str, str]]) -> None:
    """Headers the request-id middleware adds to whatever response this request gets."""
    existing: list[tuple[str, str]] = request.scope.setdefault("state", {}).setdefault(
        "response_headers", []
    )
    existing.extend(headers)


async def throttle_auth_failure(connection: HTTPConnection, state: AppState) -> None:
    """Count a failed authentication against the client IP's budget (REST, streams and the
    dashboard share it); 429 past `HR_AUTH_FAILURES_PER_MINUTE`. Unknown keys never touch a
    tenant's budget."""
    if state.limiter is None or not state.settings.auth_failures_per_minute:
        return
    item = per_minute(state.settings.auth_failures_per_minute)
    decision = await state.limiter.hit(item, "auth-failure", _client_ip(connection))
    if not decision.allowed:
        metrics.RATE_LIMITED.labels("unauthenticated", "auth_failures").inc()
        raise RateLimited("Too many failed authentication attempts", decision.retry_after)


async def _enforce_limits(request: Request, state: AppState, principal: Principal) -> None:
    quotas = effective_quotas(
        state.settings.tiers,
        principal.tier,
        handoffs_per_day=principal.handoffs_per_day,
        max_api_keys=principal.max_api_keys,
    )
    request.state.limits = TenantLimits(principal.tenant_id, principal.tier, quotas)
    # Rate limit first, so that every answer (a 413 too) carries the rate-limit headers.
    await _rate_limit(request, state, principal, quotas)
    if request.method in {"POST", "PUT", "PATCH"}:
        size = len(await request.body())
        if size > quotas.max_packet_size:
            metrics.QUOTA_REJECTIONS.labels(principal.tier, "max_packet_size").inc()
            raise PacketTooLarge(size, quotas.max_packet_size, principal.tier)


async def _rate_limit(
    request: Request, state: AppState, principal: Principal, quotas: Quotas
) -> None:
    if state.limiter is None or not state.settings.rate_limit_enabled:
        return
    decisions: list[tuple[Decision, str]] = []
    if state.settings.rate_limit_per_minute:
        item = per_minute(state.settings.rate_limit_per_minute)
        decisions.append((await state.limiter.hit(item, "key", principal.key_id), "key"))
    if quotas.requests_per_hour is not None:
        item = per_hour(quotas.requests_per_hour)
        tenant_decision = await state.limiter.hit(item, "tenant", principal.tenant_id)
        decisions.append((tenant_decision, "tenant"))
    if not decisions:
        return
    refused = [(decision, scope) for decision, scope in decisions if not decision.allowed]
    shown, scope = refused[0] if refused else min(decisions, key=lambda pair: pair[0].remaining)
    policy = "minute" if scope == "key" else "hour"
    add_response_headers(request, _rate_headers(shown, principal.tier, policy))
    if refused:
        metrics.RATE_LIMITED.labels(principal.tier, scope).inc()
        raise RateLimited("Rate limit exceeded", shown.retry_after, tier=principal.tier)


async def resolve_principal(request: Request, session: AsyncSession) -> Principal:
    """Authenticate the request's key, apply its rate limits and size quota, check its role."""
    state = app_state(request)
    try:
        principal = await keys_service.authenticate(
            session, request.headers.get("x-api-key"), state.principals
        )
    except AuthenticationFailed:
        await throttle_auth_failure(request, state)
        raise
    # the path below the app's root path (`--root-path`, a proxy's prefix), as routing sees it
    needed = required_role(request.method, get_route_path(request.scope))
    request.state.principal = principal
    await _enforce_limits(request, state, principal)  # before the role check: headers on a 403
    if not allows(principal.role, needed):
        raise InsufficientRole(
            f"Insufficient permissions. Required role: {needed.value}, "
            f"current role: {principal.role.value}"
        )
    return principal


async def _principal(request: Request, session: Session) -> Principal:
    return await resolve_principal(request, session)


Caller = Annotated[Principal, Depends(_principal)]


def tenant_limits(request: Request) -> TenantLimits | None:
    """The caller's tier limits, resolved by the `Caller` dependency."""
    value = getattr(request.state, "limits", None)
    return value if isinstance(value, TenantLimits) else None


def request_id(request: Request) -> str | None:
    """The request id set by the request-id middleware."""
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def as_utc(value: datetime | None) -> datetime | None:
    """Query datetimes without an offset are taken as UTC. An instant beyond the years 1-9999 in
    UTC (`0001-01-01T00:00+14:00`) is clamped to the first or last representable one: as a
    bound of a range it selects the same rows, and it cannot be converted."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        first, last = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
        return first if value.year == first.year else last
