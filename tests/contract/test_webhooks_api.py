"""The webhooks API (CONTRACT.md §5 Webhooks) over HTTP on both databases, and the real SDK.

Hooks registered here point at a public literal address; nothing here runs a worker, so no
request ever leaves the test process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from handoffrail.sdk import HandoffRailClient, ValidationError
from sqlalchemy import select

from handoffrail_server.api.roles import Role
from handoffrail_server.db.engine import create_engine, create_sessionmaker
from handoffrail_server.db.models import WebhookEndpoint
from handoffrail_server.db.uow import unit_of_work
from handoffrail_server.main import create_app
from tests.conftest import Api, LiveServer, bootstrap_operator_key, make_settings
from tests.contract.helpers import P, assert_problem, create_packet
from tests.contract.sdk_support import sync_client

PUBLIC_URL = "http://93.184.216.34/hook"
SECRET = "a-webhook-secret-of-32-characters"
WEBHOOK_FIELDS = {"id", "url", "events", "tenant_id", "active", "created_at", "updated_at"}
DELIVERY_FIELDS = {
    "id",
    "webhook_id",
    "event_id",
    "packet_id",
    "event_type",
    "status",
    "attempts",
    "last_error",
    "last_status_code",
    "next_retry_at",
    "delivered_at",
    "created_at",
    "updated_at",
}


async def register(
    api: Api, key: str | None = None, **body: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    payload = {"url": PUBLIC_URL, "secret": SECRET} | body
    response = await api.client.post(f"{P}/hooks", json=payload, headers=api.headers(key))
    return response, response.json()


async def registered(api: Api, key: str | None = None, **body: Any) -> dict[str, Any]:
    response, hook = await register(api, key, **body)
    assert response.status_code == 201, response.text
    return hook


async def test_register_returns_the_contract_shape_without_the_secret(api: Api) -> None:
    response, hook = await register(api, events=["packet.created", "packet.completed"])
    assert response.status_code == 201, response.text
    assert set(hook) == WEBHOOK_FIELDS
    assert (hook["url"], hook["active"]) == (PUBLIC_URL, True)
    assert hook["events"] == ["packet.created", "packet.completed"]
    uuid.UUID(hook["id"])
    assert SECRET not in response.text


async def test_events_default_to_the_contract_set(api: Api) -> None:
    hook = await registered(api)
    assert hook["events"] == [
        "packet.created",
        "packet.claimed",
        "packet.completed",
        "packet.failed",
    ]


async def test_a_generated_secret_is_returned_once_at_creation(api: Api) -> None:
    response = await api.client.post(f"{P}/hooks", json={"url": PUBLIC_URL}, headers=api.headers())
    assert response.status_code == 201, response.text
    secret = response.json()["secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 16
    hook_id = response.json()["id"]
    fetched = await api.client.get(f"{P}/hooks/{hook_id}", headers=api.headers())
    listed = await api.client.get(f"{P}/hooks", headers=api.headers())
    patched = await api.client.patch(
        f"{P}/hooks/{hook_id}", json={"events": ["packet.failed"]}, headers=api.headers()
    )
    for later in (fetched, listed, patched):
        assert later.status_code == 200, later.text
        assert secret not in later.text
        assert "secret" not in later.text


async def test_secrets_are_encrypted_at_rest(api: Api) -> None:
    hook = await registered(api)
    engine = create_engine(api.url, pool_size=1, max_overflow=0)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            row = (
                await session.execute(
                    select(WebhookEndpoint).where(WebhookEndpoint.id == hook["id"])
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert row.secret_encrypted
    assert SECRET not in row.secret_encrypted


async def test_rotate_secret_returns_a_new_secret_each_time(api: Api) -> None:
    hook = await registered(api)
    first = await api.client.post(f"{P}/hooks/{hook['id']}/rotate-secret", headers=api.headers())
    second = await api.client.post(f"{P}/hooks/{hook['id']}/rotate-secret", headers=api.headers())
    assert first.status_code == second.status_code == 200
    secrets = {first.json()["secret"], second.json()["secret"], SECRET}
    assert len(secrets) == 3
    assert all(len(secret) >= 16 for secret in secrets)
    fetched = await api.client.get(f"{P}/hooks/{hook['id']}", headers=api.headers())
    assert "secret" not in fetched.json()


async def test_list_get_patch_and_delete(api: Api) -> None:
    first = await registered(api)
    second = await registered(api, events=["packet.failed"])
    listed = await api.client.get(f"{P}/hooks", headers=api.headers())
    assert listed.status_code == 200
    assert [hook["id"] for hook in listed.json()] == [first["id"], second["id"]]

    fetched = await api.client.get(f"{P}/hooks/{first['id']}", headers=api.headers())
    assert fetched.json() == first

    patched = await api.client.patch(
        f"{P}/hooks/{first['id']}",
        json={"url": "https://93.184.216.34/v2", "events": ["packet.expired", "packet.expired"]},
        headers=api.headers(),
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["url"], patched.json()["events"]) == (
        "https://93.184.216.34/v2",
        ["packet.expired"],
    )

    deleted = await api.client.delete(f"{P}/hooks/{first['id']}", headers=api.headers())
    assert deleted.status_code == 204
    assert deleted.content == b""
    again = await api.client.delete(f"{P}/hooks/{first['id']}", headers=api.headers())
    assert_problem(again, 409, "webhook.already_inactive")
    listed = await api.client.get(f"{P}/hooks", headers=api.headers())
    assert {(hook["id"], hook["active"]) for hook in listed.json()} == {
        (first["id"], False),
        (second["id"], True),
    }

    reactivated = await api.client.patch(
        f"{P}/hooks/{first['id']}", json={"active": True}, headers=api.headers()
    )
    assert reactivated.json()["active"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"events": ["packet.exploded"]},
        {"events": ["packet.created", "PACKET.CLAIMED"]},
        {"secret": "too-short"},
        {"url": None},
        {"secret": "x" * 257},
    ],
)
async def test_invalid_bodies_are_422(api: Api, body: dict[str, Any]) -> None:
    response, _ = await register(api, **body)
    assert response.status_code == 422, response.text


async def test_invalid_event_on_patch_is_422(api: Api) -> None:
    hook = await registered(api)
    response = await api.client.patch(
        f"{P}/hooks/{hook['id']}", json={"events": ["nope"]}, headers=api.headers()
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost:8080/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "ftp://93.184.216.34/hook",
        "http://user:pw@93.184.216.34/hook",
    ],
)
async def test_private_and_malformed_urls_are_refused(api: Api, url: str) -> None:
    response, _ = await register(api, url=url)
    body = assert_problem(response, 422, "webhook.url_refused")
    assert body.get("field") in {None, "url"}


#: URLs urlsplit or httpx cannot parse: once a 500 (ValueError) or a 201 that wedged delivery
UNPARSABLE_URLS = [
    "http://[abc/",
    "http://[::1",
    "http://[abc]/hook",
    "https://ex\u2100ample.com/",
    "http://xn--zz.example/hook",
    "http://93.184.216.34/hook\u0001",
    "http://93.184.216.34/h\tok",
    "http://93.184.216.34/hook\u007f",
]


@pytest.mark.parametrize("url", UNPARSABLE_URLS)
async def test_unparsable_urls_are_refused_on_create(api: Api, url: str) -> None:
    response, _ = await register(api, url=url)
    body = assert_problem(response, 422, "webhook.url_refused")
    assert body.get("field") in {None, "url"}


@pytest.mark.parametrize("url", UNPARSABLE_URLS)
async def test_unparsable_urls_are_refused_on_patch_and_the_hook_keeps_its_url(
    api: Api, url: str
) -> None:
    hook = await registered(api)
    response = await api.client.patch(
        f"{P}/hooks/{hook['id']}", json={"url": url}, headers=api.headers()
    )
    assert_problem(response, 422, "webhook.url_refused")
    fetched = await api.client.get(f"{P}/hooks/{hook['id']}", headers=api.headers())
    assert fetched.json()["url"] == PUBLIC_URL


async def test_patching_to_a_private_url_is_refused(api: Api) -> None:
    hook = await registered(api)
    response = await api.client.patch(
        f"{P}/hooks/{hook['id']}", json={"url": "http://127.0.0.1/x"}, headers=api.headers()
    )
    assert_problem(response, 422, "webhook.url_refused")
    fetched = await api.client.get(f"{P}/hooks/{hook['id']}", headers=api.headers())
    assert fetched.json()["url"] == PUBLIC_URL


@pytest.fixture
async def private_api(migrated_url: str) -> AsyncIterator[Api]:
    """The app with HR_WEBHOOK_ALLOW_PRIVATE=true (local development and tests)."""
    operator_key = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    app = create_app(make_settings(migrated_url, webhook_allow_private=True))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(app=app, url=migrated_url, operator_key=operator_key, client=client)


async def test_allow_private_accepts_loopback_but_still_refuses_multicast(
    private_api: Api,
) -> None:
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook"):
        response, _ = await register(private_api, url=url)
        assert response.status_code == 201, (url, response.text)
    for url in ("http://224.0.0.1/hook", "http://0.0.0.0/hook"):
        response, _ = await register(private_api, url=url)
        assert_problem(response, 422, "webhook.url_refused")


async def test_the_free_tier_allows_no_webhooks(api: Api) -> None:
    _tenant, key = await api.new_tenant_admin(tier="free")
    response, _ = await register(api, key)
    body = assert_problem(response, 403, "quota.max_webhooks")
    assert (body["limit"], body["tier"]) == (0, "free")


async def test_the_pro_tier_allows_five_active_webhooks(api: Api) -> None:
    _tenant, key = await api.new_tenant_admin(tier="pro")
    hooks = [await registered(api, key) for _ in range(5)]
    response, _ = await register(api, key)
    assert assert_problem(response, 403, "quota.max_webhooks")["limit"] == 5
    # a deactivated hook no longer counts
    deleted = await api.client.delete(f"{P}/hooks/{hooks[0]['id']}", headers=api.headers(key))
    assert deleted.status_code == 204
    response, _ = await register(api, key)
    assert response.status_code == 201, response.text


async def test_readers_cannot_manage_webhooks_but_writers_can(api: Api) -> None:
    reader = await api.new_key(Role.READER)
    writer = await api.new_key(Role.WRITER)
    response, _ = await register(api, reader)
    assert response.status_code == 403
    response, _ = await register(api, writer)
    assert response.status_code == 201, response.text


async def test_other_tenants_hooks_and_deliveries_are_not_found(api: Api) -> None:
    _a, key_a = await api.new_tenant_admin()
    _b, key_b = await api.new_tenant_admin()
    hook = await registered(api, key_a)
    test = await api.client.post(f"{P}/hooks/{hook['id']}/test", headers=api.headers(key_a))
    assert test.status_code == 202, test.text
    delivery_id = test.json()["id"]

    requests = [
        ("GET", f"{P}/hooks/{hook['id']}", None),
        ("PATCH", f"{P}/hooks/{hook['id']}", {"events": ["packet.failed"]}),
        ("DELETE", f"{P}/hooks/{hook['id']}", None),
        ("POST", f"{P}/hooks/{hook['id']}/rotate-secret", None),
        ("POST", f"{P}/hooks/{hook['id']}/test", None),
        ("GET", f"{P}/hooks/{hook['id']}/deliveries", None),
        ("GET", f"{P}/hooks/deliveries/{delivery_id}/attempts", None),
        ("POST", f"{P}/hooks/dlq/{delivery_id}/replay", None),
    ]
    for method, path, body in requests:
        response = await api.client.request(method, path, json=body, headers=api.headers(key_b))
        assert response.status_code == 404, (method, path, response.text)
    assert (await api.client.get(f"{P}/hooks", headers=api.headers(key_b))).json() == []
    assert (await api.client.get(f"{P}/hooks/dlq", headers=api.headers(key_b))).json() == []
    # untouched for its owner
    fetched = await api.client.get(f"{P}/hooks/{hook['id']}", headers=api.headers(key_a))
    assert fetched.json()["active"] is True
    assert fetched.json()["events"] == hook["events"]


async def test_unknown_hook_ids_are_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    assert_problem(
        await api.client.get(f"{P}/hooks/{missing}", headers=api.headers()),
        404,
        "webhook.not_found",
    )
    assert_problem(
        await api.client.post(f"{P}/hooks/dlq/{missing}/replay", headers=api.headers()),
        404,
        "webhook.delivery_not_found",
    )


async def test_deliveries_list_shape_filters_and_paging(api: Api) -> None:
    hook = await registered(api, events=["packet.created"])
    created = [await create_packet(api, summary=f"order {index}") for index in range(3)]
    test = await api.client.post(f"{P}/hooks/{hook['id']}/test", headers=api.headers())
    assert test.status_code == 202
    assert set(test.json()) == DELIVERY_FIELDS

    response = await api.client.get(f"{P}/hooks/{hook['id']}/deliveries", headers=api.headers())
    assert response.status_code == 200
    deliveries = response.json()
    assert isinstance(deliveries, list)
    assert len(deliveries) == 4
    for delivery in deliveries:
        assert set(delivery) == DELIVERY_FIELDS
        assert delivery["webhook_id"] == hook["id"]
        assert (delivery["status"], delivery["attempts"]) == ("pending", 0)
        assert delivery["next_retry_at"] is not None
        assert delivery["delivered_at"] is None
    packets = {d["packet_id"] for d in deliveries if d["event_type"] == "packet.created"}
    assert packets == {packet["id"] for packet in created}
    # one event id per event (receivers deduplicate on it)
    assert len({d["event_id"] for d in deliveries}) == 4

    page = await api.client.get(
        f"{P}/hooks/{hook['id']}/deliveries",
        params={"limit": 2, "offset": 1},
        headers=api.headers(),
    )
    assert [d["id"] for d in page.json()] == [d["id"] for d in deliveries[1:3]]
    pending = await api.client.get(
        f"{P}/hooks/{hook['id']}/deliveries", params={"status": "pending"}, headers=api.headers()
    )
    assert len(pending.json()) == 4
    delivered = await api.client.get(
        f"{P}/hooks/{hook['id']}/deliveries", params={"status": "delivered"}, headers=api.headers()
    )
    assert delivered.json() == []
    bad = await api.client.get(
        f"{P}/hooks/{hook['id']}/deliveries", params={"status": "exploded"}, headers=api.headers()
    )
    assert bad.status_code == 422
    attempts = await api.client.get(
        f"{P}/hooks/deliveries/{deliveries[0]['id']}/attempts", headers=api.headers()
    )
    assert attempts.status_code == 200
    assert attempts.json() == []


async def test_dlq_endpoints_on_an_empty_queue(api: Api) -> None:
    dlq = await api.client.get(f"{P}/hooks/dlq", headers=api.headers())
    assert (dlq.status_code, dlq.json()) == (200, [])
    retry = await api.client.post(f"{P}/hooks/dlq/retry-all", headers=api.headers())
    assert retry.status_code == 200
    assert retry.json()["retried"] == 0


# -- the real SDK -------------------------------------------------------------------------------


@pytest.fixture
def sdk(live_server: LiveServer) -> Iterator[HandoffRailClient]:
    with sync_client(live_server) as client:
        yield client


def test_sdk_register_list_deliveries_and_delete(sdk: HandoffRailClient) -> None:
    hook = sdk.register_webhook(url=PUBLIC_URL, events=["packet.created"], secret=SECRET)
    assert (hook.url, hook.events, hook.active) == (PUBLIC_URL, ["packet.created"], True)
    default = sdk.register_webhook(url=PUBLIC_URL + "/default", secret=SECRET)
    assert "packet.claimed" in default.events

    listed = sdk.list_webhooks()
    assert [item.id for item in listed] == [hook.id, default.id]

    packet = sdk.create_packet(_sdk_packet())
    deliveries = sdk.list_webhook_deliveries(hook.id)
    assert len(deliveries) == 1
    assert set(deliveries[0]) >= DELIVERY_FIELDS - {"event_id"}
    assert deliveries[0]["packet_id"] == str(packet.id)
    assert deliveries[0]["event_type"] == "packet.created"
    assert sdk.list_webhook_deliveries(hook.id, status="delivered") == []

    sdk.delete_webhook(hook.id)
    with pytest.raises(ValidationError) as excinfo:
        sdk.delete_webhook(hook.id)
    assert excinfo.value.status_code == 409
    assert {(item.id, item.active) for item in sdk.list_webhooks()} == {
        (hook.id, False),
        (default.id, True),
    }


def _sdk_packet() -> Any:
    from handoffrail.sdk import PacketBuilder

    return (
        PacketBuilder()
        .from_("sales-01", "Sales")
        .to("billing-01", "Billing")
        .with_summary("refund for order 77")
        .build()
    )
