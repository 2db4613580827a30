"""Request dependencies: app state, one unit of work per request, the calling principal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from handoffrail_server.api.roles import allows, required_role
from handoffrail_server.clock import Clock
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.errors import PermissionDenied
from handoffrail_server.keys import service as keys_service
from handoffrail_server.keys.service import Principal
from handoffrail_server.settings import Settings


@dataclass(slots=True)
class AppState:
    """What every request needs; built once in `create_app`."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    redis: Redis | None = None


class InsufficientRole(PermissionDenied):
    """The key's role is below what the route needs."""

    code = "auth.insufficient_role"


def app_state(request: Request) -> AppState:
    """The application's shared state."""
    state: AppState = request.app.state.hr
    return state


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # scope="function": commit runs when the handler returns, before the response is sent,
    # so a client never sees success for a write that did not commit.
    async with unit_of_work(app_state(request).sessions) as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session, scope="function")]
State = Annotated[AppState, Depends(app_state)]


async def _principal(request: Request, session: Session) -> Principal:
    principal = await keys_service.authenticate(session, request.headers.get("x-api-key"))
    needed = required_role(request.method, request.url.path)
    request.state.principal = principal
    if not allows(principal.role, needed):
        raise InsufficientRole(
            f"Insufficient permissions. Required role: {needed.value}, "
            f"current role: {principal.role.value}"
        )
    return principal


Caller = Annotated[Principal, Depends(_principal)]


def request_id(request: Request) -> str | None:
    """The request id set by the request-id middleware."""
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def as_utc(value: datetime | None) -> datetime | None:
    """Query datetimes without an offset are taken as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
