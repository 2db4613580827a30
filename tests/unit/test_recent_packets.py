"""The recent-rows cache itself (packets/recent.py): bounded, each row usable once, expiring."""

from __future__ import annotations

import uuid

from handoffrail_server.db.models import Packet
from handoffrail_server.db.rows import transient
from handoffrail_server.packets.recent import RecentPackets


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _packet(tenant_id: str = "t1", version: int = 1) -> Packet:
    return transient(Packet, id=uuid.uuid4(), tenant_id=tenant_id, row_version=version)


def test_a_row_is_taken_once() -> None:
    cache = RecentPackets(4)
    packet = _packet()
    cache.put(packet)
    assert cache.take("t1", packet.id) is packet
    assert cache.take("t1", packet.id) is None
    assert len(cache) == 0


def test_rows_are_found_only_under_their_own_tenant() -> None:
    cache = RecentPackets(4)
    packet = _packet("t1")
    cache.put(packet)
    assert cache.take("t2", packet.id) is None
    assert cache.take("t1", packet.id) is packet


def test_a_newer_row_of_a_packet_replaces_the_older_one() -> None:
    cache = RecentPackets(4)
    older = _packet(version=1)
    newer = transient(Packet, id=older.id, tenant_id="t1", row_version=2)
    cache.put(older)
    cache.put(newer)
    assert len(cache) == 1
    assert cache.take("t1", older.id) is newer


def test_the_least_recently_stored_rows_leave_first_beyond_the_size() -> None:
    cache = RecentPackets(3)
    packets = [_packet() for _ in range(5)]
    cache.put(packets[0])
    for packet in packets[1:]:
        cache.put(packet)
    cache.put(packets[2])  # stored again: now the most recent
    assert len(cache) == 3
    assert [cache.take("t1", packet.id) is not None for packet in packets] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_rows_expire_after_the_ttl() -> None:
    clock = _Clock()
    cache = RecentPackets(4, ttl=10.0, clock=clock)
    fresh, stale = _packet(), _packet()
    cache.put(stale)
    clock.now += 6
    cache.put(fresh)
    clock.now += 4  # stale's 10 s are up, fresh has 6 left
    assert cache.take("t1", stale.id) is None
    assert cache.take("t1", fresh.id) is fresh
    assert len(cache) == 0  # the expired row left too
