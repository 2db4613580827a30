"""The benchmark's machine budget: what the cores and one event loop allow at the CPU a row cost."""

from __future__ import annotations

import pytest
from bench.report import Report, Row, budgets, cpu_per_op


def _row(scenario: str, clients: int, **result: float) -> Row:
    return Row("serve x1", scenario, clients, dict(result), ceiling_ops=8000.0)


def test_cpu_per_op_adds_the_load_clients_share_from_its_core_fraction() -> None:
    row = _row("create", 50, ops_per_s=1000.0, server_cpu_ms=0.5, db_cpu_ms=0.4, client_cpu=0.08)
    assert cpu_per_op(row) == pytest.approx((0.5, 0.4, 0.08))
    assert cpu_per_op(_row("create", 50, ops_per_s=1000.0, server_cpu_ms=0.5)) is None
    assert cpu_per_op(_row("create", 50, ops_per_s=0.0, server_cpu_ms=0.5, db_cpu_ms=1)) is None


def test_budget_lines_bound_the_ratio_by_the_cores_and_by_one_event_loop() -> None:
    report = Report()
    report.add(
        _row("create", 50, ops_per_s=1000.0, server_cpu_ms=0.5, db_cpu_ms=0.4, client_cpu=0.1)
    )
    report.add(_row("create", 10, ops_per_s=900.0, server_cpu_ms=0.5, db_cpu_ms=0.4))
    report.add(_row("lifecycle (4 requests)", 10, ops_per_s=300.0, server_cpu_ms=2.5))
    (line,) = budgets(report, cores=2)
    # 2 cores / 1.0 ms = 2000/s = 0.250 x 8000; one loop: 1000 / 0.5 ms = 0.250 x;
    # 0.25 x 8000 = 2000/s needs the server at 0.50 ms
    assert line == (
        "  create c=50: CPU per op 0.50 ms server + 0.40 ms PostgreSQL + 0.10 ms load client;"
        " 2 cores allow <= 0.250 x ceiling, one event loop <= 0.250 x;"
        " 0.25 x needs the server <= 0.50 ms"
    )
    assert budgets(Report(), cores=2) == []
