"""The forwarding database of one bridge: MAC -> port, learned or static.

A pure core (no I/O): time comes from an injectable, non-decreasing clock,
and every change leaves an ``FdbEvent`` that the caller pops.

Behaviour mirrors Linux's net/bridge/br_fdb.c where it has one:

* learning takes the source MAC of a frame that entered a port; only a valid
  unicast station address is learned (is_valid_ether_addr);
* a learned MAC seen on another port moves there (a station moved);
* a learned entry expires ``ageing`` seconds after it was last refreshed
  (``updated``), as has_expired(); ``ageing`` 0 means never, as Linux does
  with ageing_time 0; 300 s is Linux's default (BR_DEFAULT_AGEING_TIME);
* static entries never age and learning never moves them; adding a static
  entry for a MAC learned elsewhere replaces the learned one.

Size limit (the DoS guard of DESIGN §4; Linux's only comparable knob,
fdb_max_learned, is unlimited by default): the table holds at most
``max_entries`` entries, static ones included. When it is full, a newly
learned MAC evicts the learned entry that was refreshed least recently (LRU),
never a static one; when every entry is static the MAC is not learned and
``fdb_full`` counts it. The default, 8192, is far above any lab and keeps the
table a few MiB at most.

Cost: lookups are one dict access. Learned entries are also kept in an
OrderedDict ordered by ``updated`` (a refresh moves an entry to the end), so
ageing and eviction only ever look at its head: per-frame work is O(1)
whatever the table size.
"""
from __future__ import annotations

import collections
import errno
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from xenlab.net.ethernet import format_mac, is_valid_unicast
from xenlab.xen.errors import XenError

DEFAULT_AGEING = 300.0          # seconds, Linux BR_DEFAULT_AGEING_TIME
DEFAULT_MAX_ENTRIES = 8192
MAX_AGEING = 1_000_000.0        # Linux caps ageing_time near 1e6 s (clock_t range)
EVENT_BACKLOG = 65536           # events kept when nobody pops; older ones are lost (counted)

COUNTERS = ("learned", "moved", "aged", "evicted", "fdb_full", "flushed", "static_conflict",
            "events_lost")

# Event kinds: learn, move, age, evict, flush (one per entry removed), static (a
# static entry added), delete (a static entry removed).
EVENT_KINDS = ("learn", "move", "age", "evict", "flush", "static", "delete")


@dataclass
class FdbEntry:
    mac: bytes
    port: str
    static: bool
    updated: float      # last learned or refreshed (ageing runs from here)
    used: float         # last time a frame was forwarded to this MAC


@dataclass(frozen=True)
class FdbEvent:
    kind: str
    bridge: str
    mac: bytes
    port: str
    old_port: str = ""      # for "move": where the MAC was before
    static: bool = False
    at: float = 0.0         # the FDB clock when it happened

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bridge": self.bridge, "mac": format_mac(self.mac),
                "port": self.port, "old_port": self.old_port, "static": self.static}


