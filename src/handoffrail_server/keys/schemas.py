"""Wire shapes of the keys API (CONTRACT.md §5 API keys)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from handoffrail_server.api.wire import NoNulModel


class ApiKeyCreate(NoNulModel):
    """POST /keys body."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    tenant_id: str | None = Field(default=None, max_length=64)
    role: Literal["admin", "writer", "agent", "reader"] = "admin"


class ApiKeyRead(BaseModel):
    """A key as the SDK's `ApiKeyResponse` parses it; `key` only on creation."""

    id: str
    name: str
    key_prefix: str
    tenant_id: str
    role: str
    revoked: bool
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = None
