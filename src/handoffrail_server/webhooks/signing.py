"""Delivery signatures (PURE): the original `X-HR-Signature` and Standard Webhooks headers.

The signing key of both is the UTF-8 bytes of the endpoint secret, so a receiver verifies with
`standardwebhooks.Webhook("whsec_" + base64(secret))` or with a plain HMAC-SHA256 of the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are sent and signed (compact JSON, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hr_signature(secret: str, body: bytes) -> str:
    """`X-HR-Signature`: hex HMAC-SHA256 of the body (the original server's format)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, message_id: str, timestamp: datetime, body: bytes) -> str:
    """`webhook-signature` (Standard Webhooks v1): base64 HMAC of `id.timestamp.body`."""
    return Webhook(secret.encode("utf-8")).sign(message_id, timestamp, body.decode("utf-8"))


def signed_headers(
    *,
    secret: str,
    body: bytes,
    event_id: str,
    delivery_id: str,
    event_type: str,
    timestamp: datetime,
) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "HandoffRail-Webhooks/1.0",
        "X-HR-Signature": hr_signature(secret, body),
        "X-HR-Event": event_type,
        "X-HR-Delivery-ID": delivery_id,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": standard_signature(secret, event_id, timestamp, body),
    }
