"""Bridge forwarding cost against FDB size: the pure core (xenlab.bridge.core),
in this process, as the bridge service runs it per batch from a port.

The table is filled with N learned stations split between two ports, and
frames go from one port to stations behind the other; every frame also
refreshes its source's entry, as learning does. Two traffic patterns:

* ``hot``: the same few destinations whatever N (``HOT`` stations), so that
  only the table's size changes: this is the figure the target is about,
  and it should not grow with N (lookups are one dict access, ageing and
  eviction only look at the head of an LRU list);
* ``spread``: destinations drawn at random from the whole table (up to
  ``SAMPLE`` of them), so that a big table is looked up all over; this one
  also measures the memory hierarchy (100k entries are tens of MiB of
  Python objects, far past the CPU caches).
"""
from __future__ import annotations

import gc
import random
import statistics
import time

from xenlab.bridge.core import Bridge

SAMPLE = 4096              # distinct destinations of the spread pattern
HOT = 5                    # destinations of the hot pattern (all there are behind p2 at N=10)
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


def frames_for(entries: int, spread: bool = True, size: int = 64, seed: int = 1) -> list[bytes]:
    behind_p2 = range(1, entries, 2)
    if spread:
        dsts = random.Random(seed).sample(behind_p2, min(SAMPLE, len(behind_p2)))
    else:
        dsts = list(behind_p2[:HOT])
    src = station(0)                                # behind p1
    pad = bytes(size - 14)
    return [station(d) + src + ETHERTYPE + pad for d in dsts]


def forwarding_cost(entries: int, frames: int = 200_000, repeats: int = 5, spread: bool = True) -> dict:
    """Nanoseconds per frame through ``Bridge.forward_batch`` with ``entries``
    stations in the FDB: the median (and min, max) of ``repeats`` runs."""
    bridge = filled_bridge(entries)
    pool = frames_for(entries, spread)
    if len(pool) < BATCH:
        pool = (pool * (BATCH // len(pool) + 1))[:BATCH]
    batches = [pool[i:i + BATCH] for i in range(0, len(pool) - BATCH + 1, BATCH)]
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
    return {"entries": entries, "pattern": "spread" if spread else "hot", "fdb_entries": len(bridge.fdb),
            "frames_per_run": rounds * sum(len(b) for b in batches), "runs": repeats,
            "ns_per_frame": statistics.median(per_frame), "ns_min": min(per_frame),
            "ns_max": max(per_frame), "unicast": unicast, "flooded": bridge.counters["flooded"]}


def fdb_scaling(sizes=(10, 10_000, 100_000), frames: int = 200_000, repeats: int = 5) -> dict:
    """Both patterns at each size; ``ratio_largest_to_smallest`` (the
    target's figure) is the hot pattern's, ``spread_ratio`` the other's."""
    def ratio(runs):
        base = runs[0]["ns_per_frame"]
        return runs[-1]["ns_per_frame"] / base if base else None
    hot = [forwarding_cost(n, frames, repeats, spread=False) for n in sizes]
    spread = [forwarding_cost(n, frames, repeats, spread=True) for n in sizes]
    return {"runs": hot, "spread_runs": spread, "ratio_largest_to_smallest": ratio(hot),
            "spread_ratio": ratio(spread)}


def profile_forwarding(entries: int, frames: int = 50_000, top: int = 10) -> list[dict]:
    """cProfile of the forwarding loop: the functions by their own time."""
    import cProfile
    import pstats

    bridge = filled_bridge(entries)
    pool = frames_for(entries, spread=True)
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
