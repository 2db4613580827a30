"""The one pure-ASGI middleware every HTTP request passes: request id, body cap, security
headers, metrics and the access log.

These were four middlewares; each wrapped `send` (and two wrapped `receive`) for every request,
and on the hot path the layers cost more than the work (issue 10, round 3). One layer does all
of it with one `send` wrapper:

- **request id**: a sane incoming `X-Request-ID` is kept, else one is made; it is echoed on the
  response, bound to the log context and kept in `scope["state"]["request_id"]`;
- **response headers** a dependency asked for (`scope["state"]["response_headers"]`: the
  rate-limit headers), on success and error alike;
- **body cap**: bodies over `max_bytes` get a 413 problem+json, counted as bytes stream in, so a
  lying or absent Content-Length cannot get a larger body through;
- **security headers** for platforms without Caddy in front; HSTS only over HTTPS;
- **metrics and access log**: counted and timed by route template just before the last body
  chunk leaves (a client that has its answer and then scrapes /metrics finds its request there),
  or once as a 500 when the app fails before answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from handoffrail_server.observability.metrics import LATENCY, REQUESTS, route_template

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")

access_log = structlog.get_logger("handoffrail.access")

#: (method, endpoint, status) -> the request counter's and latency histogram's series:
#: prometheus-client's `labels()` takes a lock and checks its arguments on every call
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_MAX_SERIES = 4096  #: beyond this (junk methods), series are looked up each time, not kept


def _series(method: str, endpoint: str, status: int) -> tuple[Any, Any]:
    key = (method, endpoint, status)
    found = _SERIES.get(key)
    if found is None:
        found = (REQUESTS.labels(method, endpoint, str(status)), LATENCY.labels(method, endpoint))
        if len(_SERIES) < _MAX_SERIES:
            _SERIES[key] = found
    return found


class BodyTooLarge(HTTPException):
    """Raised inside receive() when the streamed body passes the cap.

    An HTTPException so that FastAPI's body parsing re-raises it (any other exception there
    becomes a 400 "error parsing the body") and the problem handlers answer 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body exceeds the limit of {max_bytes} bytes")


def _problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    **extra: Any,
) -> tuple[Message, Message]:
    body: dict[str, Any] = {
        "type": f"https://handoffrail.dev/problems/{code.replace('.', '/')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    payload = json.dumps(body).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(payload)).encode()),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": payload}


def _too_large(max_bytes: int) -> tuple[Message, Message]:
    detail = f"Request body exceeds the limit of {max_bytes} bytes"
    return _problem(413, "request.too_large", "Content too large", detail, limit_bytes=max_bytes)


#: the answer to a request the server cancelled while shutting down (its time ran out)
_SHUTTING_DOWN = _problem(
    503,
    "service.shutting_down",
    "Service unavailable",
    "The server is shutting down and stopped this request before answering it; retry it",
    headers=((b"retry-after", b"1"), (b"connection", b"close")),
)


class _Exchange:
    """One request's edge bookkeeping (a slotted object instead of four closures' cells)."""

    __slots__ = (
        "declared_too_large",
        "max_bytes",
        "receive",
        "received",
        "recorded",
        "request_id",
        "response_started",
        "scope",
        "secure",
        "send",
        "started",
        "status_code",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.max_bytes = max_bytes
        self.received = 0
        self.recorded = False
        self.started = time.perf_counter()
        self.status_code = 500
        self.response_started = False
        self.secure = scope.get("scheme") == "https"
        incoming = None
        declared = -1
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        self.request_id = (
            incoming if incoming and _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        )
        self.declared_too_large = declared > max_bytes

    async def limited_receive(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
        return message

    async def edge_send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.response_started = True
            self.status_code = int(message["status"])
            headers = list(message.get("headers", ()))
            present = {name.lower() for name, _ in headers}
            for name, value in _SECURITY_HEADERS:
                if name not in present:
                    headers.append((name, value))
            if self.secure and _HSTS[0] not in present:
                headers.append(_HSTS)
            headers.append((b"x-request-id", self.request_id.encode("latin-1")))
            for name, value in self.scope.get("state", {}).get("response_headers", ()):
                headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
            message["headers"] = headers
        elif kind == "http.response.body" and not message.get("more_body"):
            self.record()
        await self.send(message)

    def record(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        scope = self.scope
        elapsed = time.perf_counter() - self.started
        endpoint = route_template(scope)
        method = str(scope.get("method", "GET"))
        requests, latency = _series(method, endpoint, self.status_code)
        requests.inc()
        latency.observe(elapsed)
        principal = scope.get("state", {}).get("principal")
        access_log.info(
            "http.request",
            method=method,
            endpoint=endpoint,
            status_code=self.status_code,
            duration_ms=round(elapsed * 1000, 2),
            tenant_id=getattr(principal, "tenant_id", None),
            # the key's public id, not the key (an `api_key…` name would be redacted)
            key_id=getattr(principal, "key_id", None),
        )


class EdgeMiddleware:
    """Request id, body cap, security headers, metrics and access log in one layer."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, self.max_bytes)
        scope.setdefault("state", {})["request_id"] = exchange.request_id
        structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
        try:
            if exchange.declared_too_large:
                await self._refuse(exchange)
                return
            try:
                await self.app(scope, exchange.limited_receive, exchange.edge_send)
            except BodyTooLarge:
                if not exchange.response_started:
                    await self._refuse(exchange)
            except asyncio.CancelledError:
                # Under a server, only the server cancels a whole request: its shutdown
                # timeout ran out. An unfinished transaction rolls back as the cancel unwinds;
                # answer 503 (retry) rather than leave the server to answer 500. The cancel
                # goes on: whoever cancelled the task learns it was.
                if not exchange.response_started:
                    access_log.warning("http.cancelled", path=scope.get("path"))
                    start, body = _SHUTTING_DOWN
                    with contextlib.suppress(Exception):  # a gone client: the cancel goes on
                        await exchange.edge_send(dict(start))
                        await exchange.edge_send(dict(body))
                raise
        finally:
            exchange.record()
            structlog.contextvars.unbind_contextvars("request_id")

    async def _refuse(self, exchange: _Exchange) -> None:
        start, body = _too_large(self.max_bytes)
        await exchange.edge_send(start)
        await exchange.edge_send(body)
