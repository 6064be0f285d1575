"""ShadowPaging: the guest's view through its shadows is the one its own
tables give through the P2M; every write to a shadowed table traps and is
emulated; guest faults are injected; the pool runs out and recovers; the
balloon's P2M changes leave nothing naming the old frame.

The MMU here is a minimal walk of the shadow tables written for these tests
(the domain's real MMU is domain/mmu.py): it faults where an entry is not
present or refuses the access, hands the fault to ``page_fault`` and
retries on "fixed", a bounded number of times (a livelock fails the test).
"""
from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from paging_frames import Frames, pool_of
from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.hypervisor.shadow import ShadowPaging
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    PFEC_PRESENT, PFEC_USER, PFEC_WRITE, PTE_ACCESSED, PTE_DIRTY, PTE_NX, PTE_PRESENT, PTE_PSE,
    PTE_RW, PTE_USER, pte, pte_frame, va_index,
)

POOL = 0x9000
P, RW, U, A, D = PTE_PRESENT, PTE_RW, PTE_USER, PTE_ACCESSED, PTE_DIRTY
# The guest's pages: gfn -> mfn, shuffled so a gfn is never its mfn.
GUEST_PAGES = 24
UNPOPULATED = (GUEST_PAGES, GUEST_PAGES + 1)


class Guest:
    """A guest's frames, its P2M, and a shadow-mode domain over them."""

    def __init__(self, pool_frames: int = 64, pages: int = GUEST_PAGES):
        self.frames = Frames()
        self.p2m = {gfn: 0x3000 + (gfn * 7) % pages for gfn in range(pages)}
        self.frames.add(self.p2m.values())
        self.pool: PagingPool = pool_of(self.frames, POOL, pool_frames)
        self.sp = ShadowPaging(1, self.pool, self.p2m.get, self.frame_of)
        self.flushes = 0

    def frame_of(self, gfn: int) -> memoryview:
        return self.frames[self.p2m[gfn]]

    def set_entry(self, table_gfn: int, index: int, val: int) -> None:
        """The guest writing a table it has not shadowed (or before paging is on)."""
        struct.pack_into("<Q", self.frame_of(table_gfn), index * 8, val)

    def entry(self, table_gfn: int, index: int) -> int:
        return struct.unpack_from("<Q", self.frame_of(table_gfn), index * 8)[0]

    # -- the guest's view, by hand ----------------------------------------------------
    def hand_walk(self, va: int, write: bool, user: bool):
        """("fault",) | ("unpopulated",) | ("ok", gfn): the guest's own tables, through the P2M."""
        table = self.sp.cr3
        for level in (4, 3, 2, 1):
            if table not in self.p2m:
                return ("fault",)
            e = self.entry(table, va_index(va, level))
            if not e & P or (level > 1 and e & PTE_PSE):
                return ("fault",)
            if (write and not e & RW) or (user and not e & U):
                return ("fault",)
            table = pte_frame(e)
        return ("ok", table) if table in self.p2m else ("unpopulated",)

    # -- the view through the shadows -------------------------------------------------
    def shadow_walk(self, va: int, write: bool, user: bool):
        """(mfn, None) if the shadows allow the access, else (None, #PF error code)."""
        table = self.sp.root
        for level in (4, 3, 2, 1):
            e = struct.unpack_from("<Q", self.frames[table], va_index(va, level) * 8)[0]
            code = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0)
            if not e & P:
                return None, code
            if (write and not e & RW) or (user and not e & U):
                return None, code | PFEC_PRESENT
            # The pool is read-only to the MMU: it must never need to set A or D.
            assert e & A and (level > 1 or not write or e & D), f"L{level} entry {e:#x} lacks A/D"
            table = pte_frame(e)
        return table, None

    def access(self, va: int, write: bool = False, user: bool = False,
               value: bytes | None = None):
        """("ok", mfn) | ("inject",) | ("emulated",), as the guest would see it."""
        for _ in range(6):
            mfn, code = self.shadow_walk(va, write, user)
            if mfn is not None:
                return ("ok", mfn)
            answer = self.sp.page_fault(va, code, value if write else None)
            if self.sp.take_tlb_flush():
                self.flushes += 1
            if answer != "fixed":
                return (answer,)
        raise AssertionError(f"va {va:#x}: 'fixed' but the shadows still fault (a livelock)")


