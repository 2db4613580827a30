"""A real loopback HTTP receiver for webhook tests: records every request, answers as told."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        """A header by case-insensitive name ('' when missing)."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")


class Receiver:
    """Threaded HTTP server on 127.0.0.1:<ephemeral>.

    `statuses` are answered in order, then `default_status`; `delay` seconds are slept before
    answering; status 3xx answers carry `Location: <base>/elsewhere`.
    """

    def __init__(
        self,
        *,
        statuses: list[int] | None = None,
        default_status: int = 200,
        delay: float = 0.0,
    ) -> None:
        self.statuses = list(statuses or [])
        self.default_status = default_status
        self.delay = delay
        self.received: list[Received] = []
        self.in_flight = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver.in_flight.set()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    status = (
                        receiver.statuses.pop(0) if receiver.statuses else receiver.default_status
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                payload = b'{"ok":true}' if 200 <= status < 300 else b"receiver says no"
                if status in (204, 304):
                    payload = b""
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"{receiver.base_url}/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """The URL to register as the webhook."""
        return f"{self.base_url}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def event_ids(self) -> Counter[str]:
        """How often each `webhook-id` arrived."""
        return Counter(item.header("webhook-id") for item in self.snapshot())

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait (bounded) until at least `count` requests arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.snapshot()) >= count:
                return True
            time.sleep(0.02)
        return len(self.snapshot()) >= count

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
