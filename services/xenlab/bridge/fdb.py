"""The forwarding database of one bridge: (MAC, VLAN) -> port, learned or added.

A pure core (no I/O): time comes from an injectable, non-decreasing clock,
and every change leaves an ``FdbEvent`` that the caller pops.

Behaviour is Linux's net/bridge/br_fdb.c:

* learning takes the source MAC of a frame that entered a port; only a valid
  unicast station address is learned (is_valid_ether_addr);
* an entry seen on another port moves there (a station moved), learned or
  static alike, unless it is ``sticky`` (br_fdb_update); a ``permanent``
  (local) entry is the bridge's own address and never moves;
* a learned entry expires ``ageing`` seconds after it was last refreshed
  (``updated``), as has_expired(); 300 s is Linux's default
  (BR_DEFAULT_AGEING_TIME). ``ageing`` 0 keeps no learned entry at all:
  br_fdb_update returns at once ("some users want to always flood") and the
  garbage collector removes whatever was learned, so every unicast floods,
  as through a hub. Static and permanent entries stay;
* entries are kept per VLAN (the FDB key is MAC and VLAN id; 0 when the
  bridge does not filter VLANs), as br_fdb_find(br, addr, vid).

Size limit: Linux's ``fdb_max_learned`` bounds the learned entries only
(static and permanent entries do not count); when it is reached nothing new
is learned and nothing is evicted (fdb_create returns NULL): the frame still
goes through, to a destination that floods. Here the limit is always set
(``max_learned``, default 8192, far above any lab and a few MiB at most),
because a lab must bound its memory where Linux leaves it unlimited. That is
the ``linux`` policy, the default. The ``ovs`` policy is Open vSwitch's
mac-learning table instead: a full table makes room by evicting the least
recently refreshed learned entry of the port that has the most
(evict_mac_entry_fairly), so that one port's MAC flood pushes out its own
entries rather than its neighbours'.

Cost: lookups are one dict access (the key is the MAC itself outside VLAN
filtering). Learned entries are also kept in an OrderedDict ordered by
``updated`` (a refresh moves an entry to the end), and per port likewise, so
ageing and eviction only ever look at the head of one: per-frame work is
O(1) whatever the table size.
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
DEFAULT_MAX_LEARNED = 8192
MAX_AGEING = 1_000_000.0        # Linux caps ageing_time near 1e6 s (clock_t range)
EVENT_BACKLOG = 65536           # events kept when nobody pops; older ones are lost (counted)
VID_MAX = 4094                  # 802.1Q: 4095 is reserved

# What a full table does: Linux's fdb_max_learned (learn nothing more) or
# Open vSwitch's fair eviction.
POLICY_LINUX = "linux"
POLICY_OVS = "ovs"
POLICIES = {
    POLICY_LINUX: "when full, learn nothing new and evict nothing (Linux's fdb_max_learned)",
    POLICY_OVS: "when full, evict the least recently seen entry of the port with the most "
                "(Open vSwitch's fair eviction)",
}

COUNTERS = ("learned", "moved", "aged", "evicted", "fdb_full", "flushed", "sticky_conflict",
            "local_conflict", "events_lost")

# Event kinds: learn, move, age, evict, flush (one per entry removed), static (an
# entry added or replaced by the administrator), delete (one removed by the
# administrator).
EVENT_KINDS = ("learn", "move", "age", "evict", "flush", "static", "delete")

# How an administrator's entry behaves, as `bridge fdb add ... permanent|static|dynamic`.
PERMANENT = "permanent"         # the bridge's own address (BR_FDB_LOCAL): frames to it stop here
STATIC = "static"               # never ages (BR_FDB_STATIC)
DYNAMIC = "dynamic"             # ages as a learned one, but does not count as learned
ENTRY_STATES = (PERMANENT, STATIC, DYNAMIC)


def fdb_key(mac: bytes, vid: int) -> bytes:
    """The table key: the MAC alone outside VLANs, so the unfiltered path
    builds nothing per frame."""
    return mac if not vid else mac + vid.to_bytes(2, "big")


@dataclass
class FdbEntry:
    mac: bytes
    port: str
    static: bool        # never ages: static or permanent
    updated: float      # last learned or refreshed (ageing runs from here)
    used: float         # last time a frame was forwarded to this MAC
    vid: int = 0
    sticky: bool = False
    local: bool = False  # permanent: the bridge's own address
    learned: bool = True  # learned from a frame, not added by the administrator

    @property
    def state(self) -> str:
        """iproute2's word for it: permanent, static, or "" for a dynamic entry."""
        return PERMANENT if self.local else STATIC if self.static else ""


