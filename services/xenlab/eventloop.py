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
oldest generation has grown by a quarter): 50 ms a scan in a lab of 64
domUs, ten of them while it boots. Such a service runs its full
collections on its loop instead (``full_collections``): by the same rule,
but looked at once an interval, so a lab that grows fast pays one scan an
interval rather than one per quarter of growth; the younger generations
collect as always.

For a count of the Python calls each process makes (``xenlab bench --only
calls``), ``XENLAB_CALL_STATS=DIR`` in a service's or a domain's
environment runs its loop under cProfile and writes what it counted so far
to ``DIR/PID-N.prof`` each time it gets SIGUSR1: the difference of two
snapshots is what the work between them cost, in calls, which does not move
with the host's speed as times do. Without it nothing is profiled and
SIGUSR1 keeps its default.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import time
from typing import Awaitable, Coroutine, TypeVar

from xenlab.osutil import batch_scheduling

T = TypeVar("T")
log = logging.getLogger(__name__)

FULL_COLLECTION_INTERVAL = 5.0      # seconds between looks at the oldest generation
CALL_STATS_ENV = "XENLAB_CALL_STATS"    # DIR: count calls, snapshot to DIR on SIGUSR1
CALL_STATS_SIGNAL = signal.SIGUSR1
_NEVER = 1 << 30                    # gc's third threshold: no full collection of its own


def run(main: Coroutine[object, object, T], full_gc_interval: float | None = None) -> T:
    """asyncio.run(main) on the fastest loop available, the process
    scheduled as SCHED_BATCH (xenlab.osutil.batch_scheduling).
    ``full_gc_interval``: run full collections on the loop (``full_collections``)."""
    batch_scheduling()
    if full_gc_interval is not None:
        main = _with_full_collections(main, full_gc_interval)
    if os.environ.get(CALL_STATS_ENV):
        main = _with_call_stats(main, os.environ[CALL_STATS_ENV])
    try:
        import uvloop  # lazy: optional, uvloop when installed
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``aw``, or TimeoutError after ``timeout`` seconds (None: no limit),
    as asyncio.wait_for, in the calling task. Use this, not
    asyncio.wait_for: 3.11's wait_for loses a cancellation of the calling
    task that comes as ``aw`` finishes (it hands back ``aw``'s result or
    raises its error instead; python/cpython#86296, fixed in 3.12 by making
    wait_for this). A task that is being cancelled then goes on, and
    whoever cancelled it and waits for it waits for ever: a kernel closing
    its devices while their domain is destroyed did."""
    async with asyncio.timeout(timeout):
        return await aw


async def _with_full_collections(main: Coroutine[object, object, T], interval: float) -> T:
    collector = asyncio.create_task(full_collections(interval), name="full-collections")
    try:
        return await main
    finally:
        collector.cancel()


async def _with_call_stats(main: Coroutine[object, object, T], directory: str) -> T:
    """``main`` under cProfile; its counts so far to DIR/PID-N.prof on each
    CALL_STATS_SIGNAL (written whole, then renamed into place)."""
    import cProfile  # lazy: only a count of calls (the bench) runs it

    profile = cProfile.Profile()
    taken = itertools.count()
    loop = asyncio.get_running_loop()

    def snapshot() -> None:
        path = os.path.join(directory, f"{os.getpid()}-{next(taken)}.prof")
        profile.disable()
        try:
            profile.dump_stats(path + ".part")
            os.replace(path + ".part", path)
        except OSError as err:
            log.warning("cannot write the call counts to %s: %s", path, err)
        finally:
            profile.enable()

    loop.add_signal_handler(CALL_STATS_SIGNAL, snapshot)
    profile.enable()
    try:
        return await main
    finally:
        profile.disable()
        loop.remove_signal_handler(CALL_STATS_SIGNAL)


async def full_collections(interval: float = FULL_COLLECTION_INTERVAL,
                           growth: float = 0.25) -> None:
    """Take full collections off the allocator's path. CPython never
    starts one of its own while this runs; here, every ``interval``
    seconds, if a younger collection promoted anything since the last look
    and the oldest generation has grown by ``growth`` since the last full
    collection (CPython's own rule, long_lived_pending > long_lived_total / 4),
    it is collected. An idle service looks at a counter and sleeps;
    cyclic garbage that reached the oldest generation waits at most one
    interval past the growth that would have collected it. The thresholds
    are put back when the task ends."""
    if interval <= 0:
        raise ValueError(f"the full-collection interval must be positive, not {interval}")
    if growth < 0:
        raise ValueError(f"the growth before a full collection cannot be negative, not {growth}")
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _NEVER)
    survivors = len(gc.get_objects(2))
    looked = 0          # promotions (gen-1 collections) counted at the last look
    try:
        while True:
            await asyncio.sleep(interval)
            promotions = gc.get_count()[2]
            if not gc.isenabled() or promotions in (0, looked):
                continue
            looked = promotions
            if len(gc.get_objects(2)) <= survivors * (1 + growth):
                continue
            started = time.perf_counter()
            found = gc.collect(2)
            survivors, looked = len(gc.get_objects(2)), 0
            log.debug("full collection: %d unreachable, %d survivors, %.1f ms", found, survivors,
                      1000 * (time.perf_counter() - started))
    finally:
        gc.set_threshold(*thresholds)
