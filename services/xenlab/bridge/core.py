"""One bridge (xenbr0): its ports, their flags, the FDB and the forwarding decision.

A pure core: ``forward(ingress, frame)`` returns where the frame goes as a
list of ``(port name, frame)``; the service moves the bytes. Time comes from
the injectable clock of the FDB.

The decision follows Linux's br_input.c / br_forward.c for a bridge without
STP or VLAN filtering:

* a frame shorter than an Ethernet header, or longer than a veth can carry,
  is dropped ("runt", "oversize");
* a frame on a disabled port is dropped ("port_disabled"), as a port in
  BR_STATE_DISABLED drops everything;
* a frame whose source is not a valid unicast address is dropped
  ("bad_src_mac"), as br_handle_frame does with !is_valid_ether_addr;
* the source is learned when the ingress port has learning on (BR_LEARNING);
* frames to the IEEE 802.1D reserved group 01:80:c2:00:00:0X are never
  forwarded ("link_local"): they are for the bridge itself;
* known unicast goes to its port only; if that port is the ingress port the
  frame is dropped ("same_port") unless the port has hairpin on, as
  should_deliver(); a destination behind a disabled port is dropped
  ("egress_disabled");
* broadcast, multicast and unknown unicast are flooded to every other
  forwarding port with the flood flag (BR_FLOOD, BR_MCAST_FLOOD and
  BR_BCAST_FLOOD folded into one), and back to the ingress port only when
  it has hairpin on; with nowhere to go the frame is dropped ("no_egress").

Storm control, which Linux's bridge does not have but switches do (Cisco's
storm-control, Open vSwitch meters): with a flood limit set, each ingress
port may flood at most ``flood_rate`` frames per second (a token bucket of
``flood_burst`` frames); the frames past it are dropped ("storm_control"),
so that one domain's broadcast storm or MAC flood cannot fill every other
port's queues. Learning happens first: a MAC flood still churns the FDB,
which its size limit bounds. Each port counts the broadcast and multicast
frames that entered it (``rx_broadcast``, ``rx_multicast``).

Conservation: every frame given to ``forward`` is counted in ``rx`` and then
in exactly one of ``forwarded`` or a ``drops`` reason, on the bridge and on
the ingress port.
"""
from __future__ import annotations

import collections
import errno
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from xenlab.bridge.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, Fdb
from xenlab.net.ethernet import ZERO, is_link_local
from xenlab.xen.abi import ETH_HLEN
from xenlab.xen.errors import XenError

MAX_FRAME = 0xFFFF              # the largest frame a veth datagram carries
FORWARDING = "forwarding"
DISABLED = "disabled"
PORT_STATES = (FORWARDING, DISABLED)
DROP_REASONS = ("runt", "oversize", "port_disabled", "bad_src_mac", "link_local",
                "same_port", "egress_disabled", "no_egress", "storm_control")
BROADCAST = b"\xff" * 6
IFNAMSIZ = 16                   # linux/if.h: names are at most 15 characters

# Bridge names become xenstore path components (/tool/xenlab/bridges/NAME).
_BRIDGE_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
# Port names follow Linux's dev_valid_name: no '/', ':' or whitespace.
_PORT_NAME = re.compile(r"[^/:\s]{1,15}")

Output = tuple[str, bytes]


def check_bridge_name(name: str) -> str:
    if not _BRIDGE_NAME.fullmatch(name or ""):
        raise XenError(errno.EINVAL, f"bad bridge name {name!r}: 1-15 of A-Z a-z 0-9 _ -")
    return name


def check_port_name(name: str) -> str:
    if not _PORT_NAME.fullmatch(name or "") or name in (".", ".."):
        raise XenError(errno.EINVAL, f"bad port name {name!r}: 1-{IFNAMSIZ - 1} characters, "
                                     f"no '/', ':' or spaces (as a Linux interface name)")
    return name


