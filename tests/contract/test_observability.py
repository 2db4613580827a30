"""Metrics and log redaction (issue 6): seed metric names and labels, and no secret in any log.

Prometheus metric objects are process-global, so metric assertions compare deltas between two
scrapes of the same process rather than absolute values.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from handoffrail_server.keys.tokens import generate_key
from handoffrail_server.main import create_app
from handoffrail_server.observability.logging import configure_logging
from tests.conftest import Api, bootstrap_operator_key, make_settings, packet_body
from tests.contract.helpers import P, assert_problem, claim, create_packet, patch

UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
PACKET_TEMPLATE = "/api/v1/packets/{packet_id}"
CLAIM_TEMPLATE = "/api/v1/packets/{packet_id}/claim"


@dataclass(frozen=True)
class Sample:
    """One exposition sample."""

    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus exposition text, parsed by prometheus_client's parser."""
    return [
        Sample(sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def has_sample(samples: list[Sample], name: str, **labels: str) -> bool:
    """True when a sample called `name` carries at least `labels`."""
    return any(
        sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        for sample in samples
    )


async def scrape(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    """GET /metrics (200 expected) and return the text."""
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# -- metrics ------------------------------------------------------------------------------------


async def drive_traffic(api: Api, key: str) -> tuple[str, str]:
    """Create two packets, read one, claim it twice (409), complete it; returns (done, open)."""
    done = await create_packet(api, key)
    still_open = await create_packet(api, key, summary="Still open")
    fetched = await api.client.get(f"{P}/packets/{done['id']}", headers=api.headers(key))
    assert fetched.status_code == 200, fetched.text
    assert (await claim(api, done["id"], key, agent_id="worker-1")).status_code == 200
    conflict = await claim(api, done["id"], key, agent_id="worker-2")
    assert_problem(conflict, 409)
    for status in ("in_progress", "completed"):
        response = await patch(api, done["id"], {"status": status}, key)
        assert response.status_code == 200, response.text
    return str(done["id"]), str(still_open["id"])


async def test_seed_metrics_carry_their_labels_after_traffic(api: Api) -> None:
    tenant_id, key = await api.new_tenant_admin()
    before = parse_metrics(await scrape(api.client))

    done_id, open_id = await drive_traffic(api, key)

    text = await scrape(api.client)
    after = parse_metrics(text)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    requests = "handoffrail_requests_total"
    assert delta(requests, method="POST", endpoint="/api/v1/packets", status_code="201") == 2
    assert delta(requests, method="GET", endpoint=PACKET_TEMPLATE, status_code="200") == 1
    assert delta(requests, method="POST", endpoint=CLAIM_TEMPLATE, status_code="200") == 1
    assert delta(requests, method="POST", endpoint=CLAIM_TEMPLATE, status_code="409") == 1
    assert delta(requests, method="PATCH", endpoint=PACKET_TEMPLATE, status_code="200") == 2
    # the first scrape is itself counted by the second one
    assert delta(requests, method="GET", endpoint="/metrics", status_code="200") >= 1

    latency = "handoffrail_request_latency_seconds"
    assert delta(f"{latency}_count", method="PATCH", endpoint=PACKET_TEMPLATE) == 2
    assert delta(f"{latency}_sum", method="PATCH", endpoint=PACKET_TEMPLATE) > 0
    assert has_sample(after, f"{latency}_bucket", method="GET", endpoint=PACKET_TEMPLATE, le="+Inf")

    assert delta("handoffrail_handoffs_total", tenant_id=tenant_id) == 1
    assert delta("handoffrail_packets_created_total", tenant_id=tenant_id) == 2
    assert delta("handoffrail_packet_transitions_total", status="completed") == 1
    assert delta("handoffrail_packet_transitions_total", status="in_progress") == 1
    assert delta("handoffrail_claim_conflicts_total") == 1
    # a fresh database per test: exactly the one packet left open is active
    assert total(after, "handoffrail_active_packets") == 1
    for gauge in ("handoffrail_db_pool_size", "handoffrail_db_pool_checked_out"):
        assert has_sample(after, gauge), gauge
    assert has_sample(after, "handoffrail_db_unavailable_total")

    # endpoint labels are route templates: no packet id (nor any UUID) ever reaches them
    assert done_id not in text
    assert open_id not in text
    for sample in after:
        endpoint = sample.labels.get("endpoint")
        if endpoint is not None:
            assert not UUID_PATTERN.search(endpoint), sample


async def test_unmatched_paths_share_one_endpoint_label(api: Api) -> None:
    before = parse_metrics(await scrape(api.client))
    random_path = f"/no/such/{uuid.uuid4()}"
    response = await api.client.get(random_path)
    assert_problem(response, 404)
    text = await scrape(api.client)
    after = parse_metrics(text)
    name = "handoffrail_requests_total"
    labels = {"method": "GET", "endpoint": "unmatched", "status_code": "404"}
    assert total(after, name, **labels) - total(before, name, **labels) == 1
    assert random_path not in text


@pytest.fixture
async def token_client(migrated_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An app whose /metrics needs HR_METRICS_TOKEN, and that token."""
    token = "metrics-" + uuid.uuid4().hex
    app = create_app(make_settings(migrated_url, metrics_token=token))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client, token


async def test_metrics_token_is_required_when_configured(
    token_client: tuple[httpx.AsyncClient, str],
) -> None:
    client, token = token_client
    body = assert_problem(await client.get("/metrics"), 401, "metrics.unauthorized")
    assert token not in json.dumps(body)
    assert_problem(await client.get("/metrics", headers={"Authorization": f"Bearer {token}x"}), 401)
    assert_problem(await client.get("/metrics", headers={"Authorization": token}), 401)
    samples = parse_metrics(await scrape(client, {"Authorization": f"Bearer {token}"}))
    assert has_sample(samples, "handoffrail_requests_total")


async def test_metrics_need_no_token_when_none_is_configured(api: Api) -> None:
    assert has_sample(parse_metrics(await scrape(api.client)), "handoffrail_requests_total")


# -- log redaction --------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Route the real structlog JSON pipeline (with `redact`) into a buffer for the test."""
    buffer = io.StringIO()
    configure_logging("info", json_logs=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    try:
        yield buffer
    finally:
        configure_logging("warning", json_logs=False)


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each parsed as one JSON object."""
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.fixture
async def logging_api(migrated_url: str) -> AsyncIterator[Api]:
    """The app at log level info (the access log is an info event)."""
    operator_key = await asyncio.to_thread(bootstrap_operator_key, migrated_url)
    app = create_app(make_settings(migrated_url, log_level="info"))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield Api(app=app, url=migrated_url, operator_key=operator_key, client=client)


async def test_planted_secrets_never_reach_the_logs(
    logging_api: Api, json_log: io.StringIO
) -> None:
    api = logging_api
    planted_content = "PLANTED-CONTENT-" + uuid.uuid4().hex
    planted_webhook = "whsec_PLANTED" + uuid.uuid4().hex
    planted_password = "PLANTEDpw" + uuid.uuid4().hex[:12]
    planted_bearer = "PLANTEDbearer" + uuid.uuid4().hex
    invalid_key = generate_key()
    request_ids = [f"req-redaction-{n}-{uuid.uuid4().hex[:8]}" for n in range(4)]

    # a valid key creating a packet whose summary and conversation carry the planted content
    body = packet_body(f"Refund; the customer's password is {planted_content}")
    assert isinstance(body["context"], dict)
    body["context"]["conversation_state"] = [
        {"role": "user", "content": f"my card is {planted_content}"}
    ]
    created = await api.client.post(
        f"{P}/packets",
        json=body,
        headers={**api.headers(), "X-Request-ID": request_ids[0]},
    )
    assert created.status_code == 201, created.text
    packet_id = created.json()["id"]
    fetched = await api.client.get(
        f"{P}/packets/{packet_id}", headers={**api.headers(), "X-Request-ID": request_ids[1]}
    )
    assert fetched.status_code == 200
    # an unknown key and an Authorization header are refused and not echoed into the logs
    refused = await api.client.get(
        f"{P}/packets",
        headers={
            "X-API-Key": invalid_key,
            "Authorization": f"Bearer {planted_bearer}",
            "X-Request-ID": request_ids[2],
        },
    )
    assert_problem(refused, 401)
    assert invalid_key not in refused.text
    # a body that fails validation: the detail must not be logged with the content either
    invalid = await api.client.post(
        f"{P}/packets",
        json={"context": {"summary": planted_content}},
        headers={**api.headers(), "X-Request-ID": request_ids[3]},
    )
    assert_problem(invalid, 422)

    # a careless caller logging secrets directly through structlog
    log = structlog.get_logger("tests.redaction")
    log.info(
        "test.careless_event",
        api_key=api.operator_key,
        x_api_key=invalid_key,
        webhook_secret=planted_webhook,
        authorization=f"Bearer {planted_bearer}",
        url=f"postgresql://user:{planted_password}@db.internal:5432/handoffrail",
        summary=planted_content,
        nested={"headers": {"Authorization": planted_bearer, "X-API-Key": api.operator_key}},
        note=f"key {api.operator_key} and {invalid_key} were seen",
        packet={"context": {"summary": planted_content}},
    )
    log.info(f"message text with {invalid_key} inside")
    try:
        raise RuntimeError(
            f"connect failed for postgresql://user:{planted_password}@db.internal/handoffrail "
            f"with key {api.operator_key}"
        )
    except RuntimeError:
        log.exception("test.failure_with_traceback")

    captured = json_log.getvalue()
    for planted in (
        api.operator_key,
        invalid_key,
        planted_content,
        planted_webhook,
        planted_password,
        planted_bearer,
    ):
        assert planted not in captured, planted

    lines = log_lines(json_log)
    events = [line["event"] for line in lines]
    for event in ("http.request", "test.careless_event", "test.failure_with_traceback"):
        assert event in events, events
    logged_ids = {line.get("request_id") for line in lines}
    for request_id in request_ids:
        assert request_id in logged_ids, request_id
    access = [line for line in lines if line["event"] == "http.request"]
    assert any(line.get("endpoint") == PACKET_TEMPLATE for line in access)
    # which key made a request is traceable: its public id, never the key itself
    created_line = next(line for line in access if line.get("request_id") == request_ids[0])
    assert created_line["tenant_id"]
    assert isinstance(created_line["key_id"], str)
    assert created_line["key_id"] not in {"", "[redacted]"}
    careless = next(line for line in lines if line["event"] == "test.careless_event")
    assert "db.internal" in careless["url"]  # the URL stays useful, only the password goes


def test_development_console_logs_are_redacted_too() -> None:
    buffer = io.StringIO()
    configure_logging("info", json_logs=False)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    key = generate_key()
    try:
        log = structlog.get_logger("tests.console")
        log.info("test.console_event", api_key=key, dsn="postgresql://u:console-pw@h/db")
        try:
            raise ValueError(f"boom postgresql://u:console-pw@h/db {key}")
        except ValueError:
            log.exception("test.console_failure")
    finally:
        configure_logging("warning", json_logs=False)
    text = buffer.getvalue()
    assert "test.console_event" in text
    assert "test.console_failure" in text
    assert "ValueError" in text
    assert key not in text
    assert "console-pw" not in text


async def test_metrics_show_the_webhook_outbox_without_a_worker(api: Api) -> None:
    """The worker has no port of its own: the API reads the outbox's gauges at scrape time."""
    hook = await api.client.post(
        f"{P}/hooks", json={"url": "http://93.184.216.34/hook"}, headers=api.headers()
    )
    assert hook.status_code == 201, hook.text
    before = parse_metrics((await api.client.get("/metrics")).text)
    for index in range(3):
        created = await api.client.post(
            f"{P}/packets", json=packet_body(f"queued {index}"), headers=api.headers()
        )
        assert created.status_code == 201, created.text
    after = parse_metrics((await api.client.get("/metrics")).text)
    name = "handoffrail_webhook_queue_depth"
    assert total(after, name) - total(before, name) == 3
    assert has_sample(after, "handoffrail_webhook_dlq_size")
    assert total(after, "handoffrail_webhook_queue_oldest_seconds") >= 0
