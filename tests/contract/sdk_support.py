"""Helpers for the SDK contract tests: the real `handoffrail-sdk` 0.3.0 against `live_server`.

Clients never retry (`max_retries=0`), so a wire mismatch fails fast instead of backing off.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from handoffrail.sdk import (
    AsyncHandoffRailClient,
    HandoffRailClient,
    PacketBuilder,
    PacketCreate,
    PacketResponse,
    PacketUpdate,
)

from tests.conftest import LiveServer

SOURCE = ("sales-01", "SalesBot")
TARGET = ("billing-01", "BillingBot")
CLAIMANT = ("billing-02", "BillingBot Two")


def sync_client(server: LiveServer, key: str | None = None) -> HandoffRailClient:
    """A sync SDK client for the live server (operator key unless `key` is given)."""
    return HandoffRailClient(
        base_url=server.api_url,
        api_key=server.operator_key if key is None else key,
        timeout=20.0,
        max_retries=0,
    )


def async_client(server: LiveServer, key: str | None = None) -> AsyncHandoffRailClient:
    """An async SDK client for the live server (operator key unless `key` is given)."""
    return AsyncHandoffRailClient(
        base_url=server.api_url,
        api_key=server.operator_key if key is None else key,
        timeout=20.0,
        max_retries=0,
    )


def claim(client: HandoffRailClient, packet_id: uuid.UUID) -> PacketResponse:
    """Claim as the standard claimant."""
    return client.claim_packet(packet_id, agent_id=CLAIMANT[0], agent_name=CLAIMANT[1])


def start(client: HandoffRailClient, packet_id: uuid.UUID) -> PacketResponse:
    """Claim and move to in_progress, the only state `complete_packet` accepts."""
    claim(client, packet_id)
    return client.update_packet(packet_id, PacketUpdate(status="in_progress"))


def unique(prefix: str) -> str:
    """`prefix-<8 hex>`, for names that must not collide."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def packet(
    summary: str = "Customer wants a refund",
    *,
    source: tuple[str, str] = SOURCE,
    target: tuple[str, str] = TARGET,
    tags: Sequence[str] = (),
    priority: str = "normal",
    conversation: Sequence[dict[str, str]] = (),
    hitl_reason: str | None = None,
) -> PacketCreate:
    """A create payload built with the SDK's own `PacketBuilder`."""
    builder = (
        PacketBuilder()
        .from_(*source)
        .to(*target)
        .with_summary(summary)
        .with_priority(priority)
        .with_tags(list(tags))
        .with_conversation(list(conversation))
    )
    if hitl_reason is not None:
        builder.with_hitl(
            reason=hitl_reason, question="Approve the refund?", options=["approve", "deny"]
        )
    return builder.build()


REFUND_SCHEMA = {
    "type": "object",
    "required": ["summary", "custom"],
    "properties": {
        "summary": {"type": "string"},
        "custom": {
            "type": "object",
            "required": ["order_id"],
            "properties": {"order_id": {"type": "integer"}},
        },
    },
}


def full_packet() -> PacketCreate:
    """A create payload using every `PacketBuilder` section."""
    return (
        PacketBuilder()
        .from_("sales-01", "SalesBot", framework="langchain", version="1.2")
        .to("billing-01", "BillingBot", framework="crewai")
        .with_summary("Customer wants a refund for order 42")
        .with_priority("high")
        .with_tags(["refund", "vip"])
        .with_conversation(
            [
                {"role": "user", "content": "I want my money back"},
                {"role": "agent", "content": "Routing you to billing", "metadata": {"turn": 2}},
            ]
        )
        .with_artifacts(
            [
                {"key": "order", "value": {"id": 42, "total": 99.5}},
                {"key": "note", "value": "call back", "content_type": "text/plain"},
                {"key": "items", "value": ["a", "b"]},
            ]
        )
        .with_custom({"order_id": 42, "nested": {"ok": True}})
        .with_decision("Refund approved", rationale="VIP", alternatives=["deny"], decided_by="x")
        .with_action("Issue refund", assignee="billing-01", priority="high", depends_on=["d1"])
        .with_dependency("payments", type="api", description="Payments API", source="stripe")
        .build()
    )