def va_of(i4: int, i3: int, i2: int, i1: int, offset: int = 0) -> int:
    return (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12) | offset


def build(guest: Guest, entries) -> None:
    for table, index, target, flags in entries:
        guest.set_entry(table, index, pte(target, flags))


def chain(guest: Guest, l4: int, l3: int, l2: int, l1: int, i=(0, 0, 0), flags=P | RW | U | A):
    """Guest tables l4 -> l3 -> l2 -> l1 along indexes ``i`` (L4, L3, L2)."""
    build(guest, [(l4, i[0], l3, flags), (l3, i[1], l2, flags), (l2, i[2], l1, flags)])


# -- the property: the view through the shadows is the guest's own ---------------------
TABLES = 12                                    # gfns 0..11 hold the tables the walks use
GFN = st.integers(0, GUEST_PAGES + 1)          # a few unpopulated ones too
LIKELY = st.integers(0, 7).map(lambda n: n != 7)   # hypothesis favours 0: make it True
FLAGS = st.builds(lambda p, rw, u, a, d, nx, pse: (P if p else 0) | (RW if rw else 0)
                  | (U if u else 0) | (A if a else 0) | (D if d else 0) | (PTE_NX if nx else 0)
                  | (PTE_PSE if pse else 0),
                  st.integers(0, 19).map(lambda n: n != 19), LIKELY, LIKELY,
                  st.booleans(), st.booleans(), st.booleans(),
                  st.integers(0, 29).map(lambda n: n == 29))
IDX = st.integers(0, 2)
# Entries 0..2 of every table gfn: most walks reach a leaf, through shared
# tables, tables that are also data and tables mapping themselves.
TARGET = st.tuples(st.integers(0, 9), st.integers(0, TABLES - 1), GFN).map(
    lambda t: t[2] if t[0] == 9 else t[1])
ENTRIES = st.lists(st.tuples(TARGET, FLAGS),
                   min_size=TABLES * 3, max_size=TABLES * 3)
VA = st.builds(va_of, IDX, IDX, IDX, IDX)
# What a write writes: a well-formed entry or eight random bytes.
VALUE = st.builds(lambda gfn, flags: struct.pack("<Q", pte(gfn, flags)), GFN, FLAGS) \
    | st.binary(min_size=8, max_size=8)
ACCESS = st.tuples(VA, st.booleans(), st.integers(0, 3).map(lambda n: n == 3), VALUE, IDX)


def table_entries(entries):
    return [(i // 3, i % 3, target, flags) for i, (target, flags) in enumerate(entries)]


def check_access(guest: Guest, va: int, write: bool, user: bool, value: bytes) -> None:
    want = guest.hand_walk(va, write, user)
    if want == ("unpopulated",):
        with pytest.raises(MemoryError_) as exc:
            guest.access(va, write, user, value)
        assert exc.value.errno == errno.EFAULT
        return
    got = guest.access(va, write, user, value)
    if want == ("fault",):
        assert got == ("inject",)
        return
    gfn = want[1]
    if got == ("emulated",):
        # Only a write to a frame shadowed as a page table is emulated, and it landed.
        assert write and guest.sp.is_shadowed(gfn)
        assert bytes(guest.frame_of(gfn)[va & 0xFFF:(va & 0xFFF) + 8]) == value
    else:
        assert got == ("ok", guest.p2m[gfn])
        # The invariant that makes every table write trap: never writable while shadowed.
        assert not (write and guest.sp.is_shadowed(gfn))


@settings(max_examples=150, deadline=None)
@given(entries=ENTRIES, accesses=st.lists(ACCESS, min_size=1, max_size=40),
       pool_frames=st.sampled_from([4, 6, 64]))
def test_the_view_through_the_shadows_is_the_guests_own(entries, accesses, pool_frames):
    guest = Guest(pool_frames)
    build(guest, table_entries(entries))
    guest.sp.set_cr3(0)
    for va, write, user, value, word in accesses:
        check_access(guest, va + word * 8, write, user, value)
        assert guest.sp.audit() == []
        assert guest.pool.used <= guest.pool.size
    # Whatever the faults did, a second pass over the same addresses agrees too.
    for va, write, user, value, word in accesses:
        check_access(guest, va + word * 8, False, user, value)
    assert guest.sp.audit() == []


# -- faults ----------------------------------------------------------------------------
def test_a_guest_fault_is_injected_not_fixed():
    guest = Guest()
    chain(guest, 0, 1, 2, 3)
    guest.set_entry(3, 0, pte(10, P | U | A))               # read-only in the guest's tables
    guest.sp.set_cr3(0)
    assert guest.access(va_of(0, 0, 0, 1)) == ("inject",)  # not present at L1
    assert guest.access(va_of(1, 0, 0, 0)) == ("inject",)  # not present at L4
    assert guest.access(va_of(0, 0, 0, 0), write=True) == ("inject",)
    assert guest.sp.counters["injected"] == 3
    assert guest.sp.counters["fills"] == 0 or guest.shadow_walk(va_of(0, 0, 0, 1), False, False)[0] is None
    assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[10])


def test_a_fill_sets_the_guests_accessed_and_dirty_bits_and_is_counted():
    guest = Guest()
    chain(guest, 0, 1, 2, 3, flags=P | RW)                  # no A anywhere yet
    guest.set_entry(3, 0, pte(10, P | RW))
    guest.sp.set_cr3(0)
    assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[10])
    assert all(guest.entry(t, 0) & A for t in (0, 1, 2, 3))
    assert not guest.entry(3, 0) & D
    # Read-only in the shadow until the guest's entry is dirty: the write traps once.
    traps = guest.sp.counters["traps"]
    assert guest.access(va_of(0, 0, 0, 0), write=True) == ("ok", guest.p2m[10])
    assert guest.entry(3, 0) & D
    assert guest.sp.counters["traps"] == traps + 1
    assert guest.sp.counters["fills"] == guest.sp.counters["traps"]
    assert guest.sp.counters["shadow_pages"] == 4 == guest.pool.used


