"""HTTP routes of webhooks (CONTRACT.md §5 Webhooks) plus get/update/rotate/test and the DLQ."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from handoffrail_server.api.deps import Caller, Session, State, as_utc, tenant_limits
from handoffrail_server.webhooks import service
from handoffrail_server.webhooks.schemas import (
    AttemptRead,
    DeliveryRead,
    ReplayResult,
    RetryAllResult,
    WebhookCreate,
    WebhookRead,
    WebhookUpdate,
)

router = APIRouter(prefix="/hooks", tags=["webhooks"])

Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]


def _config(state: State) -> service.WebhookConfig:
    return service.WebhookConfig(
        secret_key=state.settings.secret_key.get_secret_value(),
        allow_private=state.settings.webhook_allow_private,
    )


@router.post("", status_code=201, response_model=WebhookRead, response_model_exclude_none=True)
async def register_webhook(
    body: WebhookCreate, request: Request, state: State, session: Session, caller: Caller
) -> WebhookRead:
    """Register an endpoint; a generated secret is returned here only."""
    limits = tenant_limits(request)
    assert limits is not None  # set by the Caller dependency
    return await service.create(
        session, state.clock, limits, body, _config(state), actor=f"key:{caller.key_id}"
    )


@router.get("", response_model=list[WebhookRead], response_model_exclude_none=True)
async def list_webhooks(session: Session, caller: Caller) -> list[WebhookRead]:
    """Every endpoint of the tenant (inactive ones too)."""
    return await service.list_all(session, caller.tenant_id)


@router.get("/dlq", response_model=list[DeliveryRead])
async def list_dead_letters(
    session: Session, caller: Caller, limit: Limit = 50, offset: Offset = 0
) -> list[DeliveryRead]:
    """Dead-lettered deliveries of the tenant."""
    return await service.dead_letters(session, caller.tenant_id, limit=limit, offset=offset)


@router.post("/dlq/retry-all", response_model=RetryAllResult)
async def retry_all_dead_letters(
    state: State, session: Session, caller: Caller, since: datetime | None = None
) -> RetryAllResult:
    """Queue every dead-lettered delivery (optionally since a time) again for the worker."""
    count = await service.replay_since(session, state.clock, caller.tenant_id, as_utc(since))
    return RetryAllResult(retried=count, queued=count)


@router.post("/dlq/{delivery_id}/replay", response_model=ReplayResult)
async def replay_dead_letter(
    delivery_id: uuid.UUID, state: State, session: Session, caller: Caller
) -> ReplayResult:
    """Queue one dead-lettered delivery again (same event id)."""
    await service.replay(session, state.clock, caller.tenant_id, delivery_id)
    return ReplayResult(delivery_id=str(delivery_id), replayed=True)


@router.get("/deliveries/{delivery_id}/attempts", response_model=list[AttemptRead])
async def delivery_attempts(
    delivery_id: uuid.UUID, session: Session, caller: Caller
) -> list[AttemptRead]:
    """Every HTTP attempt of one delivery."""
    return await service.list_attempts(session, caller.tenant_id, delivery_id)


@router.get("/{webhook_id}", response_model=WebhookRead, response_model_exclude_none=True)
async def get_webhook(webhook_id: str, session: Session, caller: Caller) -> WebhookRead:
    """One endpoint (never its secret)."""
    return await service.get(session, caller.tenant_id, webhook_id)


@router.patch("/{webhook_id}", response_model=WebhookRead, response_model_exclude_none=True)
async def update_webhook(
    webhook_id: str, body: WebhookUpdate, state: State, session: Session, caller: Caller
) -> WebhookRead:
    """Change an endpoint's URL, events or active flag."""
    return await service.update(
        session,
        state.clock,
        caller.tenant_id,
        webhook_id,
        body,
        _config(state),
        actor=f"key:{caller.key_id}",
    )


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(
    webhook_id: str, state: State, session: Session, caller: Caller
) -> Response:
    """Deactivate an endpoint (409 if already inactive)."""
    await service.deactivate(
        session, state.clock, caller.tenant_id, webhook_id, actor=f"key:{caller.key_id}"
    )
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookRead)
async def rotate_webhook_secret(
    webhook_id: str, state: State, session: Session, caller: Caller
) -> WebhookRead:
    """Replace the signing secret; the new secret is in this answer only."""
    return await service.rotate_secret(
        session,
        state.clock,
        caller.tenant_id,
        webhook_id,
        _config(state),
        actor=f"key:{caller.key_id}",
    )


@router.post("/{webhook_id}/test", status_code=202, response_model=DeliveryRead)
async def send_test_event(
    webhook_id: str, state: State, session: Session, caller: Caller
) -> DeliveryRead:
    """Queue a `webhook.test` event to the endpoint."""
    return await service.send_test(session, state.clock, caller.tenant_id, webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryRead])
async def list_deliveries(
    webhook_id: str,
    session: Session,
    caller: Caller,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed|dead_letter)$")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[DeliveryRead]:
    """Deliveries of one endpoint, newest first."""
    return await service.list_deliveries(
        session, caller.tenant_id, webhook_id, status=status, limit=limit, offset=offset
    )
