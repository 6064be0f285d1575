"""Frame conservation along every path of a lab, hop by hop (docs/ARCHITECTURE.md,
"Frames are never lost": every frame is delivered or counted under a
named drop reason).

A pure module: it takes counters (as the guest agents and the bridge's
Stats report them, live devices and the ones that went away alike) and
returns one ``Hop`` per link of each path, each an equation

    sent = received + drops by reason (+ unaccounted, which must be 0)

A path is one vif, both ways: the guest's netfront (``ethN``), the ring to
netback's ``vifD.N`` in the driver domain, its veth end ``vethD.N``, the
bridge service's end of that veth pair and the bridge port ``vifD.N``.
Up (guest to bridge):

    ring tx       ethN tx_packets      = vif rx_packets  + vif drops (guest tx side)
                                         + ethN tx_unanswered (left on the ring)
    vif -> veth   vif rx_packets       = veth tx_packets + veth drops (tx side)
    veth -> link  veth tx_packets      = link rx_packets + link drops (rx side)
    link -> port  link rx_packets      = port rx_packets + link "detached"

and down (bridge to guest) the mirror image, ending with the rx ring:
``vif tx_packets = ethN rx_packets + ethN drops (rx side)``. The bridge
itself is three more equations: what its ports received is what it took
in, what it took in was forwarded or dropped, and what it sent is what its
ports sent. Counters of every generation of a path (a vif detached and
attached again has the same name) are summed: each equation is linear.

A root qdisc (netem, ``xenlab tc``) on a device's egress adds frames
(``duplicate``) and holds some back (a delay): each equation it is on reads
``sent + duplicated = received + drops + still queued``. Its drops
(``netem_*``) are on the transmitting side of its device: netback's vif
toward the guest, a veth end toward its peer.

A drop reason belongs to one side of a device. Netback's
``grant_copy_error`` happens both ways; when a vif has some, its two
equations are checked as one (both directions together). A guest that
crashed took its netfront's counters with it: its two ring equations cannot
be checked and are reported as such.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from xenlab.net.link import RX_DROPS as LINK_RX_DROPS, TX_DROPS as LINK_TX_DROPS
from xenlab.net.netem import NETEM_DROPS

# Which side of a device a drop reason is counted on.
NETEM = frozenset(NETEM_DROPS)                       # a root qdisc's: its device's egress
NETFRONT_RX = frozenset({"no_receiver"})             # and every "rx_*" reason (the link's too)
NETFRONT_UNANSWERED = "tx_unanswered"                # on the ring, never taken by netback
NETBACK_RX = frozenset({"disabled", "not_connected", "empty", "too_big", "rx_ring_full",
                        *LINK_TX_DROPS}) | NETEM
NETBACK_BOTH = frozenset({"grant_copy_error"})
VETH_TX = frozenset({"link_down", "tx_queue_full", "oversize", "no_link", *LINK_TX_DROPS}) | NETEM
VETH_RX = frozenset({"no_receiver", "closed_unread", "malformed", *LINK_RX_DROPS})
BRIDGE_LINK_DETACHED = "detached"

_VIF = re.compile(r"vif([0-9]+)\.([0-9]+)")   # ASCII: \d takes any Unicode digit


@dataclass
class Counts:
    """One device's counters, summed over its generations."""

    tx: int = 0
    rx: int = 0
    drops: collections.Counter = field(default_factory=collections.Counter)
    added: int = 0          # copies its root qdisc made (netem duplicate)
    queued: int = 0         # frames its root qdisc holds now

    def add(self, tx: int, rx: int, drops: Mapping[str, int],
            qdisc: Mapping[str, int] | None = None) -> "Counts":
        self.tx += tx
        self.rx += rx
        self.drops.update({k: v for k, v in drops.items() if v})
        if qdisc:
            self.added += qdisc.get("duplicated", 0)
            self.queued += qdisc.get("backlog", 0)
        return self

    def only(self, reasons: Iterable[str]) -> dict[str, int]:
        wanted = set(reasons)
        return {k: v for k, v in self.drops.items() if k in wanted and v}


@dataclass
class PathCounters:
    vif: str                      # vifD.N: the bridge port and netback's device
    domain: str = ""              # the guest's name, for the report
    eth: Counts | None = None     # netfront; None when the guest's counters are lost
    eth_lost: str = ""            # why they are (the guest crashed)
    backend: Counts = field(default_factory=Counts)
    veth: Counts = field(default_factory=Counts)
    link: Counts = field(default_factory=Counts)
    port: Counts = field(default_factory=Counts)


