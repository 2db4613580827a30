"""Gunicorn with two Uvicorn workers (issue 6): metrics summed across workers, JSON logs.

The real deployment command runs against a migrated throw-away PostgreSQL database in staging
(JSON logs, schema must be at head). Requests go over fresh connections so both workers serve;
each worker's own prometheus multiprocess file proves who served, and `/metrics` must report the
exact totals summed over both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from handoffrail_server.db import migrations
from handoffrail_server.keys.tokens import generate_key
from tests.conftest import TEST_SECRET, free_port, packet_body

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
START_TIMEOUT = 60.0
HEALTH_REQUESTS = 60
PACKETS = 10
MAX_EXTRA_ROUNDS = 10


@dataclass
class Gunicorn:
    """A running Gunicorn master (own process group) and what the test needs to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    api_key: str
    metrics_dir: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group, then SIGKILL if it lingers (bounded)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def gunicorn(postgres_url: str, tmp_path: Path) -> Iterator[Gunicorn]:
    """`gunicorn -c deploy/gunicorn.conf.py handoffrail_server.asgi:app` with 2 workers."""
    migrations.upgrade(postgres_url)
    port = free_port()
    key = generate_key()
    metrics_dir = tmp_path / "prometheus"
    stderr_path = tmp_path / "gunicorn.stderr"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("HR_", "PROMETHEUS_", "WEB_CONCURRENCY", "GUNICORN_"))
    }
    env.update(
        WEB_CONCURRENCY="2",
        HR_PORT=str(port),
        HR_BIND_HOST="127.0.0.1",
        HR_ENVIRONMENT="staging",
        HR_SECRET_KEY=TEST_SECRET,
        HR_DATABASE_URL=postgres_url,
        HR_BOOTSTRAP_API_KEY=key,
        HR_LOG_LEVEL="info",
        HR_TIER_DEFAULT="business",
        HR_EXPIRY_INTERVAL_SECONDS="0",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [GUNICORN, "-c", "deploy/gunicorn.conf.py", "handoffrail_server.asgi:app"],
            cwd=ROOT,
            env=env,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    server = Gunicorn(process, f"http://127.0.0.1:{port}", key, metrics_dir, stderr_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(process)


def wait_until_healthy(server: Gunicorn) -> None:
    """Poll /health (bounded); fail with the server's stderr if it never answers."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.process.returncode}:\n{server.stderr()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"gunicorn did not become healthy in {START_TIMEOUT}s:\n{server.stderr()}")


def fresh_get(url: str) -> int:
    """One GET on its own connection (so the kernel may hand it to either worker)."""
    with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
        return client.get(url).status_code


def spread(url: str, count: int) -> None:
    """`count` GETs over fresh connections from 8 threads; every one must answer 200."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(fresh_get, [url] * count))
    assert statuses == [200] * count


def health_count_per_pid(metrics_dir: Path) -> dict[int, float]:
    """GET /health requests counted by each worker's own multiprocess file."""
    served: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        match = re.fullmatch(r"counter_(\d+)\.db", path.name)
        if not match:
            continue
        count = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
            for sample in metric.samples
            if sample.name == "handoffrail_requests_total"
            and sample.labels.get("endpoint") == "/health"
            and sample.labels.get("method") == "GET"
        )
        if count:
            served[int(match.group(1))] = count
    return served


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The merged /metrics of all workers as {(sample name, labels): value}."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and set(labels.items()) <= set(sample_labels)
    )


def test_metrics_are_summed_across_two_gunicorn_workers(gunicorn: Gunicorn) -> None:
    health_url = f"{gunicorn.base_url}/health"
    health = {"method": "GET", "endpoint": "/health", "status_code": "200"}
    # the start-up poll hit /health too: count from here
    before = total(scrape(gunicorn.base_url), "handoffrail_requests_total", **health)
    polled = sum(health_count_per_pid(gunicorn.metrics_dir).values())
    assert before == polled >= 1
    sent = 0
    spread(health_url, HEALTH_REQUESTS)
    sent += HEALTH_REQUESTS
    rounds = 0
    while len(health_count_per_pid(gunicorn.metrics_dir)) < 2 and rounds < MAX_EXTRA_ROUNDS:
        spread(health_url, HEALTH_REQUESTS)
        sent += HEALTH_REQUESTS
        rounds += 1
    per_pid = health_count_per_pid(gunicorn.metrics_dir)
    assert len(per_pid) == 2, f"only {per_pid} served after {sent} requests"
    assert sum(per_pid.values()) == polled + sent

    headers = {"X-API-Key": gunicorn.api_key}
    packet_ids = []
    for n in range(PACKETS):
        with httpx.Client(base_url=gunicorn.base_url, timeout=10, headers=headers) as client:
            response = client.post("/api/v1/packets", json=packet_body(f"packet {n}"))
            assert response.status_code == 201, response.text
            packet_ids.append(response.json()["id"])
    with httpx.Client(base_url=gunicorn.base_url, timeout=10, headers=headers) as client:
        packet = f"/api/v1/packets/{packet_ids[0]}"
        claimed = client.post(f"{packet}/claim", json={"agent_id": "w1", "agent_name": "W1"})
        assert claimed.status_code == 200, claimed.text
        for status in ("in_progress", "completed"):
            assert client.patch(packet, json={"status": status}).status_code == 200

    samples = scrape(gunicorn.base_url)
    requests = "handoffrail_requests_total"
    assert total(samples, requests, **health) - before == sent
    assert total(samples, requests, method="POST", endpoint="/api/v1/packets") == PACKETS
    assert total(samples, requests, endpoint="/api/v1/packets/{packet_id}", method="PATCH") == 2
    assert total(samples, "handoffrail_packets_created_total") == PACKETS
    handoffs = total(samples, "handoffrail_handoffs_total")
    assert handoffs == 1
    assert any(
        name == "handoffrail_handoffs_total" and dict(labels).get("tenant_id")
        for name, labels in samples
    )
    latency = "handoffrail_request_latency_seconds_count"
    assert total(samples, latency, method="GET", endpoint="/health") == polled + sent
    assert total(samples, "handoffrail_active_packets") == PACKETS - 1
    for packet_id in packet_ids:
        assert all(packet_id not in dict(labels).get("endpoint", "") for _, labels in samples)

    # staging logs are JSON: one access event per request, and never the API key
    stop(gunicorn.process)
    stderr = gunicorn.stderr()
    assert gunicorn.api_key not in stderr
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    access = [e for e in events if e.get("event") == "http.request"]
    assert sum(1 for e in access if e.get("endpoint") == "/health") == polled + sent
    assert all(e.get("request_id") for e in access)
    assert all("level" in e and "timestamp" in e for e in events)
    assert any(e.get("event") == "server.started" for e in events)
