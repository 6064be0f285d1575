"""One bridge (xenbr0): its ports, their flags, the FDB and the forwarding decision.

A pure core: ``forward(ingress, frame)`` returns where the frame goes as a
list of ``(port name, frame)``; the service moves the bytes. Time comes from
the injectable clock of the FDB.

The decision is Linux's br_input.c / br_forward.c, in its order:

* a frame shorter than an Ethernet header, or longer than a veth can carry,
  is dropped ("runt", "oversize");
* a frame whose source is not a valid unicast address is dropped
  ("bad_src_mac"), as br_handle_frame does with !is_valid_ether_addr;
* frames to the IEEE 802.1D reserved group 01:80:c2:00:00:0X are the
  bridge's own (br_handle_frame): 01 (MAC control, pause) is dropped before
  anything is learned ("pause"); 00 (the bridge group address, STP's BPDUs)
  is forwarded as any multicast while STP is off, and taken by STP when it
  is on ("bpdu"); the others (LACP, 802.1X, LLDP...) teach the FDB their
  source and stop at the bridge ("link_local"), unless their bit is set in
  ``group_fwd_mask`` (bits 0-2 may not be: BR_GROUPFWD_RESTRICTED);
* a port that is disabled, listening or blocking drops what enters it
  ("port_disabled", "port_blocking"); a learning port learns and then drops
  ("port_learning");
* a locked port (802.1X) drops a frame whose source the FDB does not already
  hold on that port ("locked"), and learns nothing;
* the source is learned when the ingress port has learning on (BR_LEARNING);
* known unicast goes to its port only (should_deliver): back out the ingress
  port only with hairpin on ("same_port"), never to a port that is not
  forwarding ("egress_disabled"), never from an isolated port to another
  isolated port ("isolated"); a permanent entry is the bridge's own
  address, so the frame stops here ("local");
* unknown unicast floods to the ports with ``flood`` (BR_FLOOD), multicast
  to those with ``mcast_flood``, broadcast to those with ``bcast_flood``,
  each flag on its own as br_flood tests them; with nowhere to go the frame
  is dropped ("no_egress").

VLAN filtering (802.1Q, Linux's ``vlan_filtering 1``, br_vlan.c): each port
is a member of some VLANs, one of them its PVID, each untagged or tagged on
egress. A frame that enters untagged (or priority-tagged, VID 0) belongs to
the port's PVID, and is dropped without one; a tagged frame must name a VLAN
the port is a member of ("vlan_ingress", br_allowed_ingress, checked after
the port state). The FDB learns and looks up (MAC, VLAN); a frame goes only
to ports that are members of its VLAN (br_allowed_egress: "vlan_egress" for
known unicast), untagged where the port's membership says so and tagged
(keeping the frame's priority bits) elsewhere. Every port starts in VLAN 1,
PVID and untagged (default_pvid). Without filtering, tags are payload and
the FDB is keyed by MAC alone.

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
import copy
import errno
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from xenlab.bridge.fdb import (DEFAULT_AGEING, DEFAULT_MAX_LEARNED, EVENT_BACKLOG, POLICY_LINUX,
                               STATIC, Fdb)
from xenlab.bridge.stp import Stp
from xenlab.net.ethernet import ZERO
from xenlab.xen.abi import ETH_HLEN
from xenlab.xen.errors import XenError
from xenlab.xen.names import IFNAME_RULE, check_bridge_name, is_ifname

MAX_FRAME = 0xFFFF              # the largest frame a veth datagram carries
# Port states, numbered as linux/if_bridge.h BR_STATE_*.
DISABLED = "disabled"
LISTENING = "listening"
LEARNING = "learning"
FORWARDING = "forwarding"
BLOCKING = "blocking"
PORT_STATES = (DISABLED, LISTENING, LEARNING, FORWARDING, BLOCKING)
DROP_REASONS = ("runt", "oversize", "bad_src_mac", "pause", "bpdu", "link_local",
                "port_disabled", "port_blocking", "port_learning", "vlan_ingress", "locked",
                "same_port", "egress_disabled", "isolated", "vlan_egress", "local", "no_egress",
                "storm_control")
DEFAULT_PVID = 1                # br_vlan.c: default_pvid
TPID_8021Q = b"\x81\x00"
VID_MASK = 0x0FFF
BROADCAST = b"\xff" * 6
LINK_LOCAL_PREFIX = b"\x01\x80\xc2\x00\x00"
GROUPFWD_RESTRICTED = 0x0007    # br_private.h: 00, 01 and 02 can never be forwarded by mask
DEFAULT_PORT_PRIORITY = 0x20    # br_if.c new_nbp: port_id priority
DEFAULT_PORT_COST = 2           # br_if.c port_cost() of a 10 Gb/s link, what a veth reports
DEFAULT_BRIDGE_PRIORITY = 0x8000
MAX_PORT_PRIORITY = 63          # BR_MAX_PORT_PRIORITY: 6 bits above the 10-bit port number
MAX_PORT_COST = 65535           # BR_MAX_PATH_COST

# Packet kinds, for flooding (br_private.h enum br_pkt_type).
_UNICAST, _MULTICAST, _BROADCAST = 0, 1, 2

Output = tuple[str, bytes]


def check_port_name(name: str) -> str:
    if not is_ifname(name):
        raise XenError(errno.EINVAL, f"bad port name {name!r}: {IFNAME_RULE} "
                                     f"(as a Linux interface name)")
    return name


def check_group_fwd_mask(mask: int) -> int:
    if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask <= 0xFFFF:
        raise XenError(errno.EINVAL, f"group_fwd_mask {mask!r}: a 16-bit mask, one bit per "
                                     f"01:80:c2:00:00:0X")
    if mask & GROUPFWD_RESTRICTED:
        # br_set_group_fwd_mask refuses them: STP, pause and LACP frames.
        raise XenError(errno.EINVAL, f"group_fwd_mask {mask:#x}: bits 0-2 (STP, pause, LACP) "
                                     f"can never be forwarded")
    return mask


@dataclass
class BridgePort:
    name: str
    port_no: int
    mac: bytes = ZERO
    learning: bool = True
    flood: bool = True              # unknown unicast (BR_FLOOD)
    mcast_flood: bool = True        # BR_MCAST_FLOOD
    bcast_flood: bool = True        # BR_BCAST_FLOOD
    hairpin: bool = False
    isolated: bool = False
    locked: bool = False
    state: str = FORWARDING
    priority: int = DEFAULT_PORT_PRIORITY
    cost: int = DEFAULT_PORT_COST
    carrier: bool = True
    mtu: int = 1500
    vlans: dict = field(default_factory=lambda: {DEFAULT_PVID: True})  # VID -> untagged on egress
    pvid: int = DEFAULT_PVID        # 0: none, untagged frames are dropped
    counters: collections.Counter = field(default_factory=collections.Counter)
    drops: collections.Counter = field(default_factory=collections.Counter)
    flood_credit: float = -1.0      # storm control's token bucket; < 0: full, not started
    flood_stamp: float = 0.0

    @property
    def forwarding(self) -> bool:
        return self.state == FORWARDING

    def floods(self, kind: int) -> bool:
        return self.flood if kind == _UNICAST else self.mcast_flood if kind == _MULTICAST \
            else self.bcast_flood

    def stats(self) -> dict[str, int]:
        return {k: self.counters[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}

    def flood_stats(self) -> dict[str, int]:
        return {k: self.counters[k] for k in ("rx_broadcast", "rx_multicast")}


@dataclass(frozen=True)
class PortEvent:
    """A port added or changed ("new", RTM_NEWLINK) or removed ("deleted",
    RTM_DELLINK), with the port as it was then."""
    kind: str
    bridge: str
    port: BridgePort
    at: float


# The flags `bridge link set` changes, as booleans.
PORT_FLAGS = ("learning", "flood", "mcast_flood", "bcast_flood", "hairpin", "isolated", "locked")


class Bridge:
    def __init__(self, name: str = "xenbr0", ageing: float = DEFAULT_AGEING,
                 max_learned: int = DEFAULT_MAX_LEARNED, mac: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 flood_rate: float = 0.0, flood_burst: float | None = None,
                 fdb_policy: str = POLICY_LINUX, group_fwd_mask: int = 0):
        self.name = check_bridge_name(name)
        self.fdb = Fdb(name, ageing, max_learned, clock, fdb_policy)
        self.clock = clock
        self._mac = mac
        self.priority = DEFAULT_BRIDGE_PRIORITY
        self.group_fwd_mask = check_group_fwd_mask(group_fwd_mask)
        self.stp: Stp | None = None
        self.vlan_filtering = False
        self.ports: dict[str, BridgePort] = {}
        self.counters: collections.Counter = collections.Counter(
            {k: 0 for k in ("rx", "forwarded", "flooded", "unicast", "tx")})
        self.drops: collections.Counter = collections.Counter()
        self.flood_rate = 0.0
        self.flood_burst = 0.0
        self.set_flood_limit(flood_rate, flood_burst)
        self._port_events: collections.deque[PortEvent] = collections.deque(maxlen=EVENT_BACKLOG)

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
        return f"{self.priority:04x}." + self.mac.hex()

    @property
    def stp_enabled(self) -> bool:
        return self.stp is not None

    # -- spanning tree -----------------------------------------------------------
    def set_stp(self, on: bool, **timers: float) -> None:
        """`ip link set BRIDGE type bridge stp_state 0|1 [hello_time ...]`:
        kernel STP (br_stp_start / br_stp_stop). Stopping it leaves every
        port with a link forwarding, as a bridge without STP has them."""
        if on:
            if self.stp is None:
                self.stp = Stp(self, self.clock(), **timers)
                self.stp.start()
            elif timers:
                self.stp.set_timers(**timers)
        elif self.stp is not None:
            self.stp = None
            self.fdb.set_hold(None)
            for port in self.ports.values():
                if port.carrier and port.state != FORWARDING:
                    self._set_state(port, FORWARDING)

    def set_priority(self, priority: int) -> None:
        """The bridge priority (br_stp_set_bridge_priority), 0..65535."""
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 0xFFFF:
            raise XenError(errno.ERANGE, f"bridge priority {priority!r} is outside 0..65535")
        self.priority = priority
        self._bridge_id_changed()

    def _bridge_id_changed(self) -> None:
        if self.stp is not None:
            self.stp.now = self.clock()
            self.stp.change_bridge_id()

    def stp_tick(self) -> None:
        """Run STP's timers that are due (the service calls it at
        next_stp_deadline)."""
        if self.stp is not None:
            self.stp.tick(self.clock())

    @property
    def has_transmit(self) -> bool:
        return self.stp is not None and bool(self.stp.outbox)

    def next_stp_deadline(self) -> float | None:
        return self.stp.next_deadline() if self.stp is not None else None

    def pop_transmit(self) -> dict[str, list[bytes]]:
        """Frames the bridge itself sends (STP's BPDUs), by port; counted as
        sent by the port (tx_packets) and in the bridge's bpdu_tx."""
        out: dict[str, list[bytes]] = {}
        if self.stp is None or not self.stp.outbox:
            return out
        for name, frame in self.stp.pop_outbox():
            port = self.ports.get(name)
            if port is None:
                continue
            out.setdefault(name, []).append(frame)
            port.counters["tx_packets"] += 1
            port.counters["tx_bytes"] += len(frame)
            port.counters["tx_bpdu"] += 1
            self.counters["bpdu_tx"] += 1
        return out

    # -- ports -----------------------------------------------------------------
    def add_port(self, name: str, mac: bytes = ZERO, mtu: int = 1500) -> BridgePort:
        check_port_name(name)
        if name in self.ports:
            raise XenError(errno.EEXIST, f"{self.name} already has a port named {name}")
        if len(mac) != 6:
            raise XenError(errno.EINVAL, f"a port address is 6 bytes, got {len(mac)}")
        port = BridgePort(name, self._allocate_port_no(), mac, mtu=mtu)
        self.ports[name] = port
        if self.stp is not None:
            self.stp.now = self.clock()
            self._bridge_id_changed()
            self.stp.add_port(port)
        self._port_changed(port)
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
        if self.stp is not None:
            self.stp.now = self.clock()
            self.stp.remove_port(port)
        del self.ports[name]
        self._bridge_id_changed()
        self._port_event("deleted", port)
        return port

    def set_port_flags(self, name: str, state: str | None = None, priority: int | None = None,
                       cost: int | None = None, **flags: bool) -> BridgePort:
        """`bridge link set dev PORT [learning|flood|mcast_flood|bcast_flood|
        hairpin|isolated|locked on|off] [state S] [priority P] [cost C]`."""
        port = self.port(name)
        unknown = set(flags) - set(PORT_FLAGS)
        if unknown:
            raise XenError(errno.EINVAL, f"unknown port flag(s): {', '.join(sorted(unknown))}")
        if state is not None and state not in PORT_STATES:
            raise XenError(errno.EINVAL, f"port state {state!r}: use one of {', '.join(PORT_STATES)}")
        if priority is not None and not 0 <= priority <= MAX_PORT_PRIORITY:
            raise XenError(errno.ERANGE, f"port priority {priority} is outside 0..{MAX_PORT_PRIORITY}")
        if cost is not None and not 1 <= cost <= MAX_PORT_COST:
            raise XenError(errno.ERANGE, f"port cost {cost} is outside 1..{MAX_PORT_COST}")
        if state is not None:
            self._check_state_change(port, state)
        for flag, value in flags.items():
            if value is not None:
                setattr(port, flag, bool(value))
        if self.stp is not None:
            self.stp.now = self.clock()
        if priority is not None:
            port.priority = priority
            if self.stp is not None:
                self.stp.set_port_priority(port)
        if cost is not None:
            port.cost = cost
            if self.stp is not None:
                self.stp.set_path_cost(port)
        if state is not None:
            self._set_state(port, self._selected_state(state), notify=False)
        self._port_changed(port)
        return port

    def _check_state_change(self, port: BridgePort, state: str) -> None:
        # br_set_port_state: the kernel's STP owns the states while it runs,
        # and a port without carrier may only be disabled.
        if self.stp_enabled:
            raise XenError(errno.EBUSY, f"{self.name} runs STP, which sets the port states")
        if not port.carrier and state != DISABLED:
            raise XenError(errno.ENETDOWN, f"{port.name} has no link: it can only be disabled")

    @staticmethod
    def _selected_state(state: str) -> str:
        # br_port_state_selection without STP: every port is designated, and
        # br_make_forwarding takes a blocking port straight to forwarding.
        return FORWARDING if state == BLOCKING else state

    def _set_state(self, port: BridgePort, state: str, notify: bool = True) -> None:
        """A port state change, as br_set_state: the FDB keeps what the
        port learned (only losing the link flushes it). STP's changes are
        announced here (br_ifinfo_notify); the administrator's by the caller,
        once for all it changed."""
        if state != port.state:
            port.state = state
            port.counters[f"state_{state}"] += 1
            if notify:
                self._port_changed(port)

    def set_carrier(self, name: str, up: bool) -> BridgePort:
        """The port's link went down or came back: br_port_carrier_check ->
        br_stp_disable_port (disabled, learned entries flushed) or
        br_stp_enable_port (forwarding without STP)."""
        port = self.port(name)
        if up == port.carrier:
            return port
        port.carrier = up
        if self.stp is not None:
            self.stp.now = self.clock()
        if up:
            if self.stp is not None:
                self.stp.enable_port(port)
            else:
                self._set_state(port, FORWARDING, notify=False)
        else:
            if self.stp is not None:
                self.stp.disable_port(port)
            self._set_state(port, DISABLED, notify=False)
            self.fdb.flush(name)
        self._port_changed(port)
        return port

    def _port_changed(self, port: BridgePort) -> None:
        self._port_event("new", port)

    def _port_event(self, kind: str, port: BridgePort) -> None:
        snapshot = copy.copy(port)
        snapshot.counters = snapshot.drops = None
        self._port_events.append(PortEvent(kind, self.name, snapshot, self.clock()))

    def pop_port_events(self) -> list[PortEvent]:
        """Port changes since the last call, for `bridge monitor link` (the
        last EVENT_BACKLOG when nobody pops)."""
        events = list(self._port_events)
        self._port_events.clear()
        return events

    @property
    def has_events(self) -> bool:
        return self.fdb.has_events or bool(self._port_events)

    # -- VLANs -------------------------------------------------------------------
    def set_vlan_filtering(self, on: bool) -> None:
        """`ip link set BRIDGE type bridge vlan_filtering 0|1`. The FDB keys
        change meaning, so the learned entries go (as br_vlan_filter_toggle
        leaves them to age; flushing is what a user sees at once)."""
        on = bool(on)
        if on != self.vlan_filtering:
            self.vlan_filtering = on
            self.fdb.flush()

    def vlan_add(self, name: str, vid: int, vid_end: int | None = None, pvid: bool = False,
                 untagged: bool = False) -> BridgePort:
        """`bridge vlan add vid VID[-END] dev PORT [pvid] [untagged]`: adding a
        VLAN again sets its flags anew (__vlan_add_flags), so a VLAN added
        without pvid stops being the PVID."""
        port = self.port(name)
        vids = _vid_range(vid, vid_end)
        if pvid and len(vids) != 1:
            raise XenError(errno.EINVAL, "only one VLAN can be the PVID")
        for v in vids:
            port.vlans[v] = bool(untagged)
            if pvid:
                port.pvid = v
            elif port.pvid == v:
                port.pvid = 0
        self._port_changed(port)
        return port

    def vlan_delete(self, name: str, vid: int, vid_end: int | None = None) -> BridgePort:
        """`bridge vlan del vid VID[-END] dev PORT`; the entries learned in
        those VLANs on the port go with them (nbp_vlan_delete ->
        br_fdb_find_delete_local / fdb flush by vid)."""
        port = self.port(name)
        vids = _vid_range(vid, vid_end)
        missing = [v for v in vids if v not in port.vlans]
        if missing:
            raise XenError(errno.ENOENT, f"{name} is not a member of VLAN {missing[0]}")
        for v in vids:
            del port.vlans[v]
            if port.pvid == v:
                port.pvid = 0
            self.fdb.flush(name, vid=v)
        self._port_changed(port)
        return port

    def set_port_vlans(self, name: str, members) -> BridgePort:
        """A vif's VLANs from xl's vlan= (xlcfg.parse_vlan): exactly those,
        replacing the default VLAN 1."""
        port = self.port(name)
        vlans = {m.vid: bool(m.untagged) for m in members}
        for vid in vlans:
            _vid_range(vid, None)
        port.vlans = vlans
        port.pvid = next((m.vid for m in members if m.pvid), 0)
        self._port_changed(port)
        return port

    # -- FDB management ----------------------------------------------------------
    def fdb_add(self, mac: bytes, port: str, state: str = STATIC, sticky: bool = False,
                vid: int = 0, replace: bool = False):
        self.port(port)
        return self.fdb.add(mac, port, state, sticky, vid, replace)

    def fdb_delete(self, mac: bytes, port: str | None = None, vid: int = 0):
        if port is not None:
            self.port(port)
        return self.fdb.delete(mac, port, vid)

    def add_static(self, mac: bytes, port: str) -> None:
        self.fdb_add(mac, port, STATIC, replace=True)

    def delete_static(self, mac: bytes) -> None:
        self.fdb.delete_static(mac)

    def flush(self, port: str | None = None, include_static: bool = False) -> int:
        if port is not None:
            self.port(port)
        return self.fdb.flush(port, include_static)

    def set_ageing(self, seconds: float) -> None:
        self.fdb.set_ageing(seconds)

    def set_group_fwd_mask(self, mask: int) -> None:
        self.group_fwd_mask = check_group_fwd_mask(mask)

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
        return [(name, batch[0]) for name, batch in out.items()]

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
        if self.vlan_filtering:
            for frame in frames:
                vid, tci, inner = classify(port, frame)
                for target in route(port, frame, now, vid):
                    data = inner if target.vlans[vid] else inner[:12] + TPID_8021Q + tci + inner[12:]
                    out.setdefault(target.name, []).append(data)
        else:
            # A run of frames with the same addresses (a stream) takes the
            # first one's known-unicast decision, when deciding again could
            # change nothing (_repeatable); each still counts as forwarded.
            head = same = None
            repeats = 0
            for frame in frames:
                if head is not None and frame[:12] == head and ETH_HLEN <= len(frame) <= MAX_FRAME:
                    same.append(frame)
                    repeats += 1
                    continue
                targets = route(port, frame, now)
                for target in targets:
                    batch = out.get(target.name)
                    if batch is None:
                        out[target.name] = batch = [frame]
                    else:
                        batch.append(frame)
                head = self._repeatable(port, frame, targets, now)
                same = batch if head is not None else None
            if repeats:
                counters = self.counters
                counters["unicast"] += repeats
                counters["forwarded"] += repeats
                counters["tx"] += repeats
        ports = self.ports
        for name, batch in out.items():
            tc = ports[name].counters
            tc["tx_packets"] += len(batch)
            tc["tx_bytes"] += sum(map(len, batch))
        return out

    def _repeatable(self, port: BridgePort, frame: bytes, targets: list[BridgePort],
                    now: float) -> bytes | None:
        """The frame's addresses when _route just forwarded it as known
        unicast, and a frame with the same addresses from the same port at
        the same instant would be decided the same, with no other effect
        than the counts. Known unicast: forwarded to one port with its
        unicast destination in the FDB (_route looks the destination up
        after learning the source; an entry found live is forwarded to or
        dropped, an expired one is removed, so one still there was found).
        The same again: its source already learned on this port at ``now``,
        where learning it again changes nothing. None otherwise (flooded,
        dropped, a source that moved, a sticky or local conflict)."""
        if len(targets) != 1 or frame[0] & 1:
            return None
        fdb = self.fdb
        if fdb.get(frame[0:6]) is None:
            return None
        src = fdb.get(frame[6:12])
        if port.learning and (src is None or src.updated != now or src.port != port.name):
            return None
        return frame[:12]

    def _route(self, port: BridgePort, frame: bytes, now: float,
               vid: int | None = None) -> list[BridgePort]:
        """The ports one frame leaves by ([]: dropped, counted); the caller
        counts rx at the ingress and tx at the egress ports. `vid`: None
        without VLAN filtering, else the frame's VLAN (0: not admitted)."""
        size = len(frame)
        if size < ETH_HLEN:
            return self._drop(port, "runt")
        if size > MAX_FRAME:
            return self._drop(port, "oversize")
        dst = frame[0:6]
        src = frame[6:12]
        if src[0] & 1 or src == ZERO:       # !is_valid_ether_addr, inlined: it runs per frame
            return self._drop(port, "bad_src_mac")
        key_vid = vid or 0
        if dst[0] & 1 and dst[:5] == LINK_LOCAL_PREFIX and dst[5] < 0x10:
            reason = self._link_local(port, dst[5], src, now, vid, frame)
            if reason:
                return self._drop(port, reason)
        state = port.state
        if state != FORWARDING:
            if state != LEARNING:
                return self._drop(port, "port_disabled" if state == DISABLED else "port_blocking")
        if vid == 0:
            return self._drop(port, "vlan_ingress")
        if port.locked:
            known = self.fdb.lookup(src, now, key_vid)
            if known is None or known.port != port.name or known.local:
                return self._drop(port, "locked")
        if port.learning:
            self.fdb.learn_source(src, port.name, now, key_vid)
        if state == LEARNING:
            return self._drop(port, "port_learning")
        if dst[0] & 1:
            if dst == BROADCAST:
                port.counters["rx_broadcast"] += 1
                return self._flood(port, _BROADCAST, now, vid)
            port.counters["rx_multicast"] += 1
            return self._flood(port, _MULTICAST, now, vid)
        entry = self.fdb.lookup(dst, now, key_vid)
        if entry is None:
            return self._flood(port, _UNICAST, now, vid)
        if entry.local:
            return self._drop(port, "local")
        egress = self.ports[entry.port]
        if egress is port and not port.hairpin:
            return self._drop(port, "same_port")
        if egress.state != FORWARDING:
            return self._drop(port, "egress_disabled")
        if port.isolated and egress.isolated:
            return self._drop(port, "isolated")
        if vid and vid not in egress.vlans:
            return self._drop(port, "vlan_egress")
        entry.used = now
        counters = self.counters
        counters["unicast"] += 1
        counters["forwarded"] += 1
        counters["tx"] += 1
        return [egress]

    def _link_local(self, port: BridgePort, last: int, src: bytes, now: float,
                    vid: int | None, frame: bytes) -> str:
        """br_handle_frame for 01:80:c2:00:00:0X: the drop reason, or "" when
        the frame goes on to be forwarded as any multicast."""
        if last == 0x01:
            return "pause"
        if last == 0x00:
            if self.stp is None:
                return ""       # "If STP is turned off, then must forward to keep loop detection"
        elif self.group_fwd_mask & (1 << last):
            return ""
        # __br_handle_local_finish: learned (in an admitted VLAN,
        # br_should_learn), then passed up to the bridge itself.
        if port.learning and port.state in (LEARNING, FORWARDING) and vid != 0:
            self.fdb.learn(src, port.name, now, vid or 0)
        if last == 0x00:
            self.stp.now = now
            self.stp.receive(port, frame)
            return "bpdu"
        return "link_local"

    def _flood(self, ingress: BridgePort, kind: int, now: float,
               vid: int | None = None) -> list[BridgePort]:
        if self.flood_rate and not self._flood_credit(ingress, now):
            return self._drop(ingress, "storm_control")
        isolated = ingress.isolated
        targets = [p for p in self.ports.values()
                   if p.floods(kind) and p.state == FORWARDING and (p is not ingress or p.hairpin)
                   and not (isolated and p.isolated) and (vid is None or vid in p.vlans)]
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



def classify(port: BridgePort, frame: bytes) -> tuple[int, bytes, bytes]:
    """A frame's VLAN on entering `port` (br_allowed_ingress): (VID or 0 if
    the port does not admit it, the TCI to tag it with, the frame untagged).
    Untagged and priority-tagged frames take the port's PVID, keeping a
    priority tag's PCP."""
    if len(frame) >= ETH_HLEN + 4 and frame[12:14] == TPID_8021Q:
        tci = frame[14:16]
        inner = frame[:12] + frame[16:]
        vid = ((tci[0] << 8) | tci[1]) & VID_MASK
        if vid:
            return (vid if vid in port.vlans else 0), tci, inner
        pcp = tci[0] & 0xF0
    else:
        inner, pcp = frame, 0
    pvid = port.pvid
    return pvid, bytes(((pcp | (pvid >> 8)) & 0xFF, pvid & 0xFF)), inner


def _vid_range(vid: int, vid_end: int | None) -> range:
    end = vid if vid_end is None or vid_end == 0 else vid_end
    for v in (vid, end):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4094:
            raise XenError(errno.EINVAL, f"VLAN id {v!r} is outside 1..4094")
    if end < vid:
        raise XenError(errno.EINVAL, f"VLAN range {vid}-{end} goes down")
    return range(vid, end + 1)
