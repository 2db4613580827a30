"""Wire shapes of the tenants API (CONTRACT.md §5 Tenants)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from handoffrail_server.api.wire import NoNulModel

Tier = Literal["free", "pro", "business"]
HitlFallback = Literal["fail", "expire", "escalate"]


class TenantCreate(NoNulModel):
    """POST /tenants body."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=128)
    tier: Tier = "free"
    handoffs_per_day: int | None = Field(default=None, ge=0, le=10_000_000)
    max_api_keys: int | None = Field(default=None, ge=0, le=100_000)
    hitl_fallback: HitlFallback = "expire"


class TenantUpdate(NoNulModel):
    """PATCH /tenants/{id} body: any subset of the create fields."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, min_length=1, max_length=128)
    tier: Tier | None = None
    handoffs_per_day: int | None = Field(default=None, ge=0, le=10_000_000)
    max_api_keys: int | None = Field(default=None, ge=0, le=100_000)
    hitl_fallback: HitlFallback | None = None


class TenantRead(BaseModel):
    """A tenant as the SDK's `TenantResponse` parses it."""

    id: str
    name: str
    tier: str
    handoffs_per_day: int | None
    max_api_keys: int | None
    hitl_fallback: str = "expire"
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