@dataclass
class Hop:
    path: str
    name: str
    sent: int
    received: int
    drops: dict[str, int] = field(default_factory=dict)
    checked: bool = True
    note: str = ""
    added: int = 0          # copies a root qdisc on the way made
    queued: int = 0         # frames a root qdisc on the way holds

    @property
    def unaccounted(self) -> int:
        """Frames sent that were neither received nor dropped (negative:
        more arrived than were sent)."""
        return self.sent + self.added - self.received - sum(self.drops.values()) - self.queued

    @property
    def ok(self) -> bool:
        return not self.checked or self.unaccounted == 0


def path_hops(p: PathCounters) -> list[Hop]:
    eth, vif, veth, link, port = p.eth, p.backend, p.veth, p.link, p.port
    if vif_of(p.vif) is None:
        # A port that is no vif (an uplink TAP): only its link.
        return [Hop(p.vif, "up   link -> port", link.rx, port.rx, link.only({BRIDGE_LINK_DETACHED})),
                Hop(p.vif, "down port -> link", port.tx, link.tx, link.only(VETH_TX),
                    added=link.added, queued=link.queued)]
    vif_rx_side = vif.only(NETBACK_RX)
    vif_tx_side = {k: v for k, v in vif.drops.items()
                   if v and k not in NETBACK_RX and k not in NETBACK_BOTH}
    both = vif.only(NETBACK_BOTH)
    lost = f"not checked: {p.eth_lost or 'no counters from the guest'}"
    hops: list[Hop] = []
    unanswered = eth.only({NETFRONT_UNANSWERED}) if eth else {}
    up_ring = Hop(p.vif, "up   ring: eth tx -> vif", eth.tx if eth else 0, vif.rx,
                  {**vif_tx_side, **unanswered})
    down_vif = Hop(p.vif, "down veth -> vif", veth.rx, vif.tx, vif_rx_side,
                   added=vif.added, queued=vif.queued)
    if both:
        # Both directions of the vif as one: which way each failed copy went is not counted.
        merged = Hop(p.vif, "both ring tx + veth -> vif", (eth.tx if eth else 0) + veth.rx,
                     vif.rx + vif.tx, {**vif_tx_side, **vif_rx_side, **both, **unanswered},
                     added=vif.added, queued=vif.queued)
        if eth is None:
            merged.checked, merged.note = False, lost
        hops.append(merged)
    else:
        if eth is None:
            up_ring.checked, up_ring.note = False, lost
        hops.append(up_ring)
    hops += [
        Hop(p.vif, "up   vif -> veth", vif.rx, veth.tx, veth.only(VETH_TX),
            added=veth.added, queued=veth.queued),
        Hop(p.vif, "up   veth -> bridge link", veth.tx, link.rx, link.only(VETH_RX)),
        Hop(p.vif, "up   bridge link -> port", link.rx, port.rx, link.only({BRIDGE_LINK_DETACHED})),
        Hop(p.vif, "down port -> bridge link", port.tx, link.tx, link.only(VETH_TX),
            added=link.added, queued=link.queued),
        Hop(p.vif, "down bridge link -> veth", link.tx, veth.rx, veth.only(VETH_RX)),
    ]
    if not both:
        hops.append(down_vif)
    eth_rx_side = {k: v for k, v in (eth.drops if eth else {}).items()
                   if v and (k.startswith("rx_") or k in NETFRONT_RX)}
    down_ring = Hop(p.vif, "down ring: vif -> eth rx", vif.tx, eth.rx if eth else 0, eth_rx_side)
    if eth is None:
        down_ring.checked, down_ring.note = False, lost
    hops.append(down_ring)
    return hops


@dataclass
class BridgeTotals:
    name: str
    counters: Mapping[str, int]        # rx, forwarded, flooded, unicast, tx
    drops: Mapping[str, int]
    port_rx: int                       # sum over every port, live and gone
    port_tx: int
    port_drops: Mapping[str, int]


def bridge_hops(b: BridgeTotals) -> list[Hop]:
    rx, tx = b.counters.get("rx", 0), b.counters.get("tx", 0)
    return [
        Hop(b.name, "ports rx -> bridge", b.port_rx, rx),
        Hop(b.name, "bridge: forwarded or dropped", rx, b.counters.get("forwarded", 0),
            {k: v for k, v in b.drops.items() if v}),
        Hop(b.name, "ports' drops = bridge's drops", sum(b.port_drops.values()),
            sum(b.drops.values())),
        Hop(b.name, "bridge tx -> ports tx", tx, b.port_tx),
    ]


