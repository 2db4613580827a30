"""`handoffrail_server.client.follow_events` against a real server: live events, filters, a forced
disconnect (through a TCP proxy that cuts and refuses connections) resumed without loss or
duplicates, refusal of a bad key, and bounded retries. Every wait is bounded."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from handoffrail_server.client import StreamError, follow_events
from handoffrail_server.main import create_app
from tests.conftest import bootstrap_operator_key, free_port, make_settings, packet_body
from tests.integration.stream_helpers import WAIT, serve


class CuttableProxy:
    """A loopback TCP proxy whose connections can be cut and new ones refused for a while."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()  # refused: the client sees the connection drop at once
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `restore()`."""
        self.open.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Live:
    base_url: str
    proxy: CuttableProxy
    key: str

    @property
    def url(self) -> str:
        """Followers connect through the proxy (closing it at teardown ends their streams)."""
        return f"http://127.0.0.1:{self.proxy.port}"

    def create(self, **kwargs: Any) -> str:
        response = httpx.post(
            f"{self.base_url}/api/v1/packets",
            json=packet_body(**kwargs),
            headers={"X-API-Key": self.key},
            timeout=WAIT,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture
def live(migrated_url: str) -> Iterator[Live]:
    operator_key = bootstrap_operator_key(migrated_url)
    with serve(create_app(make_settings(migrated_url, stream_poll_seconds=0.2))) as base_url:
        headers = {"X-API-Key": operator_key}
        tenant = httpx.post(
            f"{base_url}/api/v1/tenants", json={"name": "client", "tier": "pro"}, headers=headers
        ).json()["id"]
        key = httpx.post(
            f"{base_url}/api/v1/keys",
            json={"name": "c", "role": "admin", "tenant_id": tenant},
            headers=headers,
        ).json()["key"]
        proxy = CuttableProxy(int(base_url.rsplit(":", 1)[1]))
        try:
            yield Live(base_url, proxy, str(key))
        finally:
            proxy.close()


class Follower:
    """Runs `follow_events` in a thread, collecting envelopes into a queue."""

    def __init__(self, url: str, key: str, **kwargs: Any) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.error: BaseException | None = None
        self.stream = follow_events(url, key, **kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for envelope in self.stream:
                self.events.put(envelope)
        except BaseException as exc:  # reported to the test
            self.error = exc

    def take(self, count: int) -> list[dict[str, Any]]:
        return [self.events.get(timeout=WAIT) for _ in range(count)]


def _wait_connected(live: Live, follower: Follower) -> None:
    """Prove the follower is attached: a probe packet arrives. (Followers start from id 0 in
    these tests: each test has a fresh tenant, so that is its whole log and no race.)"""
    probe = live.create(summary="probe")
    (event,) = follower.take(1)
    assert event["packet_id"] == probe


def test_follows_live_events_and_filters(live: Live) -> None:
    everything = Follower(live.url, live.key, last_event_id=0, timeout=5)
    only_x = Follower(live.url, live.key, last_event_id=0, subscribe=["agent:cx"], timeout=5)
    _wait_connected(live, everything)
    other = live.create(source="cy")
    mine = live.create(source="cx")
    got = everything.take(2)
    assert [(e["type"], e["packet_id"]) for e in got] == [
        ("packet.created", other),
        ("packet.created", mine),
    ]
    assert got[0]["id"] < got[1]["id"]
    assert [e["packet_id"] for e in only_x.take(1)] == [mine]


def test_forced_disconnect_resumes_without_loss_or_duplicates(live: Live) -> None:
    follower = Follower(
        live.url,
        live.key,
        last_event_id=0,
        timeout=5,
        max_retries=50,
        backoff=0.05,
    )
    _wait_connected(live, follower)
    before = [live.create(summary=f"before {n}") for n in range(3)]
    assert [e["packet_id"] for e in follower.take(3)] == before

    live.proxy.cut()  # the stream drops and reconnects are refused
    during = [live.create(summary=f"during {n}") for n in range(5)]
    time.sleep(0.5)  # a few refused reconnect attempts
    assert follower.events.empty()
    live.proxy.restore()
    after = [live.create(summary=f"after {n}") for n in range(2)]

    got = follower.take(7)
    assert [e["packet_id"] for e in got] == during + after
    ids = [e["id"] for e in got]
    assert ids == sorted(set(ids))
    with pytest.raises(queue.Empty):
        follower.events.get(timeout=1.0)
    assert follower.error is None


def test_resume_from_a_remembered_id(live: Live) -> None:
    first = Follower(live.url, live.key, last_event_id=0, timeout=5)
    _wait_connected(live, first)
    kept = live.create()
    (event,) = first.take(1)
    missed = [live.create(), live.create()]
    resumed = Follower(live.url, live.key, last_event_id=event["id"], timeout=5)
    assert [e["packet_id"] for e in resumed.take(2)] == missed
    assert event["packet_id"] == kept


def test_refusal_and_bounded_retries(live: Live) -> None:
    started = time.monotonic()
    with pytest.raises(StreamError, match="401"):
        next(follow_events(live.base_url, "hr_" + "n" * 43, max_retries=5))
    assert time.monotonic() - started < 2  # no retries on a refused key

    started = time.monotonic()
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StreamError, match="gave up after 3 retries"):
        next(follow_events(dead, live.key, max_retries=3, backoff=0.05))
    assert time.monotonic() - started < WAIT
