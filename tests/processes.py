"""Waiting for a server the tests started as a subprocess (`handoffrail serve`, Gunicorn, Caddy)."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

#: seconds a started server may take until its URL answers 200
START_TIMEOUT = 60.0


def wait_for(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    verify: ssl.SSLContext | bool = True,
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url}: process exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except (httpx.TransportError, ssl.SSLError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer in {timeout}s:\n{log.read_text()[-4000:]}")