class Fdb:
    def __init__(self, bridge: str = "xenbr0", ageing: float = DEFAULT_AGEING,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic):
        if max_entries < 1:
            raise XenError(errno.EINVAL, f"the FDB size limit must be at least 1, not {max_entries}")
        self.bridge = bridge
        self.clock = clock
        self.max_entries = max_entries
        self.ageing = _check_ageing(ageing)
        self._entries: dict[bytes, FdbEntry] = {}
        # Learned MACs only, oldest `updated` first.
        self._lru: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.counters: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self._events: collections.deque[FdbEvent] = collections.deque()

    # -- queries ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FdbEntry]:
        return iter(list(self._entries.values()))

    def get(self, mac: bytes) -> FdbEntry | None:
        """The entry for `mac` without side effects (expired ones included)."""
        return self._entries.get(mac)

    def lookup(self, mac: bytes, now: float | None = None) -> FdbEntry | None:
        """The live entry for `mac`, for a forwarding decision: an expired
        learned entry is aged out here rather than used."""
        entry = self._entries.get(mac)
        if entry is None or entry.static:
            return entry
        now = self.clock() if now is None else now
        if self._expired(entry, now):
            self._remove(entry, "age", "aged", now)
            return None
        return entry

    def expires_in(self, entry: FdbEntry, now: float | None = None) -> float | None:
        """Seconds left before `entry` ages out; None for never."""
        if entry.static or not self.ageing:
            return None
        now = self.clock() if now is None else now
        return max(0.0, entry.updated + self.ageing - now)

    # -- learning --------------------------------------------------------------
    def learn(self, mac: bytes, port: str, now: float | None = None) -> bool:
        """Learn that `mac` lives behind `port` (the source of a frame that
        entered it). False when it was not learned: not a valid unicast
        station address, a static entry holds it, or the table is full of
        static entries."""
        if not is_valid_unicast(mac):
            return False
        now = self.clock() if now is None else now
        entry = self._entries.get(mac)
        if entry is not None:
            return self._refresh(entry, port, now)
        self.expire(now)
        if len(self._entries) >= self.max_entries and not self._evict_one(now):
            self.counters["fdb_full"] += 1
            return False
        self._entries[mac] = FdbEntry(mac, port, False, now, now)
        self._lru[mac] = None
        self.counters["learned"] += 1
        self._event("learn", mac, port, now)
        return True

    def _refresh(self, entry: FdbEntry, port: str, now: float) -> bool:
        if entry.static:
            if entry.port != port:
                self.counters["static_conflict"] += 1
            return False
        if self._expired(entry, now):
            # Aged out before this frame: report it, then learn afresh.
            self._remove(entry, "age", "aged", now)
            return self.learn(entry.mac, port, now)
        entry.updated = now
        self._lru.move_to_end(entry.mac)
        if entry.port != port:
            old, entry.port = entry.port, port
            self.counters["moved"] += 1
            self._event("move", entry.mac, port, now, old_port=old)
        return True

    # -- static entries --------------------------------------------------------
    def add_static(self, mac: bytes, port: str, now: float | None = None) -> FdbEntry:
        """As `bridge fdb add MAC dev PORT master static`: replaces any learned
        entry for the MAC; an existing static entry is re-pointed."""
        if not is_valid_unicast(mac):
            raise XenError(errno.EINVAL, f"{_mac_text(mac)} is not a unicast station address; "
                                         f"a static FDB entry needs one")
        now = self.clock() if now is None else now
        entry = self._entries.get(mac)
        if entry is not None and not entry.static:
            del self._entries[mac]
            del self._lru[mac]
        elif entry is None:
            self.expire(now)
            if len(self._entries) >= self.max_entries and not self._evict_one(now):
                self.counters["fdb_full"] += 1
                raise XenError(errno.ENOSPC, f"the FDB of {self.bridge} is full "
                                             f"({self.max_entries} static entries)")
        entry = FdbEntry(mac, port, True, now, now)
        self._entries[mac] = entry
        self._event("static", mac, port, now, static=True)
        return entry

    def delete_static(self, mac: bytes, now: float | None = None) -> None:
        entry = self._entries.get(mac)
        if entry is None or not entry.static:
            raise XenError(errno.ENOENT, f"no static FDB entry for {_mac_text(mac)} on {self.bridge}")
        now = self.clock() if now is None else now
        del self._entries[mac]
        self._event("delete", mac, entry.port, now, static=True)

    # -- ageing, eviction, flush -----------------------------------------------
    def set_ageing(self, seconds: float) -> None:
        """Entries keep their `updated` time; the new ageing applies from the
        next expiry check, as a write to Linux's ageing_time does."""
        self.ageing = _check_ageing(seconds)

    def expire(self, now: float | None = None) -> int:
        """Age out every learned entry past its time; the number removed.
        Only the head of the LRU order is examined."""
        if not self.ageing or not self._lru:
            return 0
        now = self.clock() if now is None else now
        removed = 0
        while self._lru:
            entry = self._entries[next(iter(self._lru))]
            if not self._expired(entry, now):
                break
            self._remove(entry, "age", "aged", now)
            removed += 1
        return removed

    def next_expiry(self) -> float | None:
        """The clock time the oldest learned entry ages out; None if none will."""
        if not self.ageing or not self._lru:
            return None
        return self._entries[next(iter(self._lru))].updated + self.ageing

    def _evict_one(self, now: float) -> bool:
        if not self._lru:
            return False
        self._remove(self._entries[next(iter(self._lru))], "evict", "evicted", now)
        return True

    def flush(self, port: str | None = None, include_static: bool = False,
              now: float | None = None) -> int:
        """Remove entries (all, or one port's); static ones only when asked,
        as `bridge fdb flush` keeps them unless told. The number removed."""
        now = self.clock() if now is None else now
        doomed = [e for e in self._entries.values()
                  if (port is None or e.port == port) and (include_static or not e.static)]
        for entry in doomed:
            self._remove(entry, "flush", "flushed", now)
        return len(doomed)

    def _remove(self, entry: FdbEntry, kind: str, counter: str, now: float) -> None:
        del self._entries[entry.mac]
        if not entry.static:
            del self._lru[entry.mac]
        self.counters[counter] += 1
        self._event(kind, entry.mac, entry.port, now, static=entry.static)

    def _expired(self, entry: FdbEntry, now: float) -> bool:
        return bool(self.ageing) and entry.updated + self.ageing <= now

    # -- events ----------------------------------------------------------------
    def _event(self, kind: str, mac: bytes, port: str, now: float, old_port: str = "",
               static: bool = False) -> None:
        if len(self._events) >= EVENT_BACKLOG:
            self._events.popleft()
            self.counters["events_lost"] += 1
        self._events.append(FdbEvent(kind, self.bridge, mac, port, old_port, static, now))

    def pop_events(self) -> list[FdbEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def has_events(self) -> bool:
        return bool(self._events)


def _check_ageing(seconds: float) -> float:
    seconds = float(seconds)
    if not 0 <= seconds <= MAX_AGEING:   # also refuses NaN
        raise XenError(errno.EINVAL, f"ageing time {seconds} s is outside 0..{MAX_AGEING:.0f} "
                                     f"(0 means entries never age)")
    return seconds


def _mac_text(mac: bytes) -> str:
    return format_mac(mac) if len(mac) == 6 else mac.hex() or "(empty)"