def test_shadows_fill_one_guest_table_at_a_time():
    guest = Guest()
    chain(guest, 0, 1, 2, 3)
    build(guest, [(2, 1, 4, P | RW | A)])                   # a second L1 under the same L2
    for i in range(3):
        guest.set_entry(3, i, pte(10 + i, P | RW | A | D))
        guest.set_entry(4, i, pte(13 + i, P | RW | A | D))
    guest.sp.set_cr3(0)
    guest.access(va_of(0, 0, 0, 0))
    # The whole of L1 gfn 3 is shadowed at once: its neighbours need no fault...
    traps = guest.sp.counters["traps"]
    assert guest.access(va_of(0, 0, 0, 2)) == ("ok", guest.p2m[12])
    assert guest.sp.counters["traps"] == traps
    # ...but the other L1 is not shadowed until something under it is touched.
    assert not guest.sp.is_shadowed(4)
    assert guest.access(va_of(0, 0, 1, 1)) == ("ok", guest.p2m[14])
    assert guest.sp.is_shadowed(4) and guest.sp.counters["shadows_made"] == 5


# -- writes to the guest's own tables --------------------------------------------------
def direct_mapped(guest: Guest):
    """L4 0 -> L3 1 -> L2 2 -> L1 3, whose entry i maps gfn i: the guest's tables
    are reachable through its own address space, as a kernel's direct map."""
    chain(guest, 0, 1, 2, 3)
    for gfn in range(12):
        guest.set_entry(3, gfn, pte(gfn, P | RW | A | D))
    guest.sp.set_cr3(0)


def test_every_write_to_a_shadowed_table_traps_and_is_emulated():
    guest = Guest()
    direct_mapped(guest)
    guest.set_entry(3, 20, pte(9, P | RW | A | D))
    assert guest.access(va_of(0, 0, 0, 20)) == ("ok", guest.p2m[9])
    # The L1 (gfn 3) is mapped at va_of(0,0,0,3): read-only in the shadow.
    assert guest.access(va_of(0, 0, 0, 3)) == ("ok", guest.p2m[3])
    # Repoint entry 20 (at byte 160 of the L1) from gfn 9 to gfn 10, through the MMU.
    new = struct.pack("<Q", pte(10, P | RW | A | D))
    assert guest.access(va_of(0, 0, 0, 3, 20 * 8), write=True, value=new) == ("emulated",)
    assert guest.entry(3, 20) == pte(10, P | RW | A | D)
    assert guest.sp.counters["emulated_writes"] == 1
    assert guest.sp.audit() == []
    # The shadow agrees at once: no fault, the new frame.
    traps = guest.sp.counters["traps"]
    assert guest.access(va_of(0, 0, 0, 20)) == ("ok", guest.p2m[10])
    assert guest.sp.counters["traps"] == traps
    # Every table on the path is protected the same way, each write trapping.
    for table in (0, 1, 2, 3):
        before = guest.sp.counters["emulated_writes"]
        value = struct.pack("<Q", guest.entry(table, 5))
        assert guest.access(va_of(0, 0, 0, table, 5 * 8), write=True, value=value) == ("emulated",)
        assert guest.sp.counters["emulated_writes"] == before + 1


