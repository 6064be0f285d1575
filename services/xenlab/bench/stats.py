"""The arithmetic of the figures: rates, percentiles, frame conservation."""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def rate_fields(delivered: int, size: int, seconds: float) -> dict:
    """Frames per second and Mbit/s of the frames' bytes (no preamble, no FCS)."""
    fps = rate(delivered, seconds)
    return {"fps": fps, "mbps": fps * size * 8 / 1e6}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank, as most latency tools report it (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def percentiles(rtts: Sequence[float]) -> dict:
    """p50/p90/p99 (and min, mean, max) in milliseconds of RTTs in seconds."""
    values = sorted(rtts)
    if not values:
        return {k: None for k in ("p50_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "max_ms")}
    ms = 1000.0
    return {"p50_ms": percentile(values, 50) * ms, "p90_ms": percentile(values, 90) * ms,
            "p99_ms": percentile(values, 99) * ms, "min_ms": values[0] * ms,
            "mean_ms": sum(values) / len(values) * ms, "max_ms": values[-1] * ms}


def conservation(sent: int, delivered: int, drops: Mapping[str, Mapping[str, int]]) -> dict:
    """Every frame sent is delivered or counted under a named drop reason at
    one point of the path: ``unaccounted`` is what is neither (0 when the
    books balance; negative: more arrived than was sent)."""
    dropped = sum(n for reasons in drops.values() for n in reasons.values())
    return {"dropped": dropped, "drops": {k: dict(v) for k, v in drops.items() if v},
            "unaccounted": sent - delivered - dropped}


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """Counter differences, without the zeros."""
    out = {}
    for key, value in after.items():
        d = value - before.get(key, 0)
        if d:
            out[key] = d
    return out


Schedstat = Mapping[int, tuple[int, int]]     # thread id -> (ns on a CPU, ns runnable and waiting for one)


def time_used(before: Mapping[str, Schedstat], after: Mapping[str, Schedstat]) -> dict[str, tuple[int, int]]:
    """Each process's nanoseconds on a CPU and runnable waiting for one,
    from its threads' /proc schedstat before and after. A thread that
    started in between counts from zero; one that ended is left out (what
    it used is gone with it)."""
    out = {}
    for name, threads in after.items():
        old = before.get(name, {})
        run = wait = 0
        for tid, (r, w) in threads.items():
            r0, w0 = old.get(tid, (0, 0))
            run += max(0, r - r0)
            wait += max(0, w - w0)
        out[name] = (run, wait)
    return out


def per_unit(used: Mapping[str, tuple[int, int]], units: int) -> dict[str, dict[str, float]]:
    """Each process's CPU time and its time waiting for a CPU (``time_used``)
    per unit of work, in microseconds."""
    return {name: {"cpu_us": run / units / 1000 if units else 0.0,
                   "wait_us": wait / units / 1000 if units else 0.0}
            for name, (run, wait) in used.items()}


def cpu_percent(used: Mapping[str, tuple[int, int]], seconds: float) -> dict[str, float]:
    """Each process's CPU (``time_used``) as a share of one core over ``seconds``."""
    return {name: round(100.0 * run / 1e9 / seconds, 1) if seconds > 0 else 0.0
            for name, (run, _wait) in used.items()}


def cpu_sum(per_unit: Mapping[str, Mapping[str, float]]) -> float:
    """The processes' CPU time per unit, summed (``per_unit``)."""
    return sum(p["cpu_us"] for p in per_unit.values())


def cpu_bound(per_unit: Mapping[str, Mapping[str, float]], cpus: int) -> float | None:
    """The most units a second that ``cpus`` CPUs allow when every unit
    costs the processes' summed CPU time (``per_unit``), however well
    they overlap: a bound that only less CPU per unit raises."""
    total = cpu_sum(per_unit)
    return cpus * 1e6 / total if total > 0 else None
