"""Throughput and latency domU -> domU through the whole xenlab path:
netfront -> tx ring -> netback -> veth -> bridge -> veth -> netback -> rx
ring -> netfront.

The source and the sink are inside the domains (the guest agent's Blast and
Sink, xenlab.domain.traffic), never a gRPC message per frame. Around every
run the bench reads the counters of each point of the path, so that it can
show where each frame went: sent = delivered + the drops counted, by point
and reason. Counters are per device, so traffic other than the blast (there
is none while it runs: ARP is resolved beforehand) would show up too.
"""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from xenlab.agent_client import agent_for
from xenlab.bench.labs import SchedMeter, ip, lab_processes, mac
from xenlab.bench.stats import conservation, cpu_bound, delta, percentiles, rate, rate_fields
from xenlab.domain.traffic import BENCH_ETHERTYPE
from xenlab.proto import agent_pb2, bridge_pb2

SETTLE_QUIET = 0.3           # seconds the counters must stay still to call the path drained
SETTLE_MAX = 10.0


@dataclass
class DomainPair:
    """The two-domU path: the sender's and receiver's agents, dom0's, the bridge's API."""

    lab: object
    tx: object
    rx: object
    dom0: object
    bridge: object
    tx_domid: int
    rx_domid: int
    bridge_name: str = "xenbr0"

    @classmethod
    async def open(cls, lab, tx_name: str, rx_name: str) -> "DomainPair":
        tx_domid, rx_domid = lab.domids[tx_name], lab.domids[rx_name]
        bridge = await lab.bridge_client("xenbr0")
        return cls(lab, await agent_for(lab.hv, tx_domid), await agent_for(lab.hv, rx_domid),
                   await agent_for(lab.hv, 0), bridge, tx_domid, rx_domid)

    async def close(self) -> None:
        for stub in (self.tx, self.rx, self.dom0, self.bridge):
            await stub.close()

    def points(self) -> list[tuple[str, str]]:
        """(point, what counts a frame passing it), in path order."""
        t, r = self.tx_domid, self.rx_domid
        return [(f"d{t} eth0 (netfront tx)", "tx_packets"), (f"vif{t}.0 (netback tx)", "rx_packets"),
                (f"veth{t}.0 (dom0 end)", "tx_packets"), (f"xenbr0 port vif{t}.0", "rx_packets"),
                (f"xenbr0 port vif{r}.0", "tx_packets"), (f"veth{r}.0 (dom0 end)", "rx_packets"),
                (f"vif{r}.0 (netback rx)", "tx_packets"), (f"d{r} eth0 (netfront rx)", "rx_packets")]

    async def counters(self) -> dict[str, dict]:
        """{point: {"passed": n, "drops": {reason: n}}} for every point of the path."""
        t, r = self.tx_domid, self.rx_domid
        tx, rx, dom0, bridge = await asyncio.gather(
            self.tx.InterfaceStats(agent_pb2.StatsRequest(interface="eth0")),
            self.rx.InterfaceStats(agent_pb2.StatsRequest(interface="eth0")),
            self.dom0.InterfaceStats(agent_pb2.StatsRequest()),
            self.bridge.Stats(bridge_pb2.BridgeStatsRequest(bridge=self.bridge_name)))
        d0 = {i.name: i for i in dom0.interfaces}
        ports = {p.name: p for p in bridge.bridges[0].ports}

        def dev(stats, counter: str) -> dict:
            # stack_*: what the guest's IP stack refused after the device had
            # delivered the frame; our frames never reach it (the sink takes them).
            return {"passed": getattr(stats, counter),
                    "drops": {k: v for k, v in stats.drops.items() if not k.startswith("stack_")}}

        def port(p, counter: str) -> dict:
            link = dict(p.link)
            drops = {f"port_{k}": v for k, v in p.drops.items()}
            drops.update({f"link_{k[5:]}": v for k, v in link.items() if k.startswith("drop_")})
            return {"passed": getattr(p, counter), "drops": drops}

        names = [n for n, _ in self.points()]
        return {names[0]: dev(tx.interfaces[0], "tx_packets"),
                names[1]: dev(d0[f"vif{t}.0"], "rx_packets"),
                names[2]: dev(d0[f"veth{t}.0"], "tx_packets"),
                names[3]: port(ports[f"vif{t}.0"], "rx_packets"),
                names[4]: port(ports[f"vif{r}.0"], "tx_packets"),
                names[5]: dev(d0[f"veth{r}.0"], "rx_packets"),
                names[6]: dev(d0[f"vif{r}.0"], "tx_packets"),
                names[7]: dev(rx.interfaces[0], "rx_packets")}

    async def settled(self) -> dict[str, dict]:
        """The counters once nothing moves any more (the rings and queues drained)."""
        deadline = time.monotonic() + SETTLE_MAX
        last = await self.counters()
        while True:
            await asyncio.sleep(SETTLE_QUIET)
            now = await self.counters()
            if now == last or time.monotonic() > deadline:
                return now
            last = now


