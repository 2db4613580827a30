"""Prometheus metrics with seed 000's names; multiprocess-safe under Gunicorn.

When `PROMETHEUS_MULTIPROC_DIR` is set (the Gunicorn config sets it), every worker writes its
samples there and `/metrics` merges them, so counters are summed across workers.
`endpoint` is always the route template (never the raw path: ids would explode cardinality).
"""

from __future__ import annotations

import os

# The image sets PROMETHEUS_MULTIPROC_DIR for every process, but only its entrypoint made the
# directory: a command a platform runs without it (Railway's pre-deploy `handoffrail migrate
# up`, `kubectl exec ... handoffrail doctor`) crashed creating the first metric.
if _multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_multiproc_dir, exist_ok=True)

from prometheus_client import (  # after the directory exists
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.types import Scope

REQUESTS = Counter(
    "handoffrail_requests_total",
    "Total HTTP requests",
    ["method", "endpoint", "status_code"],
)
LATENCY = Histogram(
    "handoffrail_request_latency_seconds",
    "Request latency",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ACTIVE_PACKETS = Gauge(
    "handoffrail_active_packets",
    "Currently active (non-terminal) packets",
    multiprocess_mode="mostrecent",
)
HANDOFFS = Counter(
    "handoffrail_handoffs_total",
    "Completed handoffs per tenant",
    ["tenant_id"],
)
PACKETS_CREATED = Counter(
    "handoffrail_packets_created_total",
    "Packets created per tenant",
    ["tenant_id"],
)
PACKET_TRANSITIONS = Counter(
    "handoffrail_packet_transitions_total",
    "Packet status changes by target status",
    ["status"],
)
CLAIM_CONFLICTS = Counter(
    "handoffrail_claim_conflicts_total",
    "Claims refused because another agent already held the packet",
)
DB_POOL_CHECKED_OUT = Gauge(
    "handoffrail_db_pool_checked_out",
    "Database connections currently checked out of this process's pool",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "handoffrail_db_pool_size",
    "Configured database pool size of this process",
    multiprocess_mode="livesum",
)
DB_GROUP_COMMIT_STATEMENTS = Histogram(
    "handoffrail_db_group_commit_statements",
    "Statements per group-commit batch (HR_DB_GROUP_COMMIT): one round trip and transaction",
    buckets=(1, 2, 4, 8, 12, 16),
)
RECENT_PACKETS = Counter(
    "handoffrail_recent_packets_total",
    "Claims and PATCHes by whether this process's row of the packet spared the read"
    " (HR_RECENT_PACKETS): hit, miss, or stale (a hit whose write found the row changed)",
    ["outcome"],
)
DB_ERRORS = Counter(
    "handoffrail_db_unavailable_total",
    "Requests answered 503 because the database was unavailable",
)

RATE_LIMITED = Counter(
    "handoffrail_rate_limited_total",
    "Requests refused with 429 by a rate limit",
    ["tier", "scope"],
)
QUOTA_REJECTIONS = Counter(
    "handoffrail_quota_rejections_total",
    "Requests refused because a tier quota was reached",
    ["tier", "quota"],
)
RATE_LIMIT_FALLBACK = Gauge(
    "handoffrail_rate_limit_fallback",
    "1 while rate limiting uses in-memory storage because Redis is unavailable",
    multiprocess_mode="max",
)

WEBHOOK_DELIVERIES = Counter(
    "handoffrail_webhook_deliveries_total",
    "Webhook delivery attempts by outcome",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "handoffrail_webhook_delivery_seconds",
    "Webhook delivery attempt duration",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_QUEUE_DEPTH = Gauge(
    "handoffrail_webhook_queue_depth",
    "Webhook deliveries waiting (pending or retrying)",
    multiprocess_mode="mostrecent",
)
WEBHOOK_QUEUE_AGE = Gauge(
    "handoffrail_webhook_queue_oldest_seconds",
    "Age of the oldest due webhook delivery",
    multiprocess_mode="mostrecent",
)
WEBHOOK_DLQ_SIZE = Gauge(
    "handoffrail_webhook_dlq_size",
    "Webhook deliveries in the dead-letter state",
    multiprocess_mode="mostrecent",
)
JOB_RUNS = Counter(
    "handoffrail_job_runs_total",
    "Scheduled job runs by job and outcome",
    ["job", "outcome"],
)

UNMATCHED = "unmatched"


def registry() -> CollectorRegistry:
    """What to expose: every process's samples merged in multiprocess mode, else this one's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text (merged across workers in multiprocess mode) and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def route_template(scope: Scope) -> str:
    """The matched route's full path template (e.g. `/api/v1/packets/{packet_id}`), or `unmatched`.

    FastAPI includes routers lazily, so `scope["route"].path` is relative to the router that
    declared it (`/packets/{packet_id}`); the prefixes come back from the raw path, which ends
    with the route's path once its parameters are filled in.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    raw_path = scope.get("path")
    if not isinstance(raw_path, str):
        return template
    params = scope.get("path_params") or {}
    try:
        filled = template.format(**{name: str(value) for name, value in params.items()})
    except (KeyError, IndexError, ValueError):
        return template
    if filled and raw_path.endswith(filled):
        return raw_path[: len(raw_path) - len(filled)] + template
    return template