def test_an_emulated_write_unmapping_a_table_frees_its_shadow():
    guest = Guest()
    direct_mapped(guest)
    build(guest, [(2, 1, 4, P | RW | A)])
    guest.set_entry(4, 0, pte(11, P | RW | A | D))
    assert guest.access(va_of(0, 0, 1, 0)) == ("ok", guest.p2m[11])
    assert guest.sp.is_shadowed(4)
    assert guest.access(va_of(0, 0, 0, 2)) == ("ok", guest.p2m[2])     # the L2, direct-mapped
    used = guest.pool.used
    zero = bytes(8)
    assert guest.access(va_of(0, 0, 0, 2, 1 * 8), write=True, value=zero) == ("emulated",)
    assert not guest.sp.is_shadowed(4) and guest.pool.used == used - 1
    assert guest.access(va_of(0, 0, 1, 0)) == ("inject",)
    assert guest.sp.audit() == []


def test_a_frame_becoming_a_table_loses_its_writable_mappings():
    guest = Guest()
    direct_mapped(guest)
    assert guest.access(va_of(0, 0, 0, 5), write=True) == ("ok", guest.p2m[5])
    flushes = guest.flushes
    # The guest makes gfn 5 an L1 (writing it while it is still a data page)...
    assert guest.access(va_of(0, 0, 0, 5, 0), write=True) == ("ok", guest.p2m[5])
    guest.set_entry(5, 0, pte(7, P | RW | A | D))
    # ...and links it under L2 index 1 with an emulated write to the L2 (gfn 2).
    link = struct.pack("<Q", pte(5, P | RW | A))
    assert guest.access(va_of(0, 0, 0, 2, 8), write=True, value=link) == ("emulated",)
    assert guest.access(va_of(0, 0, 1, 0)) == ("ok", guest.p2m[7])   # shadows gfn 5
    assert guest.sp.is_shadowed(5)
    # Its old writable mapping is read-only now, and the guest's TLB must be flushed.
    assert guest.flushes == flushes + 1
    mfn, code = guest.shadow_walk(va_of(0, 0, 0, 5), write=True, user=False)
    assert mfn is None and code & PFEC_PRESENT
    value = struct.pack("<Q", pte(8, P | RW | A | D))
    assert guest.access(va_of(0, 0, 0, 5), write=True, value=value) == ("emulated",)
    assert guest.access(va_of(0, 0, 1, 0)) == ("ok", guest.p2m[8])


def test_a_write_to_a_table_without_its_bytes_is_einval():
    guest = Guest()
    direct_mapped(guest)
    with pytest.raises(MemoryError_) as exc:
        guest.sp.page_fault(va_of(0, 0, 0, 3), PFEC_WRITE | PFEC_PRESENT, None)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(MemoryError_):
        guest.sp.page_fault(va_of(0, 0, 0, 3, 4092), PFEC_WRITE | PFEC_PRESENT, bytes(8))
    assert guest.sp.audit() == []


# -- the pool --------------------------------------------------------------------------
def wide_guest(pool_frames: int) -> Guest:
    """Eight L1 tables under one L2: touching them all needs 11 shadows."""
    guest = Guest(pool_frames, pages=40)
    chain(guest, 0, 1, 2, 3)
    for i in range(8):
        guest.set_entry(2, i, pte(3 + i, P | RW | A))
        guest.set_entry(3 + i, 0, pte(20 + i, P | RW | A | D))
    guest.sp.set_cr3(0)
    return guest


