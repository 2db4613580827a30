"""The worker serves its own metrics (deliveries, job runs) when HR_WORKER_METRICS_PORT is set:
it has no HTTP server otherwise, and these counters live in its process only."""

from __future__ import annotations

import asyncio
import time

import httpx

from handoffrail_server.worker.runner import run_worker
from tests.conftest import free_port, make_settings


async def _scrape(url: str, deadline: float) -> str:
    async with httpx.AsyncClient() as client:
        while True:
            try:
                response = await client.get(url, timeout=2)
                if "handoffrail_job_runs_total{" in response.text:
                    return response.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the worker's metrics never showed a job run"
            await asyncio.sleep(0.1)


async def test_worker_serves_its_job_runs_on_its_metrics_port(migrated_url: str) -> None:
    port = free_port()
    settings = make_settings(migrated_url, worker_metrics_port=port, worker_poll_seconds=0.05)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:
        text = await _scrape(f"http://127.0.0.1:{port}/metrics", time.monotonic() + 30)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    assert 'handoffrail_job_runs_total{job="expire-packets"' in text
    assert "handoffrail_webhook_deliveries_total" in text
    # stopped with the worker: the port is free again
    async with httpx.AsyncClient() as client:
        try:
            await client.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            raise AssertionError("the metrics port still answers after the worker stopped")
        except httpx.TransportError:
            pass
