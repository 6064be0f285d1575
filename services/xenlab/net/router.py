"""A host's IP stacks joined, and IPv4 forwarding between them, sans-I/O.

One ``IpStack`` is one interface's IP layer; a ``Router`` is the host
around them, as Linux's one FIB and ip_forward are around its devices:

* every stack learns the host's other addresses (``local_addresses``): a
  packet to any of them is delivered locally on whichever interface it came
  in by (Linux's weak host model);
* ``lookup`` picks the interface and route a packet leaves by, over every
  stack's table (longest prefix, then lowest metric, then the interface
  added first);
* with ``forwarding`` (net.ipv4.ip_forward=1), ``forward`` takes what a
  stack set aside for other hosts and runs it through ip_forward's steps,
  in Linux's order: the route (ip_route_input: none is ICMP net
  unreachable), the TTL (ip_forward: at most 1 is ICMP time exceeded), the
  next hop's MTU (ip_exceeds_mtu: with DF, ICMP fragmentation needed, with
  the MTU), then the TTL lowered (ip_decrease_ttl) and the packet handed to
  the outgoing stack, which resolves the next hop as for its own packets.

``decide`` is the forwarding decision alone, a pure function; every packet
``forward`` takes ends in exactly one of ``FORWARD_OUTCOMES``.
"""
from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable

from xenlab.net.errors import PacketError
from xenlab.net.icmp import (ICMP_DEST_UNREACH, ICMP_EXC_TTL, ICMP_FRAG_NEEDED, ICMP_HOST_UNREACH,
                             ICMP_NET_UNREACH, ICMP_TIME_EXCEEDED)
from xenlab.net.ipv4 import IP_DF, Ipv4Header, internet_checksum
from xenlab.net.route import Route
from xenlab.net.stack import IpStack

# What became of each packet handed to ``forward``.
FORWARD_OUTCOMES = (
    "forwarded",            # handed to the outgoing interface
    "net_unreachable",      # no route: ICMP destination (net) unreachable to the source
    "ttl_exceeded",         # TTL 1 or 0 on arrival: ICMP time exceeded to the source
    "frag_needed",          # over the next hop's MTU with DF set: ICMP fragmentation needed
    "too_big",              # over the next hop's MTU without DF: this router does not fragment
    "malformed",            # not an IPv4 packet any more (cannot happen from a stack)
)
# Counted besides: packets forwarded whose next hop never answered ARP
# (host_unreachable; the outgoing stack counts them as arp_unresolved too),
# and ICMP errors with no route back to the source (icmp_no_route).
OTHER_COUNTERS = ("host_unreachable", "icmp_no_route")


@dataclass(frozen=True)
class Forward:
    """Send ``packet`` (TTL already lowered) out of ``interface`` toward ``hop``."""
    interface: str
    hop: IPv4Address
    packet: bytes


@dataclass(frozen=True)
class Reject:
    """Drop the packet and tell its source: an ICMP error of ``type``/``code``
    (``rest``: the word after the checksum), from the interface it came in by."""
    outcome: str
    type: int
    code: int
    rest: int = 0


@dataclass(frozen=True)
class Drop:
    """Drop the packet, silently."""
    outcome: str


Lookup = Callable[[IPv4Address], "tuple[str, Route] | None"]


def decide(packet: bytes, lookup: Lookup, mtu: Callable[[str], int]) -> Forward | Reject | Drop:
    """What ip_forward does with ``packet``, an IPv4 packet for another host:
    ``lookup`` gives the outgoing interface and route for a destination,
    ``mtu`` an interface's MTU."""
    try:
        header, _ = Ipv4Header.parse(packet)
    except PacketError:
        return Drop("malformed")
    found = lookup(header.dst)
    if found is None:
        return Reject("net_unreachable", ICMP_DEST_UNREACH, ICMP_NET_UNREACH)
    if header.ttl <= 1:
        return Reject("ttl_exceeded", ICMP_TIME_EXCEEDED, ICMP_EXC_TTL)
    interface, route = found
    limit = mtu(interface)
    if header.total_length > limit:
        if header.flags_frag & IP_DF:
            return Reject("frag_needed", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, limit & 0xFFFF)
        return Drop("too_big")
    return Forward(interface, route.next_hop(header.dst), decrement_ttl(packet))


