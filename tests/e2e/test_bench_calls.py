"""`python -m bench.calls` (the deterministic calls-per-request profile) runs and reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _calls(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.calls ARGUMENTS` in the checkout; fails the test on a non-zero exit."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.calls", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_calls_per_request_are_counted_for_a_lifecycle_on_sqlite() -> None:
    report = _calls("--scenario", "lifecycle", "--count", "12").stdout
    calls = re.search(r"python calls per operation: (\d+)", report)
    assert calls is not None, report
    assert int(calls.group(1)) > 1000  # four requests through the whole app, not a stub
    assert re.search(r"^\s+[\d.]+\s+handoffrail_server$", report, re.MULTILINE), report
    assert re.search(r"^\s+[\d.]+\s+fastapi$", report, re.MULTILINE), report


def test_the_timing_mode_reports_cpu_per_claim_next_on_sqlite() -> None:
    completed = _calls("--timing", "--scenario", "claim_next", "--count", "8")
    found = re.search(
        r"claim_next on sqlite: ([\d.]+) ms CPU per operation"
        r" \(([\d.]+) ms in the event loop's thread; (\d+)/s in-process\)",
        completed.stdout,
    )
    assert found is not None, completed.stdout
    process, loop, rate = float(found.group(1)), float(found.group(2)), int(found.group(3))
    assert 0 < loop <= process  # the loop's thread is one of the process's threads
    assert rate > 0