@dataclass
class BridgePort:
    name: str
    port_no: int
    mac: bytes = ZERO
    learning: bool = True
    flood: bool = True
    hairpin: bool = False
    state: str = FORWARDING
    counters: collections.Counter = field(default_factory=collections.Counter)
    drops: collections.Counter = field(default_factory=collections.Counter)
    flood_credit: float = -1.0      # storm control's token bucket; < 0: full, not started
    flood_stamp: float = 0.0

    @property
    def forwarding(self) -> bool:
        return self.state == FORWARDING

    def stats(self) -> dict[str, int]:
        return {k: self.counters[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}

    def flood_stats(self) -> dict[str, int]:
        return {k: self.counters[k] for k in ("rx_broadcast", "rx_multicast")}


class Bridge:
    def __init__(self, name: str = "xenbr0", ageing: float = DEFAULT_AGEING,
                 max_entries: int = DEFAULT_MAX_ENTRIES, mac: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 flood_rate: float = 0.0, flood_burst: float | None = None):
        self.name = check_bridge_name(name)
        self.fdb = Fdb(name, ageing, max_entries, clock)
        self.clock = clock
        self._mac = mac
        self.ports: dict[str, BridgePort] = {}
        self.counters: collections.Counter = collections.Counter(
            {k: 0 for k in ("rx", "forwarded", "flooded", "unicast", "tx")})
        self.drops: collections.Counter = collections.Counter()
        self._next_port_no = 1
        self.flood_rate = 0.0
        self.flood_burst = 0.0
        self.set_flood_limit(flood_rate, flood_burst)

    # -- identity, as brctl shows it ---------------------------------------------
    @property
    def mac(self) -> bytes:
        """The bridge address: fixed if given, else the lowest port address, as
        br_stp_recalculate_bridge_id picks it."""
        if self._mac is not None:
            return self._mac
        macs = [p.mac for p in self.ports.values() if p.mac != ZERO]
        return min(macs) if macs else ZERO

    @property
    def bridge_id(self) -> str:
        # Priority 0x8000, Linux's default, then the address.
        return "8000." + self.mac.hex()

    # -- ports -----------------------------------------------------------------
    def add_port(self, name: str, mac: bytes = ZERO) -> BridgePort:
        check_port_name(name)
        if name in self.ports:
            raise XenError(errno.EEXIST, f"{self.name} already has a port named {name}")
        if len(mac) != 6:
            raise XenError(errno.EINVAL, f"a port address is 6 bytes, got {len(mac)}")
        port = BridgePort(name, self._allocate_port_no(), mac)
        self.ports[name] = port
        return port

    def _allocate_port_no(self) -> int:
        # Lowest free number, as br_make_port's find_portno.
        used = {p.port_no for p in self.ports.values()}
        n = 1
        while n in used:
            n += 1
        return n

    def port(self, name: str) -> BridgePort:
        port = self.ports.get(name)
        if port is None:
            raise XenError(errno.ENOENT, f"{self.name} has no port named {name!r}")
        return port

    def delete_port(self, name: str) -> BridgePort:
        """Detach a port; every FDB entry on it goes, static ones too, as
        br_del_if -> br_fdb_delete_by_port(do_all)."""
        port = self.port(name)
        self.fdb.flush(name, include_static=True)
        del self.ports[name]
        return port

    def set_port_flags(self, name: str, learning: bool | None = None, flood: bool | None = None,
                       hairpin: bool | None = None, state: str | None = None) -> BridgePort:
        port = self.port(name)
        if state is not None and state not in PORT_STATES:
            raise XenError(errno.EINVAL, f"port state {state!r}: use one of {', '.join(PORT_STATES)}")
        if learning is not None:
            port.learning = learning
        if flood is not None:
            port.flood = flood
        if hairpin is not None:
            port.hairpin = hairpin
        if state is not None and state != port.state:
            port.state = state
            if state == DISABLED:
                # br_stp_disable_port flushes what was learned behind the port.
                self.fdb.flush(name)
        return port

    # -- FDB management ----------------------------------------------------------
    def add_static(self, mac: bytes, port: str) -> None:
        self.port(port)
        self.fdb.add_static(mac, port)

    def delete_static(self, mac: bytes) -> None:
        self.fdb.delete_static(mac)

    def flush(self, port: str | None = None, include_static: bool = False) -> int:
        if port is not None:
            self.port(port)
        return self.fdb.flush(port, include_static)

    def set_ageing(self, seconds: float) -> None:
        self.fdb.set_ageing(seconds)

    def set_flood_limit(self, rate: float, burst: float | None = None) -> None:
        """Storm control: at most `rate` flooded frames per second from each
        port, `burst` (default: one second's worth) at once; 0 turns it off."""
        rate = float(rate)
        burst = rate if burst is None else float(burst)
        if not (0 <= rate < float("inf")) or not (0 <= burst < float("inf")) or (rate and burst < 1):
            raise XenError(errno.EINVAL, f"flood limit {rate:g}/s, burst {burst:g}: the rate must be "
                                         f"0 (off) or positive, with a burst of at least 1 frame")
        self.flood_rate, self.flood_burst = rate, burst
        for port in self.ports.values():
            port.flood_credit = -1.0

    def expire(self) -> int:
        return self.fdb.expire()

    # -- forwarding --------------------------------------------------------------
    def forward(self, ingress: str, frame: bytes) -> list[Output]:
        """Where a frame that entered port `ingress` goes: (port, frame) pairs,
        or [] when it is dropped (and counted)."""
        out = self.forward_batch(ingress, [frame])
        return [(name, frame) for name in out]

    def forward_batch(self, ingress: str, frames: Iterable[bytes]) -> dict[str, list[bytes]]:
        """`forward` for a batch from one port, grouped by egress port, so
        the caller makes one transmit per port per batch. The counters are
        the same as frame by frame; they are added up once per batch."""
        port = self.port(ingress)
        frames = frames if isinstance(frames, list) else list(frames)
        if not frames:
            return {}
        now = self.clock()
        counters = port.counters
        self.counters["rx"] += len(frames)
        counters["rx_packets"] += len(frames)
        counters["rx_bytes"] += sum(map(len, frames))
        out: dict[str, list[bytes]] = {}
        route = self._route
        for frame in frames:
            for target in route(port, frame, now):
                batch = out.get(target.name)
                if batch is None:
                    out[target.name] = [frame]
                else:
                    batch.append(frame)
        ports = self.ports
        for name, batch in out.items():
            tc = ports[name].counters
            tc["tx_packets"] += len(batch)
            tc["tx_bytes"] += sum(map(len, batch))
        return out

    def _route(self, port: BridgePort, frame: bytes, now: float) -> list[BridgePort]:
        """The ports one frame leaves by ([]: dropped, counted); the caller
        counts rx at the ingress and tx at the egress ports."""
        size = len(frame)
        if size < ETH_HLEN:
            return self._drop(port, "runt")
        if size > MAX_FRAME:
            return self._drop(port, "oversize")
        if port.state != FORWARDING:
            return self._drop(port, "port_disabled")
        dst = frame[0:6]
        src = frame[6:12]
        if src[0] & 1 or src == ZERO:       # !is_valid_ether_addr, inlined: it runs per frame
            return self._drop(port, "bad_src_mac")
        if port.learning:
            self.fdb.learn(src, port.name, now)
        if dst[0] & 1:
            if is_link_local(dst):
                return self._drop(port, "link_local")
            port.counters["rx_broadcast" if dst == BROADCAST else "rx_multicast"] += 1
            return self._flood(port, frame, now)
        entry = self.fdb.lookup(dst, now)
        if entry is None:
            return self._flood(port, frame, now)
        egress = self.ports[entry.port]
        if egress is port and not port.hairpin:
            return self._drop(port, "same_port")
        if egress.state != FORWARDING:
            return self._drop(port, "egress_disabled")
        entry.used = now
        counters = self.counters
        counters["unicast"] += 1
        counters["forwarded"] += 1
        counters["tx"] += 1
        return [egress]

    def _flood(self, ingress: BridgePort, frame: bytes, now: float) -> list[BridgePort]:
        if self.flood_rate and not self._flood_credit(ingress, now):
            return self._drop(ingress, "storm_control")
        targets = [p for p in self.ports.values()
                   if p.flood and p.state == FORWARDING and (p is not ingress or p.hairpin)]
        if not targets:
            return self._drop(ingress, "no_egress")
        self.counters["flooded"] += 1
        self.counters["forwarded"] += 1
        self.counters["tx"] += len(targets)
        return targets

    def _flood_credit(self, port: BridgePort, now: float) -> bool:
        """Take one frame from the port's token bucket, if there is one."""
        if port.flood_credit < 0:
            credit = self.flood_burst
        else:
            credit = min(self.flood_burst, port.flood_credit + (now - port.flood_stamp) * self.flood_rate)
        port.flood_stamp = now
        if credit < 1:
            port.flood_credit = credit
            return False
        port.flood_credit = credit - 1
        return True

    def _drop(self, port: BridgePort, reason: str) -> list:
        self.drops[reason] += 1
        port.drops[reason] += 1
        return []

    # -- reporting -----------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update({f"drop_{r}": n for r, n in sorted(self.drops.items())})
        out.update({f"fdb_{k}": v for k, v in self.fdb.counters.items()})
        out["fdb_entries"] = len(self.fdb)
        return out
