"""NestedP2M: the EPT-format P2M agrees with a dict model after random
set/clear, its tables are what an EPT walk reads, and emptied tables go back
to the pool."""
from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from paging_frames import Frames, pool_of
from xenlab.hypervisor.hap import NestedP2M
from xenlab.hypervisor.paging_pool import PoolExhausted
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    EPT_EXEC, EPT_MT_WB, EPT_READ, EPT_RWX, EPT_WRITE, PTE_ADDR_MASK, ept_present, va_index,
)

POOL = 0x1000


def ept_walk(frames: Frames, root: int, gfn: int) -> int | None:
    """An EPT walk by hand, as the SDM describes it (not the class's own walk)."""
    table = root
    for level in (4, 3, 2, 1):
        index = va_index(gfn << 12, level)
        (entry,) = struct.unpack_from("<Q", frames[table], index * 8)
        if not ept_present(entry):
            return None
        if level > 1:
            assert entry & EPT_RWX == EPT_RWX, "a middle entry grants everything"
        table = (entry & PTE_ADDR_MASK) >> 12
    return table


def test_set_lookup_clear_roundtrip_through_the_tables():
    frames = Frames()
    pool = pool_of(frames, POOL, 16)
    p2m = NestedP2M(pool)
    p2m.set(0x12345, 0x777)
    assert p2m.lookup(0x12345) == 0x777
    assert ept_walk(frames, p2m.root, 0x12345) == 0x777
    assert p2m.get_entry(0x12345) == (0x777, EPT_RWX)
    assert p2m.counters["table_pages"] == 4 == pool.used
    p2m.clear(0x12345)
    assert p2m.lookup(0x12345) is None
    assert ept_walk(frames, p2m.root, 0x12345) is None
    # Only the root is left: the three emptied middle tables went back.
    assert p2m.counters["table_pages"] == 1 == pool.used


def test_leaf_carries_the_rights_and_write_back_type():
    frames = Frames()
    p2m = NestedP2M(pool_of(frames, POOL, 8))
    p2m.set(5, 9, EPT_READ | EPT_EXEC)
    (entry,) = struct.unpack_from("<Q", frames[_leaf_table(frames, p2m.root, 5)], 5 * 8)
    assert entry == (9 << 12) | EPT_READ | EPT_EXEC | EPT_MT_WB
    assert p2m.get_entry(5) == (9, EPT_READ | EPT_EXEC)


def _leaf_table(frames, root, gfn):
    table = root
    for level in (4, 3, 2):
        (entry,) = struct.unpack_from("<Q", frames[table], va_index(gfn << 12, level) * 8)
        table = (entry & PTE_ADDR_MASK) >> 12
    return table


@pytest.mark.parametrize("gfn, mfn, perms", [
    (-1, 1, EPT_RWX), (1 << 36, 1, EPT_RWX), (1, 1 << 40, EPT_RWX), (1, -1, EPT_RWX),
    (1, 1, 0), (1, 1, EPT_WRITE), (1, 1, 1 << 5),
])
def test_bad_arguments_are_einval_and_change_nothing(gfn, mfn, perms):
    frames = Frames()
    pool = pool_of(frames, POOL, 8)
    p2m = NestedP2M(pool)
    with pytest.raises(MemoryError_) as exc:
        p2m.set(gfn, mfn, perms)
    assert exc.value.errno == errno.EINVAL
    assert pool.used == 1 and p2m.counters["updates"] == 0


def test_exhausted_pool_is_enomem_and_leaves_no_empty_table():
    frames = Frames()
    pool = pool_of(frames, POOL, 3)          # root + two: one short of a path
    p2m = NestedP2M(pool)
    with pytest.raises(PoolExhausted) as exc:
        p2m.set(0, 1)
    assert exc.value.errno == errno.ENOMEM
    assert pool.used == 1 and p2m.lookup(0) is None


def test_removing_or_narrowing_a_mapping_asks_for_a_tlb_flush():
    p2m = NestedP2M(pool_of(Frames(), POOL, 8))
    p2m.set(1, 10)
    assert not p2m.take_tlb_flush()          # a new mapping: nothing cached to flush
    p2m.set(1, 10, EPT_READ)
    assert p2m.take_tlb_flush() and not p2m.take_tlb_flush()
    p2m.set(1, 11, EPT_READ)
    assert p2m.take_tlb_flush()
    p2m.clear(1)
    assert p2m.take_tlb_flush()


def test_teardown_returns_every_frame():
    pool = pool_of(Frames(), POOL, 32)
    p2m = NestedP2M(pool)
    for gfn in (0, 1 << 9, 1 << 18, 1 << 27):
        p2m.set(gfn, gfn + 1)
    assert pool.used > 4
    p2m.teardown()
    assert pool.used == 0


# gfns spread over every level's index, so tables are shared and emptied.
GFNS = st.builds(lambda a, b, c, d: (a << 27) | (b << 18) | (c << 9) | d,
                 st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 3))


class NestedP2MAgainstADict(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.frames = Frames()
        self.pool = pool_of(self.frames, POOL, 200)
        self.p2m = NestedP2M(self.pool)
        self.model: dict[int, tuple[int, int]] = {}

    @rule(gfn=GFNS, mfn=st.integers(0, (1 << 40) - 1),
          perms=st.sampled_from([EPT_RWX, EPT_READ, EPT_READ | EPT_WRITE, EPT_EXEC]))
    def set(self, gfn, mfn, perms):
        self.p2m.set(gfn, mfn, perms)
        self.model[gfn] = (mfn, perms)

    @rule(gfn=GFNS)
    def clear(self, gfn):
        self.p2m.clear(gfn)
        self.model.pop(gfn, None)

    @invariant()
    def lookup_agrees_with_the_model(self):
        for a in range(3):
            for b in range(3):
                for c in range(3):
                    for d in range(4):
                        gfn = (a << 27) | (b << 18) | (c << 9) | d
                        want = self.model.get(gfn)
                        assert self.p2m.get_entry(gfn) == want
                        assert ept_walk(self.frames, self.p2m.root, gfn) == (want and want[0])

    @invariant()
    def only_tables_in_use_are_held(self):
        # The tables a set of gfns needs: the root, and one L3/L2/L1 per distinct prefix.
        need = 1 + len({g >> 27 for g in self.model}) + len({g >> 18 for g in self.model}) \
            + len({g >> 9 for g in self.model})
        assert self.pool.used == need == self.p2m.counters["table_pages"]


TestNestedP2MAgainstADict = NestedP2MAgainstADict.TestCase
TestNestedP2MAgainstADict.settings = settings(max_examples=60, stateful_step_count=40,
                                              deadline=None)
