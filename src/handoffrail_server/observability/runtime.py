"""Process-level runtime tuning: garbage collection after start-up, FastAPI's native telemetry.

- `freeze_startup_objects()`: after start-up (imports, app, routes, pools) every object alive
  is moved to the collector's permanent generation (`gc.freeze`). Full collections then no longer
  walk hundreds of thousands of long-lived objects on the request path, and a Gunicorn worker
  stops dirtying the pages it shares with its siblings. Once per process.
- `native_telemetry(environ)`: FastAPI's built-in OpenTelemetry support asks the global
  providers (three environment look-ups) on every request. We ship no OpenTelemetry SDK, so
  providers exist only when the operator configures them through `OTEL_PYTHON_*_PROVIDER` or
  FastAPI's auto-configuration; that is decided once here instead of per request.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

from fastapi.telemetry import TelemetryConfig

_PROVIDERS = {
    "tracing": "OTEL_PYTHON_TRACER_PROVIDER",
    "metrics": "OTEL_PYTHON_METER_PROVIDER",
    "logs": "OTEL_PYTHON_LOGGER_PROVIDER",
}

_frozen = False


def native_telemetry(environ: Mapping[str, str]) -> TelemetryConfig:
    """FastAPI's `telemetry=` option: a signal stays on only when something can receive it."""
    if environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return TelemetryConfig()
    return TelemetryConfig(
        tracing=_PROVIDERS["tracing"] in environ,
        metrics=_PROVIDERS["metrics"] in environ,
        logs=_PROVIDERS["logs"] in environ,
    )


def freeze_startup_objects() -> bool:
    """Collect once, then exempt every surviving object from future collections (once per
    process). Returns True when this call froze."""
    global _frozen
    if _frozen:
        return False
    gc.collect()
    gc.freeze()
    _frozen = True
    return True
