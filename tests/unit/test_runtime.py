"""Runtime tuning: FastAPI's native telemetry decided once; start-up objects frozen once."""

from __future__ import annotations

import gc

import pytest

from handoffrail_server.observability import runtime


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {"tracing": False, "metrics": False, "logs": False}),
        (
            {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"},
            {"tracing": True, "metrics": False, "logs": False},
        ),
        (
            {"OTEL_PYTHON_METER_PROVIDER": "x", "OTEL_PYTHON_LOGGER_PROVIDER": "y"},
            {"tracing": False, "metrics": True, "logs": True},
        ),
        ({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}, {}),  # FastAPI's own defaults
        (
            {"FASTAPI_OTEL_AUTO_CONFIGURE": "false"},
            {"tracing": False, "metrics": False, "logs": False},
        ),
    ],
)
def test_native_telemetry_stays_on_only_where_a_provider_can_exist(
    environ: dict[str, str], expected: dict[str, bool]
) -> None:
    assert dict(runtime.native_telemetry(environ)) == expected


def test_startup_objects_are_frozen_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_frozen", False)
    try:
        assert runtime.freeze_startup_objects() is True
        frozen = gc.get_freeze_count()
        assert frozen > 0
        alive_since: list[list[int]] = [[] for _ in range(1000)]  # a second freeze would add these
        assert runtime.freeze_startup_objects() is False
        # frozen objects may still die (another thread dropping one): never more, though
        assert gc.get_freeze_count() <= frozen
        assert len(alive_since) == 1000
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("allocations", "young"),
    [(0, 700), (1, 1), (10_000, 10_000), (1_000_000, 1_000_000)],
)
def test_young_threshold_sets_only_the_young_generation_while_open(
    allocations: int, young: int
) -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        with runtime.young_threshold(allocations) as inside:
            assert inside == (young, 11, 12)
            assert gc.get_threshold() == (young, 11, 12)
        assert gc.get_threshold() == (700, 11, 12)
    finally:
        gc.set_threshold(*before)


def test_young_threshold_is_restored_when_the_body_raises() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with pytest.raises(RuntimeError), runtime.young_threshold(5000):
            raise RuntimeError("boom")
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
