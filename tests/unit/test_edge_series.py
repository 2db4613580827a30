"""The edge's request metric series cache (observability/edge.py): the very series
prometheus-client's `labels()` gives, and junk beyond its bound still counted."""

from __future__ import annotations

import pytest

from handoffrail_server.observability import edge
from handoffrail_server.observability.metrics import LATENCY, REQUESTS


def test_a_cached_series_is_the_one_labels_gives() -> None:
    requests, latency = edge._series("POST", "/api/v1/test-series", 201)
    assert requests is REQUESTS.labels("POST", "/api/v1/test-series", "201")
    assert latency is LATENCY.labels("POST", "/api/v1/test-series")
    assert edge._series("POST", "/api/v1/test-series", 201) == (requests, latency)


def test_past_its_bound_the_cache_stops_growing_and_still_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge, "_SERIES", {})
    monkeypatch.setattr(edge, "_MAX_SERIES", 2)
    for method in ("A1", "A2", "A3", "A4"):
        requests, _ = edge._series(method, "/api/v1/test-bound", 400)
        requests.inc()
    assert len(edge._SERIES) == 2
    value = REQUESTS.labels("A4", "/api/v1/test-bound", "400")._value.get()
    assert value == 1