@dataclass(frozen=True)
class FdbEvent:
    kind: str
    bridge: str
    mac: bytes
    port: str
    old_port: str = ""      # for "move": where the MAC was before
    static: bool = False
    at: float = 0.0         # the FDB clock when it happened
    vid: int = 0
    sticky: bool = False
    local: bool = False

    @property
    def deleted(self) -> bool:
        return self.kind in ("age", "evict", "flush", "delete")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "bridge": self.bridge, "mac": format_mac(self.mac),
                "port": self.port, "old_port": self.old_port, "static": self.static,
                "vlan": self.vid, "sticky": self.sticky, "permanent": self.local}


class Fdb:
    def __init__(self, bridge: str = "xenbr0", ageing: float = DEFAULT_AGEING,
                 max_learned: int = DEFAULT_MAX_LEARNED,
                 clock: Callable[[], float] = time.monotonic, policy: str = POLICY_LINUX):
        self.bridge = bridge
        self.clock = clock
        self.max_learned = check_max_learned(max_learned)
        self.policy = check_policy(policy)
        self.ageing = check_ageing(ageing)
        self._entries: dict[bytes, FdbEntry] = {}
        # Entries that age (learned and dynamic), oldest `updated` first; the
        # learned ones of each port likewise, for fair eviction.
        self._lru: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._port_lru: dict[str, collections.OrderedDict[bytes, None]] = {}
        self.n_learned = 0
        self.hold: float | None = None      # STP topology change: entries age after this instead
        self.counters: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self._events: collections.deque[FdbEvent] = collections.deque()

    # -- queries ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FdbEntry]:
        return iter(list(self._entries.values()))

    def get(self, mac: bytes, vid: int = 0) -> FdbEntry | None:
        """The entry for `mac` without side effects (expired ones included)."""
        return self._entries.get(fdb_key(mac, vid))

    def lookup(self, mac: bytes, now: float | None = None, vid: int = 0) -> FdbEntry | None:
        """The live entry for `mac`, for a forwarding decision: an expired
        entry is aged out here rather than used."""
        entry = self._entries.get(mac if not vid else mac + vid.to_bytes(2, "big"))
        if entry is None or entry.static:
            return entry
        now = self.clock() if now is None else now
        if self._expired(entry, now):
            self._remove(entry, "age", "aged", now)
            return None
        return entry

    def expires_in(self, entry: FdbEntry, now: float | None = None) -> float | None:
        """Seconds left before `entry` ages out; None for never."""
        if entry.static:
            return None
        now = self.clock() if now is None else now
        return max(0.0, entry.updated + self.hold_time - now)

    @property
    def hold_time(self) -> float:
        """br_private.h hold_time(): forward_delay while STP's topology
        changes, else the ageing time."""
        return self.ageing if self.hold is None else self.hold

    def set_hold(self, seconds: float | None, now: float | None = None) -> None:
        """STP's topology change starts (forward_delay) or ends (None)."""
        self.hold = seconds
        self.expire(now)

    def learned_on(self, port: str) -> int:
        return len(self._port_lru.get(port, ()))

    # -- learning --------------------------------------------------------------
    def learn(self, mac: bytes, port: str, now: float | None = None, vid: int = 0) -> bool:
        """Learn that `mac` lives behind `port` (the source of a frame that
        entered it). False when nothing was learned or refreshed: not a valid
        unicast station address, ageing 0, a sticky or permanent entry holds
        it, or the table is full."""
        if not is_valid_unicast(mac):
            return False
        return self.learn_source(mac, port, self.clock() if now is None else now, vid)

    def learn_source(self, mac: bytes, port: str, now: float, vid: int = 0) -> bool:
        """`learn` for a source the caller already checked is a station
        address (the bridge's per-frame path)."""
        if not self.ageing:
            return False
        key = mac if not vid else mac + vid.to_bytes(2, "big")
        entry = self._entries.get(key)
        if entry is not None:
            if entry.updated == now and entry.port == port:
                return True         # refreshed already at this instant (br_fdb_update: now != updated)
            return self._refresh(entry, key, port, now)
        self.expire(now)
        if self.n_learned >= self.max_learned and not self._make_room(now):
            self.counters["fdb_full"] += 1
            return False
        self._insert(key, FdbEntry(mac, port, False, now, now, vid))
        self.counters["learned"] += 1
        self._event("learn", self._entries[key], now)
        return True

    def _refresh(self, entry: FdbEntry, key: bytes, port: str, now: float) -> bool:
        if entry.local:
            # br_fdb_update: "received packet with own address as source address".
            self.counters["local_conflict"] += 1
            return False
        if not entry.static and self._expired(entry, now):
            # Aged out before this frame: report it, then learn afresh.
            self._remove(entry, "age", "aged", now)
            return self.learn(entry.mac, port, now, entry.vid)
        entry.updated = now
        if not entry.static:
            self._lru.move_to_end(key)
            if entry.learned:
                self._port_lru[entry.port].move_to_end(key)
        if entry.port != port:
            if entry.sticky:
                self.counters["sticky_conflict"] += 1
                return False
            old = entry.port
            self._set_port(entry, key, port)
            self.counters["moved"] += 1
            self._event("move", entry, now, old_port=old)
        return True

    # -- administered entries ----------------------------------------------------
    def add(self, mac: bytes, port: str, state: str = STATIC, sticky: bool = False,
            vid: int = 0, replace: bool = False, now: float | None = None) -> FdbEntry:
        """`bridge fdb add|replace MAC dev PORT master [permanent|static|dynamic]
        [sticky] [vlan VID]`. add refuses an existing entry (EEXIST, as
        fdb_add_entry with NLM_F_EXCL), learned or not; replace takes it over
        whatever it was. Such entries never count as learned."""
        if not is_valid_unicast(mac):
            raise XenError(errno.EINVAL, f"{_mac_text(mac)} is not a unicast station address; "
                                         f"an FDB entry needs one")
        if state not in ENTRY_STATES:
            raise XenError(errno.EINVAL, f"FDB entry state {state!r}: use one of {', '.join(ENTRY_STATES)}")
        if sticky and state == PERMANENT:
            # br_fdb_add: a local entry cannot be sticky.
            raise XenError(errno.EINVAL, "a permanent entry cannot be sticky")
        check_vid(vid, allow_zero=True)
        now = self.clock() if now is None else now
        key = fdb_key(mac, vid)
        old = self._entries.get(key)
        if old is not None:
            if not replace:
                raise XenError(errno.EEXIST, f"{format_mac(mac)}{_vlan_text(vid)} is already in the "
                                             f"FDB of {self.bridge} (dev {old.port}); use replace")
            self._unlink(old, key)
        entry = FdbEntry(mac, port, state != DYNAMIC, now, now, vid, sticky, state == PERMANENT,
                         learned=False)
        self._insert(key, entry)
        self._event("static", entry, now)
        return entry

    def add_static(self, mac: bytes, port: str, now: float | None = None) -> FdbEntry:
        """`bridge fdb replace MAC dev PORT master static`."""
        return self.add(mac, port, STATIC, replace=True, now=now)

    def delete(self, mac: bytes, port: str | None = None, vid: int = 0,
               now: float | None = None) -> FdbEntry:
        """`bridge fdb del MAC dev PORT master [vlan VID]`: any entry, learned
        too; with a port, only if the entry is on it (ENOENT otherwise, as
        fdb_delete_by_addr_and_port)."""
        entry = self._entries.get(fdb_key(mac, vid))
        if entry is None or (port is not None and entry.port != port):
            where = f" on {port}" if port else ""
            raise XenError(errno.ENOENT, f"no FDB entry for {_mac_text(mac)}{_vlan_text(vid)}{where} "
                                         f"on {self.bridge}")
        now = self.clock() if now is None else now
        self._unlink(entry, fdb_key(mac, vid))
        self._event("delete", entry, now)
        return entry

    def delete_static(self, mac: bytes, now: float | None = None) -> None:
        entry = self._entries.get(mac)
        if entry is None or entry.learned:
            raise XenError(errno.ENOENT, f"no static FDB entry for {_mac_text(mac)} on {self.bridge}")
        self.delete(mac, now=now)

    # -- settings --------------------------------------------------------------
    def set_ageing(self, seconds: float, now: float | None = None) -> None:
        """Entries keep their `updated` time; the new ageing applies at once,
        as a write to Linux's ageing_time reschedules its garbage collector.
        0 removes every entry that ages."""
        self.ageing = check_ageing(seconds)
        if not self.ageing:
            now = self.clock() if now is None else now
            for key in list(self._lru):
                self._remove(self._entries[key], "age", "aged", now)
        else:
            self.expire(now)

    def set_limit(self, max_learned: int | None = None, policy: str | None = None) -> None:
        """A new limit keeps what is there, as fdb_max_learned does (a table
        above it learns nothing until it shrinks below)."""
        if max_learned is not None:
            self.max_learned = check_max_learned(max_learned)
        if policy is not None:
            self.policy = check_policy(policy)

    # -- ageing, eviction, flush -----------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Age out every entry past its time; the number removed. Only the
        head of the LRU order is examined."""
        if not self._lru:
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
        """The clock time the oldest entry ages out; None if none will."""
        if not self._lru:
            return None
        return self._entries[next(iter(self._lru))].updated + self.hold_time

    def _make_room(self, now: float) -> bool:
        if self.policy != POLICY_OVS or not self._port_lru:
            return False
        # The port with the most learned entries; of equals, the one whose
        # oldest entry is oldest.
        port = max(self._port_lru, key=lambda p: (len(self._port_lru[p]),
                                                  -self._entries[next(iter(self._port_lru[p]))].updated))
        victim = self._entries[next(iter(self._port_lru[port]))]
        self._remove(victim, "evict", "evicted", now)
        return True

    def flush(self, port: str | None = None, include_static: bool = False,
              now: float | None = None, vid: int | None = None, dynamic_only: bool = False) -> int:
        """Remove entries (all, or one port's, or one VLAN's); static and
        permanent ones only when asked, as br_fdb_delete_by_port(do_all)
        does. The number removed."""
        now = self.clock() if now is None else now
        doomed = [e for e in self._entries.values()
                  if (port is None or e.port == port) and (vid is None or e.vid == vid)
                  and (include_static or not e.static) and not (dynamic_only and e.static)]
        for entry in doomed:
            self._remove(entry, "flush", "flushed", now)
        return len(doomed)

    def age_port(self, port: str, hold: float, now: float | None = None) -> int:
        """Remove what `port` learned more than `hold` seconds ago: STP's
        topology-change ageing (hold_time is forward_delay while the
        topology changes)."""
        now = self.clock() if now is None else now
        doomed = [self._entries[k] for k in self._lru
                  if self._entries[k].port == port and self._entries[k].updated + hold <= now]
        for entry in doomed:
            self._remove(entry, "age", "aged", now)
        return len(doomed)

    # -- the table's bookkeeping ---------------------------------------------------
    def _insert(self, key: bytes, entry: FdbEntry) -> None:
        self._entries[key] = entry
        if not entry.static:
            self._lru[key] = None
        if entry.learned:
            self.n_learned += 1
            self._port_lru.setdefault(entry.port, collections.OrderedDict())[key] = None

    def _unlink(self, entry: FdbEntry, key: bytes) -> None:
        del self._entries[key]
        if not entry.static:
            del self._lru[key]
        if entry.learned:
            self.n_learned -= 1
            lru = self._port_lru[entry.port]
            del lru[key]
            if not lru:
                del self._port_lru[entry.port]

    def _set_port(self, entry: FdbEntry, key: bytes, port: str) -> None:
        if entry.learned:
            lru = self._port_lru[entry.port]
            del lru[key]
            if not lru:
                del self._port_lru[entry.port]
            self._port_lru.setdefault(port, collections.OrderedDict())[key] = None
        entry.port = port

    def _remove(self, entry: FdbEntry, kind: str, counter: str, now: float) -> None:
        self._unlink(entry, fdb_key(entry.mac, entry.vid))
        self.counters[counter] += 1
        self._event(kind, entry, now)

    def _expired(self, entry: FdbEntry, now: float) -> bool:
        return entry.updated + (self.ageing if self.hold is None else self.hold) <= now

    # -- events ----------------------------------------------------------------
    def _event(self, kind: str, entry: FdbEntry, now: float, old_port: str = "") -> None:
        if len(self._events) >= EVENT_BACKLOG:
            self._events.popleft()
            self.counters["events_lost"] += 1
        self._events.append(FdbEvent(kind, self.bridge, entry.mac, entry.port, old_port,
                                     entry.static, now, entry.vid, entry.sticky, entry.local))

    def pop_events(self) -> list[FdbEvent]:
        events = list(self._events)
        self._events.clear()
        return events

    @property
    def has_events(self) -> bool:
        return bool(self._events)


def check_ageing(seconds: float) -> float:
    seconds = float(seconds)
    if not 0 <= seconds <= MAX_AGEING:   # also refuses NaN
        raise XenError(errno.EINVAL, f"ageing time {seconds:g} s is outside 0..{MAX_AGEING:.0f} "
                                     f"(0 keeps no learned entry, as Linux)")
    return seconds


def check_max_learned(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise XenError(errno.EINVAL, f"the FDB limit must be a whole number of entries, at least 1, "
                                     f"not {value!r}")
    return value


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise XenError(errno.EINVAL, f"FDB policy {policy!r}: use {' or '.join(POLICIES)}")
    return policy


def check_vid(vid: int, allow_zero: bool = False) -> int:
    if isinstance(vid, bool) or not isinstance(vid, int) or not (0 if allow_zero else 1) <= vid <= VID_MAX:
        raise XenError(errno.EINVAL, f"VLAN id {vid!r} is outside 1..{VID_MAX}")
    return vid


def _vlan_text(vid: int) -> str:
    return f" vlan {vid}" if vid else ""


def _mac_text(mac: bytes) -> str:
    return format_mac(mac) if len(mac) == 6 else mac.hex() or "(empty)"
