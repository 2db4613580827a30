"""Process-level runtime tuning: garbage collection after start-up, FastAPI's native telemetry.

- `freeze_startup_objects()`: after start-up (imports, app, routes, pools) every object alive
  is moved to the collector's permanent generation (`gc.freeze`). Full collections then no longer
  walk hundreds of thousands of long-lived objects on the request path, and a Gunicorn worker
  stops dirtying the pages it shares with its siblings. Once per process.
- `young_threshold(n)` (a context around the app's lifespan): a young-generation collection
  every `n` net container allocations instead of Python's 700 (`HR_GC_THRESHOLD`). At 50
  concurrent creates the requests in flight hold more than 700 young objects between them, so
  the default collected every ~6 requests and each collection walked them all: 0.18 ms of GC
  per create, ~9 % of the CPU, in pauses of up to 4 ms (generation 1) and 7 ms (generation 2).
  At 1,500 it was 7 collections per 3,000 creates, at 5,000 one (docs/performance.md, round 8).
  Requests leave almost no cyclic garbage to wait for a collection (the one known cycle, a
  body FastAPI could not parse, api/problems.py breaks), so little memory waits longer.
- `native_telemetry(environ)`: FastAPI's built-in OpenTelemetry support asks the global
  providers (three environment look-ups) on every request. We ship no OpenTelemetry SDK, so
  providers exist only when the operator configures them through `OTEL_PYTHON_*_PROVIDER` or
  FastAPI's auto-configuration; that is decided once here instead of per request.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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


@contextmanager
def young_threshold(allocations: int) -> Iterator[tuple[int, int, int]]:
    """While open, collect the young generation every `allocations` net container allocations
    (0: leave Python's threshold); the older generations' thresholds stay. Yields the thresholds
    in force; the previous ones come back on close (an app served inside another program
    leaves its collector as it found it)."""
    previous = gc.get_threshold()
    if allocations > 0:
        gc.set_threshold(allocations, previous[1], previous[2])
    try:
        young, middle, old = gc.get_threshold()
        yield young, middle, old
    finally:
        gc.set_threshold(*previous)


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