# -- from the wire (agent InterfaceStats, bridge BridgeCounters) -----------------------
def device_counts(stats: Iterable) -> Counts:
    """Sum InterfaceStats-like records (tx_packets, rx_packets, drops)."""
    out = Counts()
    for s in stats:
        out.add(s.tx_packets, s.rx_packets, dict(s.drops), dict(getattr(s, "qdisc", {})))
    return out


def link_counts(link: Mapping[str, int]) -> Counts:
    """A bridge port's ``link`` map (the bridge's veth end: tx_packets,
    rx_packets, drop_REASON)."""
    return Counts().add(link.get("tx_packets", 0), link.get("rx_packets", 0),
                        {k[5:]: v for k, v in link.items() if k.startswith("drop_")},
                        {k[6:]: v for k, v in link.items() if k.startswith("qdisc_")})


def vif_of(name: str) -> tuple[int, int] | None:
    """(domid, devid) of a vif named as Xen names it (vifD.N)."""
    m = _VIF.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def lab_paths(dom0: Iterable, bridge, guests: Mapping[int, Iterable | None],
              names: Mapping[int, str] | None = None,
              lost: Mapping[int, str] | None = None) -> tuple[list[PathCounters], BridgeTotals]:
    """Every path of one bridge from what the lab reports.

    ``dom0``: the driver domain's InterfaceStats, gone ones included;
    ``bridge``: its BridgeCounters; ``guests``: domid -> that guest's
    InterfaceStats (gone included), or None when they cannot be had (the
    domain crashed: ``lost[domid]`` says so)."""
    names, lost = names or {}, lost or {}
    paths: dict[str, PathCounters] = {}

    def path(vif: str) -> PathCounters:
        if vif not in paths:
            where = vif_of(vif)
            domid = where[0] if where else -1
            paths[vif] = PathCounters(vif, names.get(domid, f"d{domid}"))
        return paths[vif]

    port_rx = port_tx = 0
    port_drops: collections.Counter = collections.Counter()
    for port in [*bridge.ports, *bridge.gone]:
        p = path(port.name)
        p.port.add(port.tx_packets, port.rx_packets, dict(port.drops))
        link = link_counts(dict(port.link))
        p.link.add(link.tx, link.rx, link.drops, {"duplicated": link.added, "backlog": link.queued})
        port_rx += port.rx_packets
        port_tx += port.tx_packets
        port_drops.update(dict(port.drops))
    by_name: dict[str, list] = collections.defaultdict(list)
    for s in dom0:
        by_name[s.name].append(s)
        if vif_of(s.name):
            path(s.name)        # a vif that never made it to the bridge counts too
    for vif in list(paths):
        if vif_of(vif) is None:
            continue
        p = paths[vif]
        p.backend = device_counts(by_name.get(vif, []))
        p.veth = device_counts(by_name.get("veth" + vif[3:], []))
        domid, devid = vif_of(vif)
        stats = guests.get(domid)
        if stats is None:
            p.eth, p.eth_lost = None, lost.get(domid, f"d{domid} did not report")
        else:
            p.eth = device_counts(s for s in stats if s.name == f"eth{devid}")
    totals = BridgeTotals(bridge.name, dict(bridge.counters), dict(bridge.drops),
                          port_rx, port_tx, port_drops)
    return [paths[k] for k in sorted(paths, key=_order)], totals


def _order(vif: str) -> tuple:
    where = vif_of(vif)
    return (0, *where) if where else (1, vif)


def check(paths: Iterable[PathCounters], bridges: Iterable[BridgeTotals]) -> list[Hop]:
    hops: list[Hop] = []
    for p in paths:
        hops += path_hops(p)
    for b in bridges:
        hops += bridge_hops(b)
    return hops


def format_report(hops: list[Hop], paths: Iterable[PathCounters] = ()) -> str:
    """One line per hop: sent = received + drops, and what is unaccounted."""
    domains = {p.vif: p.domain for p in paths}
    lines, last = [], None
    for hop in hops:
        if hop.path != last:
            title = f"{hop.path} ({domains[hop.path]})" if domains.get(hop.path) else hop.path
            lines.append(title)
            last = hop.path
        drops = ", ".join(f"{k} {v}" for k, v in sorted(hop.drops.items())) or "-"
        if hop.added or hop.queued:
            drops += f"; qdisc duplicated {hop.added}, queued {hop.queued}"
        if not hop.checked:
            verdict = hop.note
        elif hop.unaccounted:
            verdict = f"UNACCOUNTED {hop.unaccounted}"
        else:
            verdict = "ok"
        lines.append(f"  {hop.name:<30} sent {hop.sent:>9}  received {hop.received:>9}  "
                     f"drops {sum(hop.drops.values()):>7} [{drops}]  {verdict}")
    return "\n".join(lines)
