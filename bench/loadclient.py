"""The load generator's HTTP/1.1 keep-alive client and its measurement helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# -- a minimal HTTP/1.1 keep-alive client ------------------------------------------------------


class HttpError(Exception):
    """A malformed response or a closed connection."""


class Connection:
    """One keep-alive HTTP/1.1 connection; requests are sent one at a time."""

    def __init__(self, url: str, api_key: str | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        auth = f"X-API-Key: {api_key}\r\n" if api_key else ""
        self.head = f"Host: {self.host}:{self.port}\r\n{auth}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; returns (status, body). Reconnects once on a stale connection."""
        for attempt in range(2):
            if self.writer is None:
                await self._open()
            try:
                return await self._exchange(method, path, body)
            except (HttpError, ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 1:
                    raise
        raise HttpError("unreachable")

    async def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        payload = body or b""
        content = "Content-Type: application/json\r\n" if body is not None else ""
        head = (
            f"{method} {path} HTTP/1.1\r\n{self.head}{content}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"bad status line {lines[0]!r}") from None
        length = 0
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if chunked:
            data = bytearray()
            for _chunk in range(100_000):
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
            content_bytes = bytes(data)
        else:
            content_bytes = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, content_bytes


# -- measurement --------------------------------------------------------------------------------


@dataclass
class Run:
    """What a timed scenario collected."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(run: Run, ops: int, wall: float, cpu: float) -> dict[str, Any]:
    ms = [value * 1000 for value in run.latencies]
    return {
        "ops": ops,
        "seconds": round(wall, 3),
        "ops_per_s": ops / wall if wall > 0 else 0.0,
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "errors": run.errors,
        "statuses": {str(code): count for code, count in sorted(run.statuses.items())},
        "client_cpu": cpu / wall if wall > 0 else 0.0,
        **run.extra,
    }


async def timed(clients: int, work: Callable[[int], Awaitable[int]]) -> tuple[int, float, float]:
    """Run `work(client_index)` on `clients` coroutines; returns (ops, wall s, client CPU s)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = await asyncio.gather(*(work(index) for index in range(clients)))
    return sum(done), time.perf_counter() - wall0, time.process_time() - cpu0


class Budget:
    """A shared request budget with a deadline: `take()` is False once either runs out."""

    def __init__(self, count: int, seconds: float) -> None:
        self.left = count
        self.deadline = time.perf_counter() + seconds

    def take(self) -> bool:
        if self.left <= 0 or time.perf_counter() > self.deadline:
            return False
        self.left -= 1
        return True
