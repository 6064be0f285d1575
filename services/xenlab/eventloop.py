"""The event loop of the lab's long-running processes (hypervisor, bridge,
Domain-0, domains): uvloop when it is installed, asyncio's own otherwise.

Every frame crosses several processes, and each crossing is a wake-up of
an event loop and a few socket calls; uvloop (libuv) makes those cheaper
than the pure-Python selector loop, which is most of the ping RTT. Nothing
depends on it: without it, or where it cannot be imported, the standard
loop runs the same code.

The services that hold a table per frame or per domain (the hypervisor's
page_info of every frame, Domain-0's of its own) keep hundreds of thousands
of objects the cyclic garbage collector tracks, and CPython 3.11 scans all
of them in each full collection it starts on its own (one each time the
oldest generation grows by a quarter): 50 ms a scan in a lab of 64 domUs,
ten of them while it boots. Such a service runs its full collections on
its loop instead (``full_collections``), at most once an interval and only
when younger collections moved something into the oldest generation since
the last one; the younger generations collect as always.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Coroutine, TypeVar

from xenlab.osutil import batch_scheduling

T = TypeVar("T")
log = logging.getLogger(__name__)

FULL_COLLECTION_INTERVAL = 20.0     # seconds between full collections, at most
_NEVER = 1 << 30                    # gc's third threshold: no full collection of its own


def run(main: Coroutine[object, object, T], full_gc_interval: float | None = None) -> T:
    """asyncio.run(main) on the fastest loop available, the process
    scheduled as SCHED_BATCH (xenlab.osutil.batch_scheduling).
    ``full_gc_interval``: run full collections on the loop (``full_collections``)."""
    batch_scheduling()
    if full_gc_interval is not None:
        main = _with_full_collections(main, full_gc_interval)
    try:
        import uvloop  # lazy: optional, uvloop when installed
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _with_full_collections(main: Coroutine[object, object, T], interval: float) -> T:
    collector = asyncio.create_task(full_collections(interval), name="full-collections")
    try:
        return await main
    finally:
        collector.cancel()


async def full_collections(interval: float = FULL_COLLECTION_INTERVAL) -> None:
    """Take full collections off the allocator's path: generation 2 is
    collected here, every ``interval`` seconds if a younger collection
    promoted anything since the last one (nothing to do in an idle
    service), and never by CPython on its own. Cyclic garbage that reached
    the oldest generation waits at most ``interval`` for it. The
    thresholds are put back when the task ends."""
    if interval <= 0:
        raise ValueError(f"the full-collection interval must be positive, not {interval}")
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _NEVER)
    try:
        while True:
            await asyncio.sleep(interval)
            if gc.isenabled() and gc.get_count()[2]:
                started = time.perf_counter()
                found = gc.collect(2)
                log.debug("full collection: %d unreachable, %.1f ms", found,
                          1000 * (time.perf_counter() - started))
    finally:
        gc.set_threshold(*thresholds)
