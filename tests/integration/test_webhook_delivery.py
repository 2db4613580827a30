"""Webhook delivery against a real loopback receiver, on SQLite and PostgreSQL.

The app and the `Deliverer` share a `FrozenClock`, so retries become due by advancing the clock
instead of sleeping through the backoff.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from handoffrail_server.clock import FrozenClock
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import Packet, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.main import create_app
from handoffrail_server.packets.schemas import PacketCreate
from handoffrail_server.packets.service import PacketService
from handoffrail_server.settings import Settings
from handoffrail_server.webhooks.delivery import Deliverer, create_http_client
from tests.conftest import bootstrap_operator_key, make_settings, packet_body
from tests.integration.webhook_receiver import Receiver

SECRET = "receiver-shared-secret-0123456789"


@dataclass
class Env:
    """An app with private targets allowed, a deliverer, and direct database access."""

    client: httpx.AsyncClient
    headers: dict[str, str]
    settings: Settings
    clock: FrozenClock
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient

    def deliverer(self, **overrides: Any) -> Deliverer:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        return Deliverer(self.sessions, settings, self.clock, self.http)

    async def register(self, url: str, events: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "secret": SECRET}
        if events is not None:
            body["events"] = events
        response = await self.client.post("/api/v1/hooks", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def create_packet(self, summary: str = "Refund order 1234") -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/packets", json=packet_body(summary), headers=self.headers
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def deliveries(self, hook_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/api/v1/hooks/{hook_id}/deliveries", headers=self.headers
        )
        assert response.status_code == 200, response.text
        return list(response.json())

    async def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/api/v1/hooks/deliveries/{delivery_id}/attempts", headers=self.headers
        )
        assert response.status_code == 200, response.text
        return list(response.json())

    async def delivery_count(self) -> int:
        async with unit_of_work(self.sessions) as session:
            result = await session.execute(select(func.count()).select_from(WebhookDelivery))
            return int(result.scalar_one())


@pytest.fixture
async def env(migrated_url: str) -> AsyncIterator[Env]:
    operator_key = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    clock = FrozenClock(datetime.now(UTC))
    settings = make_settings(migrated_url, webhook_allow_private=True, webhook_timeout_seconds=5)
    app = create_app(settings, clock=clock)
    engine = create_engine(migrated_url, pool_size=4, max_overflow=4)
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
            create_http_client(settings) as http,
        ):
            yield Env(
                client=client,
                headers={"X-API-Key": operator_key},
                settings=settings,
                clock=clock,
                sessions=create_sessionmaker(engine),
                http=http,
            )
    finally:
        await engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def receiver_webhook(secret: str) -> Webhook:
    return Webhook("whsec_" + base64.b64encode(secret.encode("utf-8")).decode("ascii"))


async def test_packet_created_is_delivered_and_verifies_with_both_signatures(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    packet = await env.create_packet()

    assert await env.deliverer().run_once(10) == 1

    [request] = receiver.snapshot()
    assert request.path == "/hook"
    payload = receiver_webhook(SECRET).verify(request.body, request.headers)
    assert payload["event"] == "packet.created"
    assert payload["packet_id"] == packet["id"]
    assert payload["status"] == "created"
    assert payload["metadata"]["source_agent"]["id"] == "sales-01"
    assert datetime.fromisoformat(payload["timestamp"]) == env.clock.now()
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.header("X-HR-Signature"), expected)
    assert request.header("X-HR-Event") == "packet.created"
    assert request.header("Content-Type") == "application/json"
    assert request.header("Host") == receiver.base_url.removeprefix("http://")

    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200
    assert delivery["delivered_at"] is not None
    assert delivery["next_retry_at"] is None
    assert delivery["packet_id"] == packet["id"]
    assert request.header("webhook-id") == delivery["event_id"]
    assert request.header("X-HR-Delivery-ID") == delivery["id"]
    [attempt] = await env.attempts(delivery["id"])
    assert attempt["attempt"] == 1
    assert attempt["status_code"] == 200
    assert attempt["response_excerpt"] == '{"ok":true}'

    # delivered rows are never picked up again
    assert await env.deliverer().run_once(10) == 0
    assert len(receiver.snapshot()) == 1


async def test_only_subscribed_events_of_active_hooks_are_queued(
    env: Env, receiver: Receiver
) -> None:
    created_only = await env.register(receiver.url, ["packet.created"])
    claimed_only = await env.register(receiver.url, ["packet.claimed"])
    packet = await env.create_packet()
    claim = await env.client.post(
        f"/api/v1/packets/{packet['id']}/claim",
        json={"agent_id": "billing-01", "agent_name": "Billing"},
        headers=env.headers,
    )
    assert claim.status_code == 200, claim.text
    assert [d["event_type"] for d in await env.deliveries(created_only["id"])] == ["packet.created"]
    assert [d["event_type"] for d in await env.deliveries(claimed_only["id"])] == ["packet.claimed"]

    deleted = await env.client.delete(f"/api/v1/hooks/{created_only['id']}", headers=env.headers)
    assert deleted.status_code == 204
    await env.create_packet("after deactivation")
    assert len(await env.deliveries(created_only["id"])) == 1


async def test_a_failed_delivery_is_retried_when_due_and_every_attempt_is_recorded(
    env: Env, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    deliverer = env.deliverer()

    assert await deliverer.run_once(10) == 1
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 500
    assert delivery["last_error"] == "HTTP 500"
    retry_at = datetime.fromisoformat(delivery["next_retry_at"])
    assert 0.9 <= (retry_at - env.clock.now()).total_seconds() <= 1.1

    # not due yet: nothing is sent
    assert await deliverer.run_once(10) == 0
    env.clock.advance(1.2)
    assert await deliverer.run_once(10) == 1

    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 2
    attempts = await env.attempts(delivery["id"])
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0]["response_excerpt"] == "receiver says no"
    first, second = receiver.snapshot()
    # a retry is the same event: receivers deduplicate on webhook-id
    assert first.header("webhook-id") == second.header("webhook-id") == delivery["event_id"]
    receiver_webhook(SECRET).verify(second.body, second.headers)


async def test_a_receiver_that_never_recovers_ends_in_the_dead_letter_queue_and_replay_delivers(
    env: Env, receiver: Receiver
) -> None:
    receiver.default_status = 500
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    deliverer = env.deliverer(webhook_max_attempts=2)

    assert await deliverer.run_once(10) == 1
    env.clock.advance(1.2)
    assert await deliverer.run_once(10) == 1
    env.clock.advance(120)
    assert await deliverer.run_once(10) == 0  # dead letters are never retried on their own

    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "dead_letter"
    assert delivery["attempts"] == 2
    assert delivery["next_retry_at"] is None
    dlq = await env.client.get("/api/v1/hooks/dlq", headers=env.headers)
    assert dlq.status_code == 200
    assert [item["id"] for item in dlq.json()] == [delivery["id"]]

    receiver.default_status = 200
    replay = await env.client.post(
        f"/api/v1/hooks/dlq/{delivery['id']}/replay", headers=env.headers
    )
    assert replay.status_code == 200, replay.text
    assert replay.json() == {"delivery_id": delivery["id"], "replayed": True}
    again = await env.client.post(f"/api/v1/hooks/dlq/{delivery['id']}/replay", headers=env.headers)
    assert again.status_code == 404  # no longer dead-lettered
    assert await deliverer.run_once(10) == 1

    [delivered] = await env.deliveries(hook["id"])
    assert delivered["status"] == "delivered"
    requests = receiver.snapshot()
    assert len(requests) == 3
    assert {r.header("webhook-id") for r in requests} == {delivery["event_id"]}
    receiver_webhook(SECRET).verify(requests[-1].body, requests[-1].headers)
    assert (await env.client.get("/api/v1/hooks/dlq", headers=env.headers)).json() == []


async def test_retry_all_requeues_every_dead_letter_of_the_tenant(
    env: Env, receiver: Receiver
) -> None:
    receiver.default_status = 503
    hook = await env.register(receiver.url, ["packet.created"])
    for index in range(3):
        await env.create_packet(f"packet {index}")
    deliverer = env.deliverer(webhook_max_attempts=1)
    assert await deliverer.run_once(10) == 3
    assert {d["status"] for d in await env.deliveries(hook["id"])} == {"dead_letter"}

    receiver.default_status = 204
    response = await env.client.post("/api/v1/hooks/dlq/retry-all", headers=env.headers)
    assert response.status_code == 200, response.text
    assert response.json()["retried"] == 3
    assert await deliverer.run_once(10) == 3
    assert {d["status"] for d in await env.deliveries(hook["id"])} == {"delivered"}
    assert sum(receiver.event_ids().values()) == 6
    assert len(receiver.event_ids()) == 3


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    env: Env, receiver: Receiver
) -> None:
    receiver.statuses = [302]
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()

    assert await env.deliverer().run_once(10) == 1

    assert [r.path for r in receiver.snapshot()] == ["/hook"]  # /elsewhere never requested
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_status_code"] == 302
    assert delivery["next_retry_at"] is not None


async def test_an_unreachable_receiver_is_a_failed_attempt_with_an_error(env: Env) -> None:
    with Receiver() as gone:
        url = gone.url
    hook = await env.register(url, ["packet.created"])
    await env.create_packet()
    assert await env.deliverer().run_once(10) == 1
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_status_code"] is None
    assert delivery["last_error"]
    [attempt] = await env.attempts(delivery["id"])
    assert attempt["status_code"] is None
    assert attempt["error"] == delivery["last_error"]


async def test_a_private_target_is_refused_at_delivery_without_allow_private(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    assert await env.deliverer(webhook_allow_private=False).run_once(10) == 1
    assert receiver.snapshot() == []
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "failed"
    assert delivery["last_error"].startswith("refused:")


async def test_a_stored_url_httpx_cannot_build_fails_its_attempt_without_wedging_the_batch(
    env: Env, receiver: Receiver
) -> None:
    good = await env.register(receiver.url, ["packet.created"])
    bad = await env.register(receiver.url, ["packet.created"])
    # stored before creation refused such URLs: urlsplit accepts it, httpx.URL() raises
    async with unit_of_work(env.sessions) as session:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == bad["id"])
            .values(url=receiver.url + "\x01")
        )
    await env.create_packet()

    assert await env.deliverer().run_once(10) == 2

    [delivered] = await env.deliveries(good["id"])
    assert (delivered["status"], delivered["attempts"]) == ("delivered", 1)
    [failed] = await env.deliveries(bad["id"])
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"].startswith("refused: webhook URL is malformed")
    assert failed["next_retry_at"] is not None
    [attempt] = await env.attempts(failed["id"])
    assert attempt["error"] == failed["last_error"]
    assert len(receiver.snapshot()) == 1
    # retried by the normal policy, then dead-lettered: never leased again as pending
    env.clock.advance(1.2)
    assert await env.deliverer(webhook_max_attempts=2).run_once(10) == 1
    [dead] = await env.deliveries(bad["id"])
    assert (dead["status"], dead["attempts"]) == ("dead_letter", 2)
    env.clock.advance(3600)
    assert await env.deliverer().run_once(10) == 0


async def test_an_exception_outside_httpx_http_error_is_a_failed_attempt(
    env: Env, receiver: Receiver
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.InvalidURL("not an httpx.HTTPError")  # what httpx.URL() raises

    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    settings = env.settings.model_copy(update={"webhook_max_attempts": 1})
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        assert await Deliverer(env.sessions, settings, env.clock, http).run_once(10) == 1

    [delivery] = await env.deliveries(hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("dead_letter", 1)
    assert delivery["last_error"].startswith("InvalidURL: ")


async def test_a_secret_that_cannot_be_decrypted_is_a_failed_attempt_not_a_crash(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    async with unit_of_work(env.sessions) as session:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == hook["id"])
            .values(secret_encrypted="not-a-fernet-token")
        )
    await env.create_packet()

    assert await env.deliverer().run_once(10) == 1

    assert receiver.snapshot() == []
    [delivery] = await env.deliveries(hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert "cannot be decrypted" in delivery["last_error"]
    assert delivery["next_retry_at"] is not None


async def test_rotating_the_secret_signs_later_deliveries_with_the_new_secret(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    rotated = await env.client.post(
        f"/api/v1/hooks/{hook['id']}/rotate-secret", headers=env.headers
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    await env.create_packet()
    assert await env.deliverer().run_once(10) == 1
    [request] = receiver.snapshot()
    receiver_webhook(new_secret).verify(request.body, request.headers)
    assert request.header("X-HR-Signature") == (
        hmac.new(new_secret.encode(), request.body, hashlib.sha256).hexdigest()
    )


async def test_the_test_event_reaches_the_receiver(env: Env, receiver: Receiver) -> None:
    hook = await env.register(receiver.url, ["packet.completed"])
    response = await env.client.post(f"/api/v1/hooks/{hook['id']}/test", headers=env.headers)
    assert response.status_code == 202, response.text
    assert response.json()["event_type"] == "webhook.test"
    assert await env.deliverer().run_once(10) == 1
    [request] = receiver.snapshot()
    payload = receiver_webhook(SECRET).verify(request.body, request.headers)
    assert payload["event"] == "webhook.test"
    assert request.header("webhook-id") == response.json()["event_id"]


async def test_a_delivery_to_a_deactivated_hook_is_not_sent(env: Env, receiver: Receiver) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    assert (
        await env.client.delete(f"/api/v1/hooks/{hook['id']}", headers=env.headers)
    ).status_code == 204
    assert await env.deliverer().run_once(10) == 1
    assert receiver.snapshot() == []
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["status"] == "dead_letter"


async def test_a_create_rejected_by_its_schema_writes_no_outbox_row(
    env: Env, receiver: Receiver
) -> None:
    await env.register(receiver.url, ["packet.created"])
    schema = await env.client.post(
        "/api/v1/schemas",
        json={
            "name": "needs-order",
            "json_schema": {
                "type": "object",
                "required": ["custom"],
                "properties": {
                    "custom": {"type": "object", "required": ["order_id"]},
                },
            },
        },
        headers=env.headers,
    )
    assert schema.status_code == 201, schema.text
    body = packet_body("no order id") | {"schema_id": schema.json()["id"]}
    response = await env.client.post("/api/v1/packets", json=body, headers=env.headers)
    assert response.status_code == 422, response.text
    assert await env.delivery_count() == 0


async def test_a_rolled_back_state_change_leaves_no_outbox_row(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    seen: dict[str, Any] = {}

    class Boom(Exception):
        pass

    async def create_then_fail() -> None:
        async with unit_of_work(env.sessions) as session:
            service = PacketService(session, env.clock, hook["tenant_id"])
            packet = await service.create(PacketCreate.model_validate(packet_body()))
            pending = await session.execute(select(func.count()).select_from(WebhookDelivery))
            seen.update(packet_id=packet.id, pending=pending.scalar_one())
            raise Boom  # the transaction that wrote the outbox row fails after the write

    with pytest.raises(Boom):
        await create_then_fail()

    assert seen["pending"] == 1  # the row was written in that same transaction ...
    packet_id = seen["packet_id"]
    assert await env.delivery_count() == 0  # ... and rolled back with it
    async with unit_of_work(env.sessions) as session:
        assert await session.get(Packet, packet_id) is None
        attempts = await session.execute(select(func.count()).select_from(WebhookAttempt))
        assert attempts.scalar_one() == 0
    assert await env.deliverer().run_once(10) == 0
    assert receiver.snapshot() == []


async def test_committed_create_and_its_outbox_row_appear_together(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    async with unit_of_work(env.sessions) as session:
        service = PacketService(session, env.clock, hook["tenant_id"])
        packet = await service.create(PacketCreate.model_validate(packet_body()))
    [delivery] = await env.deliveries(hook["id"])
    assert delivery["packet_id"] == str(packet.id)
    assert delivery["status"] == "pending"
    assert await env.deliverer().run_once(10) == 1
    assert json.loads(receiver.snapshot()[0].body)["packet_id"] == str(packet.id)


async def test_concurrent_leases_never_hand_the_same_delivery_to_two_workers(
    env: Env, receiver: Receiver
) -> None:
    await env.register(receiver.url, ["packet.created"])
    for index in range(12):
        await env.create_packet(f"packet {index}")
    batches = await asyncio.gather(*(env.deliverer().lease(5) for _ in range(4)))
    ids = [leased.id for batch in batches for leased in batch]
    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert len({batch[0].lease_id for batch in batches if batch}) == sum(1 for b in batches if b)


async def test_only_the_current_lease_holder_records_an_outcome(
    env: Env, receiver: Receiver
) -> None:
    hook = await env.register(receiver.url, ["packet.created"])
    await env.create_packet()
    slow, fast = env.deliverer(), env.deliverer()

    [held] = await slow.lease(10)
    assert await fast.lease(10) == []  # a live lease is never handed out twice
    env.clock.advance(env.settings.webhook_lease_seconds + 1)
    [taken_over] = await fast.lease(10)  # the slow worker is presumed dead
    assert taken_over.id == held.id
    assert taken_over.lease_id != held.lease_id

    assert await fast.deliver(taken_over) == "delivered"
    assert await slow.deliver(held) == "lease_lost"  # its late outcome is discarded

    [delivery] = await env.deliveries(hook["id"])
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert [a["attempt"] for a in await env.attempts(delivery["id"])] == [1]
    # at least once: the receiver may see the event twice, always with the same webhook-id
    assert set(receiver.event_ids()) == {delivery["event_id"]}
