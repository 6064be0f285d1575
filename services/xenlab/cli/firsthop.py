"""What became of injected frames one hop on, from counters read before
and after: the only trace a dropped frame leaves is the counter of the
device that dropped it, in another domain than the one that sent it.

    injection point            first hop                     read through
    DOMAIN:ethN (netfront)     netback's vif (backend side)  the backend domain's agent
    vifD.N (netback)           the guest's ethN (netfront)   domain D's agent
    vethD.N                    the bridge, at port vifD.N    the bridge service
    BRIDGE:PORT                the bridge, at that port      the bridge service

A hop's ``Sample`` is what it had handed on and what it had dropped (by
reason) at one moment; ``account`` turns two samples into a ``HopReport``.
Counters are shared with whatever else crosses the hop meanwhile (ARP, a
ping): ``passed`` is capped at the frames sent, and a report on a busy hop
may name a few drops that were not ours.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from xenlab.proto import agent_pb2, bridge_pb2

# What a drop reason means to someone who injected the frame, and what to do.
HINTS = {
    "spoofed_mac": "the source MAC is not the vif's (a vif with ip= passes only frames from its "
                   "own MAC, as vif-bridge's antispoof rules); leave out --src to send from the "
                   "interface's own address",
    "spoofed_ip": "the source IPv4 address is not one of the vif's ip=",
    "link_down": "the vif's veth into the bridge is down (no bridge, or it is being re-plugged)",
    "no_receiver": "nothing is attached to take them (the interface is not plugged into a bridge)",
    "not_connected": "the vif is not connected to its frontend",
    "disabled": "netback disabled the vif (a fatal error from its frontend)",
    "bad_src_mac": "the source MAC is multicast or all zeroes, which a bridge never forwards",
    "same_port": "the destination MAC is behind the port they came in on",
    "port_disabled": "the port is disabled",
    "egress_disabled": "the destination's port is disabled",
    "storm_control": "the port's flood limit (flood_limit=, frames/s) was exceeded",
    "no_egress": "the bridge has no other port to send them out of",
    "link_local": "the destination is an 802.1D link-local group, which a bridge does not forward",
    "rx_ring_full": "the guest had no receive buffers posted (its ring was full)",
    "suspended": "the guest is suspended or suspending (xl save): its netfront stopped its queues",
}


@dataclass(frozen=True)
class Sample:
    passed: int                                             # frames handed on, so far
    drops: Mapping[str, int] = field(default_factory=dict)  # frames dropped, by reason
    egress: Mapping[str, int] = field(default_factory=dict)  # a bridge: frames sent out of each port


@dataclass(frozen=True)
class HopReport:
    hop: str                         # "vif1.0 (netback in Domain-0)"
    sent: int                        # frames that left the injection point
    passed: int                      # of those, handed on by the hop
    drops: dict[str, int]
    egress: dict[str, int]

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def unaccounted(self) -> int:
        """Frames the hop neither passed nor dropped (yet)."""
        return max(0, self.sent - self.passed - self.dropped)

    def summary(self) -> str:
        text = f"{self.hop}: {self.passed} passed on, {self.dropped} dropped"
        if self.drops:
            text += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.drops.items())) + ")"
        if self.egress:
            text += "; out of " + ", ".join(f"{port} ({n})" for port, n in sorted(self.egress.items()))
        if self.unaccounted:
            text += f"; {self.unaccounted} not seen there yet"
        return text

    def hints(self) -> list[str]:
        return [f"{reason}: {HINTS[reason]}" for reason in sorted(self.drops) if reason in HINTS]


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for key, value in after.items():
        grown = value - before.get(key, 0)
        if grown > 0:
            out[key] = grown
    return out


def account(hop: str, sent: int, before: Sample, after: Sample) -> HopReport:
    """What the hop did between two samples, as far as ``sent`` frames go."""
    passed = max(0, min(sent, after.passed - before.passed))
    return HopReport(hop, sent, passed, _delta(after.drops, before.drops),
                     _delta(after.egress, before.egress))


def settled(report: HopReport) -> bool:
    return report.passed + report.dropped >= report.sent


# -- reading a hop's counters -------------------------------------------------------------
@dataclass
class Hop:
    """A first hop: its name, and how to sample it."""
    name: str
    sample: Callable[[], Awaitable[Sample]]


def interface_hop(name: str, agent, interface: str) -> Hop:
    """An interface that receives the frames: what it delivered (rx) and
    dropped. A guest stack's own drops (stack_*) come after the interface
    delivered the frame, so they are not the hop's."""
    async def sample() -> Sample:
        reply = await agent.InterfaceStats(agent_pb2.StatsRequest(interface=interface))
        (stats,) = reply.interfaces
        return Sample(stats.rx_packets, {reason: n for reason, n in stats.drops.items()
                                         if not reason.startswith("stack_")})
    return Hop(name, sample)


def bridge_port_hop(name: str, bridge, bridge_name: str, port: str) -> Hop:
    """A bridge, for the frames entering it at ``port``: what it forwarded,
    what it dropped there, and which ports they left by."""
    async def sample() -> Sample:
        reply = await bridge.Stats(bridge_pb2.BridgeStatsRequest(bridge=bridge_name))
        (counters,) = reply.bridges
        ports = {p.name: p for p in counters.ports}
        ingress = ports.get(port)
        if ingress is None:
            return Sample(0)
        drops = dict(ingress.drops)
        return Sample(ingress.rx_packets - sum(drops.values()), drops,
                      {name: p.tx_packets for name, p in ports.items() if name != port})
    return Hop(name, sample)


async def follow(hop: Hop, sent: int, before: Sample, timeout: float, poll: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> HopReport:
    """Sample the hop until it has passed or dropped ``sent`` frames since
    ``before``, or ``timeout`` seconds went by; the last report."""
    deadline = clock() + timeout
    while True:
        report = account(hop.name, sent, before, await hop.sample())
        if settled(report) or clock() >= deadline:
            return report
        await asyncio.sleep(poll)