def test_the_pool_runs_out_and_blow_tables_recovers_the_same_translations():
    big, small = wide_guest(64), wide_guest(5)
    vas = [va_of(0, 0, i, 0) for i in range(8)]
    want = [big.access(va) for va in vas]
    assert big.sp.counters["blow_tables"] == 0
    for _ in range(3):
        assert [small.access(va) for va in vas] == want
        assert small.sp.audit() == []
    assert small.sp.counters["blow_tables"] > 0
    assert small.pool.used <= 5
    assert small.flushes > 0          # a blow asks for the guest's TLB to be flushed


def test_blow_tables_keeps_the_current_root_and_refills_lazily():
    guest = wide_guest(64)
    root = guest.sp.root
    for i in range(8):
        guest.access(va_of(0, 0, i, 0))
    guest.sp.blow_tables()
    assert guest.pool.used == 1 and guest.sp.root == root
    assert guest.sp.audit() == []
    assert guest.access(va_of(0, 0, 5, 0)) == ("ok", guest.p2m[25])
    assert guest.pool.used == 4


def test_old_address_spaces_are_unpinned_before_tables_are_blown():
    guest = Guest(pool_frames=6)
    for l4 in (0, 4):                  # two address spaces sharing L3 1
        chain(guest, l4, 1, 2, 3)
    guest.set_entry(3, 0, pte(10, P | RW | A | D))
    chain(guest, 5, 6, 7, 8)
    guest.set_entry(8, 0, pte(11, P | RW | A | D))
    for cr3, gfn in ((0, 10), (4, 10), (5, 11)):
        guest.sp.set_cr3(cr3)
        assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[gfn])
        assert guest.sp.audit() == []
    assert guest.sp.counters["unpins"] >= 1 and guest.sp.counters["blow_tables"] == 0
    guest.sp.set_cr3(0)
    assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[10])


def test_switching_back_to_a_pinned_address_space_costs_no_fault():
    guest = Guest()
    chain(guest, 0, 1, 2, 3)
    chain(guest, 4, 5, 6, 7)
    guest.set_entry(3, 0, pte(10, P | RW | A | D))
    guest.set_entry(7, 0, pte(11, P | RW | A | D))
    first = guest.sp.set_cr3(0)
    guest.access(va_of(0, 0, 0, 0))
    guest.sp.set_cr3(4)
    guest.access(va_of(0, 0, 0, 0))
    traps = guest.sp.counters["traps"]
    assert guest.sp.set_cr3(0) == first
    assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[10])
    assert guest.sp.counters["traps"] == traps


def test_a_dying_address_space_frees_its_shadows_and_its_frames_are_plain_again():
    guest = Guest()
    chain(guest, 0, 1, 2, 3)                 # the kernel's space, sharing nothing
    chain(guest, 4, 5, 6, 7)                 # a process's space, which exits
    guest.set_entry(3, 0, pte(10, P | RW | A | D))
    guest.set_entry(7, 0, pte(11, P | RW | A | D))
    guest.sp.set_cr3(4)
    guest.access(va_of(0, 0, 0, 0))
    guest.sp.set_cr3(0)
    guest.access(va_of(0, 0, 0, 0))
    assert guest.pool.used == 8
    guest.sp.pagetable_dying(4)
    assert guest.pool.used == 4 and guest.sp.audit() == []
    assert not any(guest.sp.is_shadowed(g) for g in (4, 5, 6, 7))
    # Reused for a new space written directly, then loaded: no stale shadow answers.
    guest.set_entry(7, 0, pte(12, P | RW | A | D))
    guest.sp.set_cr3(4)
    assert guest.access(va_of(0, 0, 0, 0)) == ("ok", guest.p2m[12])
    assert guest.sp.audit() == []


def test_teardown_returns_every_frame():
    guest = wide_guest(64)
    for i in range(8):
        guest.access(va_of(0, 0, i, 0))
    guest.sp.teardown()
    assert guest.pool.used == 0 and guest.sp.root is None


# -- the balloon -----------------------------------------------------------------------
def mfns_named(guest: Guest) -> set[int]:
    named = set()
    for mfn in guest.pool.mfns:
        if guest.pool.in_use(mfn):
            named |= {pte_frame(e) for e in struct.unpack("<512Q", guest.frames[mfn]) if e & P}
    return named


