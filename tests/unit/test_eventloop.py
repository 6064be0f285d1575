"""xenlab.eventloop.full_collections: the services' full garbage
collections run on their loop, at most once an interval, only when the
oldest generation has grown enough since the last one (CPython's own rule),
and CPython starts none."""
from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from xenlab import eventloop

pytestmark = pytest.mark.timeout(30)


class Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collections(monkeypatch):
    """Every gc.collect(generation) the task makes."""
    made: list[int] = []
    real = gc.collect

    def collect(generation: int = 2) -> int:
        made.append(generation)
        return real(generation)
    monkeypatch.setattr(gc, "collect", collect)
    return made


async def test_cpython_starts_no_full_collection_while_the_task_runs():
    before = gc.get_threshold()
    task = asyncio.create_task(eventloop.full_collections(60))
    await asyncio.sleep(0)
    assert gc.get_threshold()[:2] == before[:2]
    assert gc.get_threshold()[2] >= 1 << 30
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert gc.get_threshold() == before


async def promoted_garbage() -> weakref.ref:
    """A cycle in the oldest generation, unreachable: only a full collection frees it."""
    junk = Cyclic()
    gone = weakref.ref(junk)
    gc.collect(1)               # it survives the young generations: now it is old
    del junk
    gc.collect(1)
    assert gone() is not None
    return gone


async def test_cyclic_garbage_in_the_oldest_generation_is_collected_within_an_interval(collections):
    task = asyncio.create_task(eventloop.full_collections(0.05, growth=0.0))
    try:
        await asyncio.sleep(0)
        gone = await promoted_garbage()
        for _ in range(100):
            if gone() is None:
                break
            await asyncio.sleep(0.02)
        assert gone() is None
        assert 2 in collections
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_nothing_new_in_the_oldest_generation_means_no_collection(collections):
    before = gc.get_threshold()
    # no young collection (so nothing promoted) while the task looks, ten times
    gc.set_threshold(1 << 24, before[1], before[2])
    try:
        gc.collect()                # the oldest generation's count back to 0
        collections.clear()
        task = asyncio.create_task(eventloop.full_collections(0.02))
        await asyncio.sleep(0.2)
        assert gc.get_count()[2] == 0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        gc.set_threshold(*before)
    assert collections == []


async def test_less_growth_than_the_rule_asks_for_starts_no_collection(collections):
    task = asyncio.create_task(eventloop.full_collections(0.02, growth=100.0))
    try:
        await asyncio.sleep(0)
        gone = await promoted_garbage()
        collections.clear()
        await asyncio.sleep(0.2)    # ten looks
        assert collections == []
        assert gone() is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.collect()


@pytest.mark.parametrize("interval", [0, -1.0])
async def test_an_interval_that_is_not_positive_is_refused(interval):
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="must be positive"):
        await eventloop.full_collections(interval)
    assert gc.get_threshold() == before


async def test_a_negative_growth_is_refused():
    with pytest.raises(ValueError, match="cannot be negative"):
        await eventloop.full_collections(1.0, growth=-0.1)


def test_run_with_full_collections_returns_mains_result_and_puts_thresholds_back(monkeypatch):
    monkeypatch.setattr(eventloop, "batch_scheduling", lambda: None)   # not this test process
    before = gc.get_threshold()
    seen = []

    async def main() -> str:
        await asyncio.sleep(0)
        seen.append(gc.get_threshold()[2])
        return "done"
    assert eventloop.run(main(), full_gc_interval=30.0) == "done"
    assert seen and seen[0] >= 1 << 30
    assert gc.get_threshold() == before


def test_call_stats_snapshot_on_the_signal_and_let_it_go_at_the_end(tmp_path):
    """XENLAB_CALL_STATS: the loop's counts so far on each SIGUSR1, numbered;
    SIGUSR1 has its default back once the loop ends."""
    import os
    import pstats
    import signal

    def counted() -> int:
        return 7

    async def work() -> int:
        for _ in range(3):
            counted()
        os.kill(os.getpid(), eventloop.CALL_STATS_SIGNAL)
        first = tmp_path / f"{os.getpid()}-0.prof"
        while not first.exists():
            await asyncio.sleep(0.01)
        counted()
        os.kill(os.getpid(), eventloop.CALL_STATS_SIGNAL)
        while not (tmp_path / f"{os.getpid()}-1.prof").exists():
            await asyncio.sleep(0.01)
        return 1

    assert asyncio.run(eventloop._with_call_stats(work(), str(tmp_path))) == 1
    calls = []
    for n in (0, 1):
        stats = pstats.Stats(str(tmp_path / f"{os.getpid()}-{n}.prof")).stats
        calls.append({name: counts[1] for (_file, _line, name), counts in stats.items()})
    assert calls[0]["counted"] == 3 and calls[1]["counted"] == 4
    assert not list(tmp_path.glob("*.part"))
    assert signal.getsignal(eventloop.CALL_STATS_SIGNAL) in (signal.SIG_DFL, None)
