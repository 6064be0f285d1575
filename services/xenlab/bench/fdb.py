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
from xenlab.bridge.fdb import MAX_AGEING
import cProfile
import pstats

SAMPLE = 4096              # distinct destinations of the spread pattern
HOT = 5                    # destinations of the hot pattern (all there are behind p2 at N=10)
BATCH = 64                 # frames per forward_batch, as a veth datagram carries them
ETHERTYPE = b"\x88\xb5"


def station(i: int) -> bytes:
    """A locally administered unicast MAC for station i."""
    return bytes([0x02, 0x00]) + i.to_bytes(4, "big")


def filled_bridge(entries: int) -> Bridge:
    # The longest ageing, so nothing expires while the clock runs (0 would
    # keep nothing, as Linux's ageing_time 0).
    bridge = Bridge("xenbr0", ageing=MAX_AGEING, max_learned=max(entries + 16, 16))
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


class _Run:
    """One FDB size and pattern, set up once and timed as often as asked."""

    def __init__(self, entries: int, frames: int, spread: bool):
        self.entries, self.spread = entries, spread
        self.bridge = filled_bridge(entries)
        pool = frames_for(entries, spread)
        if len(pool) < BATCH:
            pool = (pool * (BATCH // len(pool) + 1))[:BATCH]
        self.batches = [pool[i:i + BATCH] for i in range(0, len(pool) - BATCH + 1, BATCH)]
        self.rounds = max(1, frames // (BATCH * len(self.batches)))
        self.frames = self.rounds * sum(len(b) for b in self.batches)
        self.per_frame: list[float] = []

    def time_once(self) -> None:
        forward, batches = self.bridge.forward_batch, self.batches
        t0 = time.perf_counter_ns()
        for _ in range(self.rounds):
            for batch in batches:
                forward("p1", batch)
        self.per_frame.append((time.perf_counter_ns() - t0) / self.frames)
        self.bridge.fdb.pop_events()

    def result(self) -> dict:
        bridge, per_frame = self.bridge, self.per_frame
        return {"entries": self.entries, "pattern": "spread" if self.spread else "hot",
                "fdb_entries": len(bridge.fdb), "frames_per_run": self.frames,
                "runs": len(per_frame), "ns_per_frame": statistics.median(per_frame),
                "ns_min": min(per_frame), "ns_max": max(per_frame),
                "unicast": bridge.counters["unicast"], "flooded": bridge.counters["flooded"]}


def _timed(runs: list[_Run], repeats: int) -> list[dict]:
    """Time the runs in turn, ``repeats`` rounds: this machine's speed drifts
    over seconds, and round-robin spreads the drift over every size alike
    (one size's runs back to back could all land in a slow spell)."""
    gc.collect()
    for _ in range(repeats):
        for run in runs:
            run.time_once()
    return [run.result() for run in runs]


def forwarding_cost(entries: int, frames: int = 200_000, repeats: int = 5, spread: bool = True) -> dict:
    """Nanoseconds per frame through ``Bridge.forward_batch`` with ``entries``
    stations in the FDB: the median (and min, max) of ``repeats`` runs."""
    return _timed([_Run(entries, frames, spread)], repeats)[0]


def fdb_scaling(sizes=(10, 10_000, 100_000), frames: int = 200_000, repeats: int = 5) -> dict:
    """Both patterns at each size, the sizes of a pattern timed in turn;
    ``ratio_largest_to_smallest`` (the target's figure) is the hot
    pattern's, ``spread_ratio`` the other's."""
    def ratio(runs):
        base = runs[0]["ns_per_frame"]
        return runs[-1]["ns_per_frame"] / base if base else None
    hot = _timed([_Run(n, frames, spread=False) for n in sizes], repeats)
    spread = _timed([_Run(n, frames, spread=True) for n in sizes], repeats)
    return {"runs": hot, "spread_runs": spread, "ratio_largest_to_smallest": ratio(hot),
            "spread_ratio": ratio(spread)}


def profile_forwarding(entries: int, frames: int = 50_000, top: int = 10) -> list[dict]:
    """cProfile of the forwarding loop: the functions by their own time."""

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