def decrement_ttl(packet: bytes) -> bytes:
    """The packet with its TTL one lower and its header checksum made again
    (the packet has a valid header with a TTL of at least 1)."""
    hlen = (packet[0] & 0x0F) * 4
    head = bytearray(packet[:hlen])
    head[8] -= 1
    head[10:12] = b"\0\0"
    head[10:12] = struct.pack("!H", internet_checksum(bytes(head)))
    return bytes(head) + bytes(packet[hlen:])


class Router:
    """The host's interfaces, by name, each with its IpStack."""

    def __init__(self, forwarding: bool = False):
        self.forwarding = forwarding
        self._stacks: dict[str, IpStack] = {}
        self.counters: collections.Counter[str] = collections.Counter(
            {name: 0 for name in FORWARD_OUTCOMES + OTHER_COUNTERS})
        # The same, by the interface the packets came in by (host_unreachable:
        # the interface whose next hop failed).
        self.by_interface: dict[str, collections.Counter[str]] = {}

    # -- interfaces -------------------------------------------------------------------
    def add(self, name: str, stack: IpStack) -> None:
        self._stacks[name] = stack
        self._share_addresses()

    def remove(self, name: str) -> None:
        if self._stacks.pop(name, None) is not None:
            self._share_addresses()

    def stacks(self) -> dict[str, IpStack]:
        return dict(self._stacks)

    def _share_addresses(self) -> None:
        for name, stack in self._stacks.items():
            others = [other for other_name, other in self._stacks.items() if other_name != name]
            stack.local_addresses = frozenset(other.ip for other in others)
            stack.local_broadcasts = frozenset(
                other.network.broadcast_address for other in others
                if other.network.prefixlen < 31)

    # -- routes -----------------------------------------------------------------------
    def lookup(self, dst: IPv4Address) -> tuple[str, Route] | None:
        """The interface and route for ``dst``: the longest prefix over every
        interface's routes, then the lowest metric, then the first interface."""
        best: tuple[str, Route] | None = None
        for name, stack in self._stacks.items():
            route = stack.lookup(dst)
            if route is None:
                continue
            if best is None or (route.dst.prefixlen, -route.metric) > (best[1].dst.prefixlen,
                                                                       -best[1].metric):
                best = (name, route)
        return best

    def routes(self) -> list[tuple[str, Route]]:
        """Every route, as ``ip route`` lists them (longest prefix first)."""
        rows = [(name, route) for name, stack in self._stacks.items() for route in stack.routes]
        return sorted(rows, key=lambda row: (-row[1].dst.prefixlen, row[1].metric))

    # -- forwarding -------------------------------------------------------------------
    def forward(self, interface: str) -> dict[str, list[bytes]]:
        """Forward what ``interface``'s stack set aside for other hosts, and
        answer the packets its next hops never took (ICMP host unreachable);
        the frames each interface has to send. Call it after every call into
        that stack."""
        stack = self._stacks.get(interface)
        if stack is None:
            return {}
        out: dict[str, list[bytes]] = collections.defaultdict(list)
        counters = self.by_interface.setdefault(interface, collections.Counter())
        for packet in stack.take_transit():
            action = decide(packet, self.lookup, lambda name: self._stacks[name].config.mtu)
            outcome = "forwarded" if isinstance(action, Forward) else action.outcome
            self.counters[outcome] += 1
            counters[outcome] += 1
            if isinstance(action, Forward):
                out[action.interface] += self._stacks[action.interface].forward(action.packet,
                                                                                 action.hop)
            elif isinstance(action, Reject):
                self._reject(packet, action, out)
        for packet in stack.take_unreachable():
            self.counters["host_unreachable"] += 1
            counters["host_unreachable"] += 1
            self._reject(packet, Reject("host_unreachable", ICMP_DEST_UNREACH, ICMP_HOST_UNREACH), out)
        return {name: frames for name, frames in out.items() if frames}

    def _reject(self, packet: bytes, action: Reject, out: dict[str, list[bytes]]) -> None:
        """The ICMP error goes out of the interface whose route leads back to
        the packet's source, from that interface's address."""
        try:
            header, _ = Ipv4Header.parse(packet)
        except PacketError:
            return
        back = self.lookup(header.src)
        if back is None:
            self.counters["icmp_no_route"] += 1
            return
        out[back[0]] += self._stacks[back[0]].icmp_error(packet, action.type, action.code,
                                                         action.rest)
