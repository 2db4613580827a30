"""Sentry error reporting, only when a DSN is configured; events pass the same redaction."""

from __future__ import annotations

from typing import Any

from handoffrail_server.observability.logging import redact


def _scrub_event(event: Any, _hint: Any) -> Any:
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = redact(None, "", dict(headers))
    extra = event.get("extra")
    if isinstance(extra, dict):
        event["extra"] = redact(None, "", dict(extra))
    return event


def init_sentry(dsn: str | None, environment: str, release: str) -> bool:
    """Initialise sentry-sdk when `dsn` is set; returns whether it was initialised."""
    if not dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=f"handoffrail-server@{release}",
        send_default_pii=False,
        before_send=_scrub_event,
        traces_sample_rate=0.0,
    )
    return True
