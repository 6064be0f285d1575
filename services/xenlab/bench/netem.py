"""The netem section of `xenlab bench` (``--only netem``): how accurately a
netem on a lab's links shapes them, each figure against a baseline measured
in the same run on the same lab.

* delay 20ms on d02's vif (toward d02): the median ping RTT d01 -> d02 rises
  by 20 ms; with 20ms on d02's veth end as well (from d02), by 40 ms;
* loss 10% on d02's vif: the share of a 10,000-frame blast d02 does not get;
* rate 10mbit on d02's vif: the rate at which a blast of 1500-byte frames
  arrives, first frame to last.
"""
from __future__ import annotations

import statistics

from xenlab.agent_client import agent_for
from xenlab.bench.labs import lab_spec, mac, running_lab
from xenlab.lab import shaping
from xenlab.proto import agent_pb2

PINGS = 50
PING_INTERVAL = 0.05         # one request in flight at a time, even with 40 ms added
LOSS_FRAMES = 10_000
RATE_FRAMES = 1500
RATE_SIZE = 1500


async def _ping_median(hv, src: int, dst: str, count: int, rtts: list | None = None) -> float:
    async with await agent_for(hv, src) as agent:
        reply = await agent.Ping(agent_pb2.PingRequest(dst=dst, count=count, interval=PING_INTERVAL,
                                                       timeout=2.0))
    if reply.received < count * 0.9:
        raise RuntimeError(f"ping {dst}: {reply.received}/{count} replies {reply.error}")
    if rtts is not None:
        rtts.extend(reply.rtt)
    return statistics.median(reply.rtt)


async def _blast(hv, src: int, dst: int, count: int, size: int) -> dict:
    """Domain ``src`` sends ``count`` frames to d02's MAC; what domain ``dst``
    (d02) received, and when."""
    async with await agent_for(hv, dst) as sink_agent, await agent_for(hv, src) as blast_agent:
        sink = sink_agent.Sink(agent_pb2.SinkRequest(idle=1.0, timeout=120.0, count=count))
        ready = await sink.read()
        assert ready.ready
        sent = await blast_agent.Blast(agent_pb2.BlastRequest(dst_mac=mac(2), count=count,
                                                              size=size, timeout=120.0))
        got = await sink.read()
        sink.cancel()
    span = got.last - got.first
    return {"sent": sent.sent, "received": got.received, "bytes": got.bytes,
            "span": span, "bits_per_second": (got.received - 1) * size * 8 / span if span > 0 else 0.0,
            "offered_per_second": sent.sent * size * 8 / max(1e-9, sent.finished - sent.started)}


async def run(progress, log_level: str = "WARNING") -> dict:
    out: dict = {}
    async with running_lab(lab_spec(2, "bench-netem"), log_level=log_level, progress=progress) as lab:
        hv = lab.hv
        d1, d2 = lab.domids["d01"], lab.domids["d02"]
        vif, veth = f"vif{d2}.0", f"veth{d2}.0"
        dst = "10.0.0.2"
        await _ping_median(hv, d1, dst, 5)               # ARP resolved, paths warm
        progress("netem: ping RTT baseline")
        rtts: dict[str, list] = {"baseline": [], "one": [], "both": []}
        base = await _ping_median(hv, d1, dst, PINGS, rtts["baseline"])
        await shaping.qdisc(hv, "add", vif, ["delay", "20ms"])
        progress(f"netem: delay 20ms on {vif}")
        one = await _ping_median(hv, d1, dst, PINGS, rtts["one"])
        await shaping.qdisc(hv, "add", veth, ["delay", "20ms"])
        progress(f"netem: delay 20ms on {vif} and {veth}")
        both = await _ping_median(hv, d1, dst, PINGS, rtts["both"])
        await shaping.qdisc(hv, "del", veth)
        await shaping.qdisc(hv, "del", vif)
        lowest = {k: min(v) for k, v in rtts.items()}
        out["delay"] = {"pings": PINGS, "interval": PING_INTERVAL, "lowest_rtt": lowest,
                        "added_one_lowest": lowest["one"] - lowest["baseline"],
                        "added_both_lowest": lowest["both"] - lowest["baseline"], "baseline_rtt": base, "one_way_rtt": one, "both_ways_rtt": both,
                        "added_one": one - base, "added_both": both - base, "rtts": rtts}

        progress(f"netem: {LOSS_FRAMES} frames, no qdisc")
        loss_base = await _blast(hv, d1, d2, LOSS_FRAMES, 64)
        await shaping.qdisc(hv, "add", vif, ["loss", "10%", "limit", "100000"])
        progress(f"netem: {LOSS_FRAMES} frames, loss 10% on {vif}")
        lossy = await _blast(hv, d1, d2, LOSS_FRAMES, 64)
        [info] = (await shaping.qdisc(hv, "show", vif)).qdiscs
        await shaping.qdisc(hv, "del", vif)
        out["loss"] = {"frames": LOSS_FRAMES, "baseline": loss_base, "netem": lossy,
                       "netem_counted": dict(info.stats),
                       "lost_share": 1 - lossy["received"] / lossy["sent"],
                       "baseline_lost_share": 1 - loss_base["received"] / loss_base["sent"]}

        progress(f"netem: {RATE_FRAMES} x {RATE_SIZE}-byte frames, no qdisc")
        rate_base = await _blast(hv, d1, d2, RATE_FRAMES, RATE_SIZE)
        await shaping.qdisc(hv, "add", vif, ["rate", "10mbit", "limit", "100000"])
        progress(f"netem: the same, rate 10mbit on {vif}")
        shaped = await _blast(hv, d1, d2, RATE_FRAMES, RATE_SIZE)
        await shaping.qdisc(hv, "del", vif)
        out["rate"] = {"frames": RATE_FRAMES, "size": RATE_SIZE, "baseline": rate_base, "netem": shaped}
    return out


def table(result: dict) -> str:
    d, l, r = result["delay"], result["loss"], result["rate"]
    ms = lambda s: f"{s * 1e3:.2f} ms"       # noqa: E731
    rows = [
        ("netem", "baseline", "with netem", "effect", "target"),
        (f"delay 20ms on the vif (ping RTT, median of {d['pings']})", ms(d["baseline_rtt"]),
         ms(d["one_way_rtt"]), f"+{ms(d['added_one'])}", "+20 ms +-10%"),
        ("  the same, lowest RTT", ms(d["lowest_rtt"]["baseline"]), ms(d["lowest_rtt"]["one"]),
         f"+{ms(d['added_one_lowest'])}", ""),
        ("delay 20ms on the vif and the veth (median)", ms(d["baseline_rtt"]), ms(d["both_ways_rtt"]),
         f"+{ms(d['added_both'])}", "+40 ms +-10%"),
        ("  the same, lowest RTT", ms(d["lowest_rtt"]["baseline"]), ms(d["lowest_rtt"]["both"]),
         f"+{ms(d['added_both_lowest'])}", ""),
        (f"loss 10% ({l['frames']:,} frames)", f"{l['baseline_lost_share'] * 100:.2f}% lost",
         f"{l['lost_share'] * 100:.2f}% lost", f"{l['netem_counted'].get('loss', 0)} counted",
         "10% +-2%"),
        (f"rate 10mbit ({r['frames']} x {r['size']} B)",
         f"{r['baseline']['bits_per_second'] / 1e6:.1f} Mbit/s",
         f"{r['netem']['bits_per_second'] / 1e6:.2f} Mbit/s",
         f"{r['netem']['received']}/{r['netem']['sent']} frames", "10 Mbit/s +-10%"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
