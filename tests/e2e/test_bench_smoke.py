"""The benchmark harness in smoke mode (issue 10): it must run end to end and never double-claim.

Tiny counts and no timing assertions: this only keeps `bench/` from rotting. The real numbers come
from `make bench` (docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from handoffrail_server.cli.bench import find_checkout
from tests.conftest import require_postgres, require_redis

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HANDOFFRAIL = str(Path(sys.executable).with_name("handoffrail"))


def test_find_checkout_walks_up_to_the_harness(tmp_path: Path) -> None:
    assert find_checkout(ROOT / "src" / "handoffrail_server") == ROOT
    assert find_checkout(tmp_path) == ROOT  # falls back to this package's own checkout


@pytest.mark.timeout(420)
def test_bench_smoke_prints_the_table_without_double_claims(tmp_path: Path) -> None:
    require_postgres()
    require_redis()
    results = tmp_path / "bench.json"
    completed = subprocess.run(
        [HANDOFFRAIL, "bench", "--smoke", "--json", str(results)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert "| server" in completed.stdout
    assert "ceiling: raw INSERT (asyncpg)" in completed.stdout
    assert "claim-next workers" in completed.stdout
    assert "webhook commit -> receiver" in completed.stdout
    assert "machine budget" in completed.stdout
    data = json.loads(results.read_text())
    assert data["double_claims"] == 0
    claim_rows = [row for row in data["rows"] if row["double"] is not None]
    assert claim_rows
    assert all(row["double"] == 0 for row in claim_rows)
    assert all(row["claims"] > 0 for row in claim_rows)
    pg_rows = [row for row in data["rows"] if row["server"] in ("serve x1", "gunicorn x2")]
    measured = [row for row in pg_rows if row["scenario"] in ("create", "claim-next workers")]
    assert measured
    assert all(row["db_cpu_ms"] >= 0 for row in measured)  # PostgreSQL's own CPU per op
    scenarios = {(row["server"], row["scenario"]) for row in data["rows"]}
    for server in ("serve x1", "gunicorn x2", "sqlite x1"):
        assert (server, "create") in scenarios
        assert (server, "lifecycle (4 requests)") in scenarios
    assert ("sqlite x1", "claim-next workers") in {
        (row["server"], row["scenario"]) for row in claim_rows
    }
