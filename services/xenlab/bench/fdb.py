"""Bridge forwarding cost against FDB size: the pure core (xenlab.bridge.core),
in this process, as the bridge service runs it per batch from a port.

The table is filled with N learned stations split between two ports, and
the frames go from one port to stations behind the other, their
destinations drawn at random from the whole table (up to ``SAMPLE`` of
them), so that a big table is really looked up all over, not one hot
entry. Every frame also refreshes its source's entry, as learning does.
Lookups are one dict access and ageing only looks at the head of an LRU
list, so the cost should not grow with N.
"""
from __future__ import annotations

import gc
import random
import statistics
import time

from xenlab.bridge.core import Bridge

SAMPLE = 4096              # distinct destinations the frames go to
BATCH = 64                 # frames per forward_batch, as a veth datagram carries them
ETHERTYPE = b"\x88\xb5"


def station(i: int) -> bytes:
    """A locally administered unicast MAC for station i."""
    return bytes([0x02, 0x00]) + i.to_bytes(4, "big")


def filled_bridge(entries: int) -> Bridge:
    # Ageing 0: never age, so nothing expires while the clock runs.
    bridge = Bridge("xenbr0", ageing=0, max_entries=max(entries + 16, 16))
    bridge.add_port("p1")
    bridge.add_port("p2")
    now = bridge.clock()
    for i in range(entries):
        bridge.fdb.learn(station(i), "p2" if i % 2 else "p1", now)
    bridge.fdb.pop_events()
    return bridge


def frames_for(entries: int, size: int = 64, seed: int = 1) -> list[bytes]:
    behind_p2 = range(1, entries, 2)
    rng = random.Random(seed)
    dsts = rng.sample(behind_p2, min(SAMPLE, len(behind_p2)))
    src = station(0)                                # behind p1
    pad = bytes(size - 14)
    return [station(d) + src + ETHERTYPE + pad for d in dsts]


def forwarding_cost(entries: int, frames: int = 200_000, repeats: int = 5) -> dict:
    """Nanoseconds per frame through ``Bridge.forward_batch`` with ``entries``
    stations in the FDB: the median (and min, max) of ``repeats`` runs."""
    bridge = filled_bridge(entries)
    pool = frames_for(entries)
    batches = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
    batches = [b for b in batches if len(b) == BATCH] or [pool * (BATCH // len(pool) + 1)][:1]
    rounds = max(1, frames // (BATCH * len(batches)))
    per_frame = []
    gc.collect()
    for _ in range(repeats):
        forward = bridge.forward_batch
        t0 = time.perf_counter_ns()
        for _ in range(rounds):
            for batch in batches:
                forward("p1", batch)
        elapsed = time.perf_counter_ns() - t0
        per_frame.append(elapsed / (rounds * sum(len(b) for b in batches)))
        bridge.fdb.pop_events()
    unicast = bridge.counters["unicast"]
    return {"entries": entries, "fdb_entries": len(bridge.fdb),
            "frames_per_run": rounds * sum(len(b) for b in batches), "runs": repeats,
            "ns_per_frame": statistics.median(per_frame), "ns_min": min(per_frame),
            "ns_max": max(per_frame), "unicast": unicast, "flooded": bridge.counters["flooded"]}


def fdb_scaling(sizes=(10, 10_000, 100_000), frames: int = 200_000, repeats: int = 5) -> dict:
    runs = [forwarding_cost(n, frames, repeats) for n in sizes]
    base = runs[0]["ns_per_frame"]
    return {"runs": runs, "ratio_largest_to_smallest": runs[-1]["ns_per_frame"] / base if base else None}


def profile_forwarding(entries: int, frames: int = 50_000, top: int = 10) -> list[dict]:
    """cProfile of the forwarding loop: the functions by their own time."""
    import cProfile
    import pstats

    bridge = filled_bridge(entries)
    pool = frames_for(entries)
    batches = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
    rounds = max(1, frames // len(pool))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(rounds):
        for batch in batches:
            bridge.forward_batch("p1", batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values()) or 1.0
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [{"function": f"{func} ({filename.rsplit('/', 1)[-1]}:{line})", "calls": nc,
             "own_percent": round(100.0 * tt / total, 1)}
            for (filename, line, func), (cc, nc, tt, ct, callers) in rows]
