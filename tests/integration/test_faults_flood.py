"""Bridge abuse from inside a domU: a MAC flood (random source MACs, as
macof) and a broadcast storm. The FDB stays within its limit, the bridge's
memory stays bounded, storms are counted and cut at their port, and the
other domains keep talking.

The CI version floods FLOOD_FRAMES frames; `xenlab soak` floods 1,000,000.
"""
import asyncio
import time
from pathlib import Path

import pytest

from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

FLOOD_FRAMES = 100_000
STORM_FRAMES = 50_000
FDB_MAX = 1024
FLOOD_RATE = 1000           # storm control: flooded frames per second per port, burst as many
LAB = f"""
[mqtt]
broker = "none"

[[bridge]]
name = "xenbr0"
fdb_policy = "ovs"
fdb_max = {FDB_MAX}
flood_limit = "{FLOOD_RATE}/{FLOOD_RATE}"

[[domain]]
name = "a"
memory = 32
vif = ["mac=00:16:3e:0d:00:01,ip=10.7.0.1/24"]

[[domain]]
name = "b"
memory = 32
vif = ["mac=00:16:3e:0d:00:02,ip=10.7.0.2/24"]

[[domain]]
name = "attacker"
memory = 32
vif = ["mac=00:16:3e:0d:00:03"]
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def bridge_stats(stub) -> bridge_pb2.BridgeCounters:
    return (await stub.Stats(bridge_pb2.BridgeStatsRequest(bridge="xenbr0"))).bridges[0]


async def quiet(stub, port: str = "", rx: int = 0, timeout: float = 60.0) -> bridge_pb2.BridgeCounters:
    """The bridge's counters once `port` has taken in `rx` frames and they
    stop moving (the queues drained)."""
    deadline = time.monotonic() + timeout
    while port:
        ports = {p.name: p for p in (await bridge_stats(stub)).ports}
        if ports[port].rx_packets >= rx:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{port} took in {ports[port].rx_packets} frames, not {rx}")
        await asyncio.sleep(0.1)
    last = await bridge_stats(stub)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await bridge_stats(stub)
        if now.counters == last.counters:
            return now
        last = now
    raise AssertionError("the bridge never went quiet")


async def abuse_while_pinging(lab, request: agent_pb2.BlastRequest):
    """Blast from the attacker; ping a -> b while it runs."""
    attacker, a = await lab.agent("attacker"), await lab.agent("a")
    blast = asyncio.ensure_future(attacker.Blast(request))
    await asyncio.sleep(0.3)
    during = await a.Ping(agent_pb2.PingRequest(dst="10.7.0.2", count=10, interval=0.1, timeout=2))
    sent = await blast
    return sent, during


async def test_mac_flood_and_broadcast_storm_are_bounded_and_do_not_starve_the_others(lab_factory):
    lab = await lab_factory(LAB)
    stub = channel = await lab.bridge()
    try:
        port = f"vif{lab.domid('attacker')}.0"
        bridge_pid = lab.lab.service("bridge").proc.pid
        a = await lab.agent("a")
        assert (await a.Ping(agent_pb2.PingRequest(dst="10.7.0.2", count=2, interval=0.05))).received == 2
        before = await quiet(stub)
        rss_before = rss_kb(bridge_pid)

        # A MAC flood: every frame from a new station, to a station nobody has.
        started = time.monotonic()
        flood, during = await abuse_while_pinging(lab, agent_pb2.BlastRequest(
            dst_mac="02:00:00:00:99:99", count=FLOOD_FRAMES, batch=256, random_src=True, timeout=300))
        assert flood.sent == FLOOD_FRAMES and flood.dropped == 0
        rx_before = {p.name: p for p in before.ports}[port].rx_packets
        after = await quiet(stub, port, rx_before + FLOOD_FRAMES)
        elapsed = time.monotonic() - started
        growth = rss_kb(bridge_pid) - rss_before
        print(f"MAC flood of {FLOOD_FRAMES}: {flood.finished - flood.started:.1f}s in the guest, "
              f"bridge RSS +{growth} KiB, FDB {after.fdb['entries']}/{FDB_MAX}, "
              f"ping a->b during it {during.received}/{during.transmitted}")
        assert after.fdb["entries"] <= FDB_MAX
        assert after.fdb["learned"] - before.fdb["learned"] >= FLOOD_FRAMES - 16
        assert after.fdb["evicted"] - before.fdb["evicted"] >= FLOOD_FRAMES - FDB_MAX
        assert growth < 32 * 1024
        ports, old = {p.name: p for p in after.ports}, {p.name: p for p in before.ports}
        assert ports[port].rx_packets - old[port].rx_packets == FLOOD_FRAMES
        # Storm control let through at most its burst plus its rate for the time it took.
        cut = ports[port].drops["storm_control"] - old[port].drops["storm_control"]
        assert FLOOD_FRAMES - cut <= FLOOD_RATE * (1 + elapsed)
        assert during.received >= during.transmitted // 2
        # Every frame that entered the bridge was forwarded or dropped with a reason.
        assert after.counters["rx"] == after.counters["forwarded"] + sum(after.drops.values())

        # A broadcast storm: counted on its port, cut there by storm control.
        started = time.monotonic()
        storm, during = await abuse_while_pinging(lab, agent_pb2.BlastRequest(
            dst_mac="ff:ff:ff:ff:ff:ff", count=STORM_FRAMES, batch=256, timeout=300))
        final = await quiet(stub, port, {p.name: p for p in after.ports}[port].rx_packets + STORM_FRAMES)
        elapsed = time.monotonic() - started
        old, new = {p.name: p for p in after.ports}, {p.name: p for p in final.ports}
        assert new[port].rx_broadcast - old[port].rx_broadcast == STORM_FRAMES
        storm_drops = new[port].drops["storm_control"] - old[port].drops["storm_control"]
        flooded = STORM_FRAMES - storm_drops
        assert 0 < flooded <= FLOOD_RATE * (1 + elapsed)
        for other in (f"vif{lab.domid('a')}.0", f"vif{lab.domid('b')}.0"):
            # What the others got of it: the flooded share, plus their own unicast.
            assert flooded <= new[other].tx_packets - old[other].tx_packets < flooded + 200
        print(f"broadcast storm of {STORM_FRAMES}: {flooded} flooded, {storm_drops} cut by storm "
              f"control; ping a->b during it {during.received}/{during.transmitted}")
        assert during.received >= during.transmitted // 2
        assert (await a.Ping(agent_pb2.PingRequest(dst="10.7.0.2", count=5, interval=0.05))).received == 5
    finally:
        await channel.close()
