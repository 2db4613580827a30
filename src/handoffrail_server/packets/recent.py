"""Packets this process changed moments ago (PostgreSQL): the next claim or PATCH of one of
them skips its read.

A claim or a PATCH reads the packet, applies the rules in Python (`claims._try_claim`,
`PacketService.update`) and writes with a compare-and-set on `row_version`. Along a packet's
ordinary life (create → claim → in_progress → completed) each step follows the step before it,
often answered by the same process, so the read returns the row that process just wrote. This
cache keeps those rows, and a step that finds its packet here goes straight to the
compare-and-set: one round trip instead of two.

- **Only committed rows, only rows as stored.** A row is staged by the unit of work that wrote
  it (`stage`: the new packet of a create, the row a claim, claim-next or PATCH returned) when
  that change was the unit's last write, and enters the cache once the unit has committed
  (`promote`, from `api.deps.request_session`).
- **Used once.** `take` removes the row: while a request works with it, other requests of this
  process on the same packet read it from the database (contention inside a process takes the
  ordinary path; it costs at most one failed write, by the request holding the row), and the
  winner's new row takes its place.
- **Checked by the write.** A compare-and-set from a cached row also requires the row's
  `updated_at` and the status the rules saw (a claim also that the packet has not expired).
  Every writer of packets (servers, workers, the CLI) goes through a compare-and-set that bumps
  `row_version` and sets `updated_at`, so a row changed elsewhere meanwhile (another process,
  the expiry job) fails it: nothing is written, and the request reads the row and goes on as
  without the cache. Refusals (409, 410, 400) are never decided from a cached row: a cached row
  the rules would refuse is not used.
- Entries expire after `TTL_SECONDS` and the cache holds at most `HR_RECENT_PACKETS` rows
  (least recently stored out first; 0 turns it off). Not used on SQLite.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from handoffrail_server.db import fast
from handoffrail_server.db.models import Packet
from handoffrail_server.observability import metrics

#: seconds a row stays usable: a safety net for a row changed by hand-written SQL that left
#: `row_version` and `updated_at` alone (the write checks those, not the rest of the row)
TTL_SECONDS = 10.0
#: session.info key: rows the unit of work wrote, for the cache once it commits
_STAGED = "handoffrail.recent_packets"

Key = tuple[str, uuid.UUID]


class RecentPackets:
    """At most `size` packet rows by (tenant, id), each usable once within `ttl` seconds."""

    def __init__(
        self, size: int, *, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._rows: OrderedDict[Key, tuple[float, Packet]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, packet: Packet) -> None:
        """Keep `packet` (a committed row), replacing any older row of it."""
        key = (packet.tenant_id, packet.id)
        self._rows.pop(key, None)
        self._rows[key] = (self._clock() + self.ttl, packet)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def take(self, tenant_id: str, packet_id: uuid.UUID) -> Packet | None:
        """The row of the packet, removed from the cache; None when absent or expired."""
        entry = self._rows.pop((tenant_id, packet_id), None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]


_caches: weakref.WeakKeyDictionary[AsyncEngine, RecentPackets] = weakref.WeakKeyDictionary()


def enable(engine: AsyncEngine, size: int) -> None:
    """Keep up to `size` recent rows for units of work of `engine` (PostgreSQL); 0: none."""
    if size > 0:
        _caches[engine] = RecentPackets(size)
    else:
        _caches.pop(engine, None)


def of(engine: AsyncEngine) -> RecentPackets | None:
    """The engine's cache; None when it has none."""
    return _caches.get(engine)


def _cache(session: AsyncSession) -> RecentPackets | None:
    lean: fast.Lean | None = session.info.get(fast.LEAN_KEY)
    return None if lean is None else _caches.get(lean.engine)


def stage(session: AsyncSession, packet: Packet) -> None:
    """`packet` is the row the unit of work's last write left: cache it once the unit commits."""
    if _cache(session) is not None:
        session.info.setdefault(_STAGED, []).append(packet)


def promote(session: AsyncSession) -> None:
    """The unit of work has committed: its staged rows enter the cache."""
    staged: list[Packet] | None = session.info.pop(_STAGED, None)
    cache = _cache(session) if staged else None
    if cache is None or staged is None:
        return
    for packet in staged:
        cache.put(packet)


def take(session: AsyncSession, tenant_id: str, packet_id: uuid.UUID) -> Packet | None:
    """The cached row of the packet, if this process wrote it moments ago (see the module
    docstring); it leaves the cache."""
    cache = _cache(session)
    if cache is None:
        return None
    packet = cache.take(tenant_id, packet_id)
    metrics.RECENT_PACKETS.labels("miss" if packet is None else "hit").inc()
    return packet


def stale() -> None:
    """A compare-and-set from a cached row changed nothing: the row had changed meanwhile."""
    metrics.RECENT_PACKETS.labels("stale").inc()