def test_p2m_changed_makes_the_old_frame_unreachable():
    guest = Guest()
    direct_mapped(guest)
    for gfn in range(12):
        guest.access(va_of(0, 0, 0, gfn))
    old = guest.p2m[9]
    assert old in mfns_named(guest)
    # The balloon gives gfn 9's frame back and repopulates it with another one.
    guest.p2m[9] = 0x7777
    guest.frames.add([0x7777])
    guest.sp.take_tlb_flush()
    guest.sp.p2m_changed(9)
    assert old not in mfns_named(guest)
    assert guest.sp.take_tlb_flush()
    assert guest.access(va_of(0, 0, 0, 9)) == ("ok", 0x7777)
    assert guest.sp.audit() == []
    # Ballooned out and not back: a guest touching it is told so, not given a frame.
    del guest.p2m[9]
    guest.sp.p2m_changed(9)
    with pytest.raises(MemoryError_) as exc:
        guest.access(va_of(0, 0, 0, 9))
    assert exc.value.errno == errno.EFAULT


def test_p2m_changed_of_a_table_drops_its_shadows():
    guest = Guest()
    direct_mapped(guest)
    guest.access(va_of(0, 0, 0, 4))
    assert guest.sp.is_shadowed(3)
    old = guest.p2m[3]
    guest.p2m[3] = 0x7778                    # a zeroed frame: every entry gone
    guest.frames.add([0x7778])
    guest.sp.p2m_changed(3)
    assert not guest.sp.is_shadowed(3) and old not in mfns_named(guest)
    assert guest.access(va_of(0, 0, 0, 4)) == ("inject",)
    assert guest.sp.audit() == []


# -- bad input -------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    guest = Guest()
    with pytest.raises(MemoryError_, match="before any CR3"):
        guest.sp.page_fault(0, 0)
    with pytest.raises(MemoryError_) as exc:
        guest.sp.set_cr3(UNPOPULATED[0])
    assert exc.value.errno == errno.EINVAL
    guest.sp.set_cr3(0)
    with pytest.raises(MemoryError_, match="non-canonical"):
        guest.sp.page_fault(1 << 47, 0)
    with pytest.raises(MemoryError_) as exc:
        ShadowPaging(1, pool_of(Frames(), POOL, 3), {}.get, Frames().view)
    assert exc.value.errno == errno.EINVAL


# -- the same, with everything else a domain does in between ---------------------------
class ShadowedDomain(RuleBasedStateMachine):
    """Random accesses (reads, writes that may land in tables), address-space
    switches, the balloon moving frames, dying address spaces and blown tables,
    on a small pool: after every step the shadows agree with the guest's tables
    (audit) and every access sees what the guest's own tables say."""

    @initialize(entries=ENTRIES, pool_frames=st.sampled_from([4, 7, 64]))
    def boot(self, entries, pool_frames):
        self.guest = Guest(pool_frames)
        build(self.guest, table_entries(entries))
        self.guest.sp.set_cr3(0)
        self.next_mfn = 0x5000

    @rule(access=ACCESS)
    def access(self, access):
        va, write, user, value, word = access
        check_access(self.guest, va + word * 8, write, user, value)

    @rule(gfn=st.sampled_from([0, 4, 8]))
    def switch_address_space(self, gfn):
        assume(gfn in self.guest.p2m)
        self.guest.sp.set_cr3(gfn)

    @rule(gfn=st.integers(0, GUEST_PAGES - 1), back=st.booleans())
    def balloon(self, gfn, back):
        """The frame behind ``gfn`` goes; with ``back`` a scrubbed other one replaces it."""
        assume(gfn != self.guest.sp.cr3)
        if back:
            self.guest.p2m[gfn] = self.next_mfn
            self.guest.frames.add([self.next_mfn])
            self.next_mfn += 1
        else:
            self.guest.p2m.pop(gfn, None)
        self.guest.sp.p2m_changed(gfn)

    @rule(gfn=st.sampled_from([0, 4, 8]))
    def pagetable_dying(self, gfn):
        self.guest.sp.pagetable_dying(gfn)

    @rule()
    def blow_tables(self):
        self.guest.sp.blow_tables()

    @invariant()
    def shadows_agree(self):
        if hasattr(self, "guest"):
            assert self.guest.sp.audit() == []
            assert self.guest.pool.used <= self.guest.pool.size


TestShadowedDomain = ShadowedDomain.TestCase
TestShadowedDomain.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