def path_delta(after: dict, before: dict) -> tuple[list[dict], dict[str, dict[str, int]]]:
    hops, drops = [], {}
    for point, a in after.items():
        b = before[point]
        d = delta(a["drops"], b["drops"])
        hops.append({"point": point, "passed": a["passed"] - b["passed"], "drops": d})
        if d:
            drops[point] = d
    return hops, drops


async def warm_up(pair: DomainPair, rx_index: int) -> None:
    """ARP resolved and both MACs in the bridge's FDB before anything is timed."""
    reply = await pair.tx.Ping(agent_pb2.PingRequest(dst=ip(rx_index), count=3, interval=0.05, timeout=5))
    if reply.received == 0:
        raise RuntimeError(f"the sender cannot reach {ip(rx_index)}: {reply.error or 'no reply'}")


async def run_throughput(pair: DomainPair, rx_index: int, size: int, count: int,
                         batch: int = 64, timeout: float = 300.0, profiler=None) -> dict:
    processes = await lab_processes(pair.lab)
    sched = SchedMeter(processes)
    before = await pair.settled()
    sink = pair.rx.Sink(agent_pb2.SinkRequest(ethertype=BENCH_ETHERTYPE, count=count, idle=2.0,
                                              timeout=timeout))
    stream = sink.__aiter__()
    await stream.__anext__()               # ready: the sink is in place
    if profiler is not None:
        profiler.start({p.name: p.pid for p in processes})
        await asyncio.sleep(profiler.warmup)     # attached before the first frame
    started = time.monotonic()
    sched.start()
    try:
        sent = await pair.tx.Blast(agent_pb2.BlastRequest(
            dst_mac=mac(rx_index), count=count, size=size, ethertype=BENCH_ETHERTYPE, batch=batch,
            timeout=timeout))
        got = await stream.__anext__()
    finally:
        sink.cancel()                       # ended already, unless the blast failed
        if profiler is not None:
            profiler.stop()
    # The sink's idle wait (frames were dropped) is no work: the busy time
    # ends with the last arrival.
    per_frame = sched.stop(got.received)
    cpu = sched.percent(got.last - sent.started if got.received else time.monotonic() - started)
    after = await pair.settled()
    hops, drops = path_delta(after, before)
    seconds = got.last - sent.started if got.received else 0.0
    result = {"size": size, "count": count, "sent": sent.sent, "delivered": got.received,
              "seconds": seconds, "sender_fps": rate(sent.sent, sent.finished - sent.started),
              "sink_bytes": got.bytes, "cpu_percent": cpu, "path": hops,
              "per_frame_us": per_frame, "cpu_bound_fps": cpu_bound(per_frame, usable_cpus())}
    result.update(rate_fields(got.received, size, seconds))
    result.update(conservation(sent.sent, got.received, drops))
    return result


async def run_latency(pair: DomainPair, rx_index: int, count: int, interval: float) -> dict:
    sched = SchedMeter(await lab_processes(pair.lab))
    sched.start()
    reply = await pair.tx.Ping(agent_pb2.PingRequest(dst=ip(rx_index), count=count, interval=interval,
                                                     timeout=2.0))
    # Between pings the lab is idle: what each process used is the pings'.
    per_ping = sched.stop(reply.received)
    return {"count": count, "interval": interval, "size": 98, "transmitted": reply.transmitted,
            "received": reply.received, "error": reply.error, **percentiles(list(reply.rtt)),
            "per_ping_us": per_ping}


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))
