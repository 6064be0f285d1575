"""The emulated MMU against hand-built tables in a dict of frames: walks,
error codes, A/D bits, the TLB, and the two-dimensional walk of hap mode."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlab.domain.mmu import (
    MAXPHYADDR, GeneralProtection, MachineCheck, Mmu, NestedFault, PageFault, Tlb,
)
from xenlab.xen.paging import (
    EPT_EXEC, EPT_READ, EPT_RWX, EPT_WRITE, KERNEL_DIRECT_MAP, PFEC_INSN, PFEC_PRESENT, PFEC_RSVD, PFEC_USER,
    PFEC_WRITE, PTE_ACCESSED, PTE_DIRTY, PTE_NX, PTE_PRESENT, PTE_PSE, PTE_RW, PTE_USER,
    USER_BASE, WALK_REFS_1D, WALK_REFS_2D, pte, va_index,
)

TABLE = PTE_PRESENT | PTE_RW | PTE_USER
FRAME_MASK = (1 << (MAXPHYADDR - 12)) - 1
VA = USER_BASE + 0x1234_5000


class Frames(dict):
    """mfn -> a 4096-byte memoryview over a bytearray."""

    def __init__(self, n: int = 64):
        super().__init__((mfn, memoryview(bytearray(4096))) for mfn in range(n))
        self.next_free = 1

    def __call__(self, mfn: int) -> memoryview:
        return self[mfn]

    def alloc(self) -> int:
        mfn = self.next_free
        self.next_free += 1
        return mfn

    def get_entry(self, mfn: int, index: int) -> int:
        return struct.unpack_from("<Q", self[mfn], index * 8)[0]

    def set_entry(self, mfn: int, index: int, val: int) -> None:
        struct.pack_into("<Q", self[mfn], index * 8, val)


def build(frames: Frames, root: int, va: int, leaf_mfn: int,
          flags=(TABLE, TABLE, TABLE, TABLE)) -> list[tuple[int, int]]:
    """Map ``va`` -> ``leaf_mfn`` under ``root`` with per-level flags (L4..L1);
    returns each level's (table mfn, index)."""
    path = []
    table = root
    for level, f in zip((4, 3, 2, 1), flags):
        idx = va_index(va, level)
        path.append((table, idx))
        cur = frames.get_entry(table, idx)
        if level == 1:
            frames.set_entry(table, idx, (leaf_mfn << 12) | f)
        elif cur & PTE_PRESENT:
            table = (cur >> 12) & FRAME_MASK
            frames.set_entry(path[-1][0], idx, (table << 12) | f)
            continue
        else:
            nxt = frames.alloc()
            frames.set_entry(table, idx, (nxt << 12) | f)
            table = nxt
            continue
    return path


@pytest.fixture
def machine():
    frames = Frames()
    root = frames.alloc()
    mmu = Mmu("direct", frames)
    mmu.load_cr3(root)
    return frames, root, mmu


def test_translation_of_a_mapped_page_and_bytes_through_it(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    frames[40][0x10:0x15] = b"hello"
    assert mmu.translate(VA) == 40
    assert mmu.read(VA + 0x10, 5) == b"hello"
    mmu.write(VA + 0x20, b"world")
    assert bytes(frames[40][0x20:0x25]) == b"world"


def test_write_across_pages_needs_both_pages(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    with pytest.raises(PageFault) as exc:
        mmu.write(VA + 0xFFE, b"abcd")
    assert exc.value.va == VA + 0x1000 and exc.value.code == PFEC_WRITE


# -- error codes (SDM 4.7) -----------------------------------------------------------------
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_at_each_level(machine, level):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    table, idx = path[4 - level]
    frames.set_entry(table, idx, 0)
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, write=True, user=True)
    assert exc.value.code == PFEC_WRITE | PFEC_USER       # P=0: not present
    assert exc.value.level == level and exc.value.va == VA


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_supervisor_write_to_read_only_faults_at_any_level(machine, level):
    """CR0.WP: a supervisor write needs R/W at every level."""
    frames, root, mmu = machine
    flags = [TABLE] * 4
    flags[4 - level] = PTE_PRESENT | PTE_USER
    build(frames, root, VA, 40, flags)
    assert mmu.translate(VA) == 40                      # reads are fine
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, write=True)
    assert exc.value.code == PFEC_PRESENT | PFEC_WRITE
    assert exc.value.level == level


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_user_access_to_supervisor_page(machine, level):
    frames, root, mmu = machine
    flags = [TABLE] * 4
    flags[4 - level] = PTE_PRESENT | PTE_RW
    build(frames, root, VA, 40, flags)
    assert mmu.translate(VA, write=True) == 40          # supervisor may
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, user=True)
    assert exc.value.code == PFEC_PRESENT | PFEC_USER


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_nx_at_any_level_refuses_a_fetch_only(machine, level):
    frames, root, mmu = machine
    flags = [TABLE] * 4
    flags[4 - level] = TABLE | PTE_NX
    build(frames, root, VA, 40, flags)
    assert mmu.translate(VA, write=True, user=True) == 40
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, fetch=True, user=True)
    assert exc.value.code == PFEC_PRESENT | PFEC_INSN | PFEC_USER


def test_fetch_from_not_present_page_reports_the_fetch(machine):
    _frames, _root, mmu = machine
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, fetch=True)
    assert exc.value.code == PFEC_INSN and exc.value.level == 4


@pytest.mark.parametrize("level,bits", [
    (4, PTE_PSE), (3, PTE_PSE), (2, PTE_PSE),
    (4, 1 << MAXPHYADDR), (1, 1 << 51), (2, 1 << (MAXPHYADDR + 1)),
])
def test_reserved_bits_fault_with_rsvd(machine, level, bits):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    table, idx = path[4 - level]
    frames.set_entry(table, idx, frames.get_entry(table, idx) | bits)
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA)
    assert exc.value.code == PFEC_PRESENT | PFEC_RSVD and exc.value.level == level


def test_pat_bit_in_a_pte_is_not_reserved(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40, (TABLE, TABLE, TABLE, TABLE | PTE_PSE))
    assert mmu.translate(VA) == 40


def test_non_canonical_address_is_a_gp_not_a_pf(machine):
    _frames, _root, mmu = machine
    with pytest.raises(GeneralProtection):
        mmu.translate(0x0000_8000_0000_0000)


def test_a_table_frame_out_of_reach_is_a_machine_check(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    table, idx = path[1]
    frames.set_entry(table, idx, pte(10_000, TABLE))
    with pytest.raises(MachineCheck) as exc:
        mmu.translate(VA)
    assert exc.value.mfn == 10_000


def test_a_view_never_crosses_a_page(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    with pytest.raises(ValueError):
        mmu.view(VA + 4000, 200)
    assert len(mmu.view(VA + 4000, 96)) == 96


# -- Accessed and Dirty (SDM 4.8) ----------------------------------------------------------
def _ad(frames, path):
    return [frames.get_entry(t, i) & (PTE_ACCESSED | PTE_DIRTY) for t, i in path]


def test_read_sets_accessed_at_every_level_and_no_dirty(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    mmu.translate(VA)
    assert _ad(frames, path) == [PTE_ACCESSED] * 4


def test_write_sets_dirty_on_the_leaf_only(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    mmu.translate(VA, write=True)
    assert _ad(frames, path) == [PTE_ACCESSED] * 3 + [PTE_ACCESSED | PTE_DIRTY]


def test_write_after_read_hit_rewalks_to_set_dirty(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    mmu.translate(VA)
    misses = mmu.counters["tlb_misses"]
    mmu.translate(VA, write=True)
    assert mmu.counters["tlb_misses"] == misses + 1
    assert _ad(frames, path)[3] == PTE_ACCESSED | PTE_DIRTY
    mmu.translate(VA, write=True)                       # now a hit
    assert mmu.counters["tlb_misses"] == misses + 1


def test_protection_fault_sets_accessed_above_the_leaf_only(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40, (TABLE, TABLE, TABLE, PTE_PRESENT))
    with pytest.raises(PageFault):
        mmu.translate(VA, write=True)
    assert _ad(frames, path) == [PTE_ACCESSED] * 3 + [0]


def test_not_present_fault_sets_accessed_on_the_entries_used(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    frames.set_entry(*path[2], 0)
    with pytest.raises(PageFault):
        mmu.translate(VA)
    assert _ad(frames, path)[:2] == [PTE_ACCESSED] * 2


def test_read_only_tables_keep_their_bits(machine):
    """A shadow in the hypervisor's pool is mapped read-only to the domain:
    the walk succeeds and leaves it alone."""
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    ro = {mfn: view.toreadonly() for mfn, view in frames.items()}
    ro_mmu = Mmu("shadow", ro.__getitem__)
    ro_mmu.load_cr3(root)
    assert ro_mmu.translate(VA, write=True) == 40
    assert _ad(frames, path) == [0] * 4
    ro_mmu.translate(VA, write=True)
    assert ro_mmu.counters["tlb_hits"] == 1


# -- the TLB -------------------------------------------------------------------------------
def test_hit_after_miss_and_a_walk_costs_four_references(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    mmu.translate(VA)
    mmu.translate(VA + 8)
    c = mmu.counters
    assert (c["tlb_misses"], c["tlb_hits"], c["walk_refs"]) == (1, 1, WALK_REFS_1D)


def test_stale_entry_survives_a_pte_change_until_invlpg(machine):
    frames, root, mmu = machine
    path = build(frames, root, VA, 40)
    assert mmu.translate(VA) == 40
    frames.set_entry(*path[3], pte(41, TABLE))          # remapped, no invlpg yet
    assert mmu.translate(VA) == 40                      # as on hardware: stale
    mmu.invlpg(VA)
    assert mmu.translate(VA) == 41
    frames.set_entry(*path[3], 0)                       # unmapped
    assert mmu.translate(VA) == 41
    mmu.flush()
    with pytest.raises(PageFault):
        mmu.translate(VA)


def test_invlpg_drops_one_page_only(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    build(frames, root, VA + 0x1000, 41)
    mmu.translate(VA)
    mmu.translate(VA + 0x1000)
    mmu.invlpg(VA)
    assert len(mmu.tlb) == 1
    mmu.translate(VA + 0x1000)
    assert mmu.counters["tlb_hits"] == 1


def test_cr3_load_flushes(machine):
    frames, root, mmu = machine
    build(frames, root, VA, 40)
    mmu.translate(VA)
    mmu.load_cr3(root)
    assert len(mmu.tlb) == 0
    mmu.translate(VA)
    assert mmu.counters["tlb_misses"] == 2


def test_a_fault_drops_the_stale_entry(machine):
    """A TLB entry that refuses a write is re-walked; the fault invalidates it."""
    frames, root, mmu = machine
    path = build(frames, root, VA, 40, (TABLE, TABLE, TABLE, PTE_PRESENT))
    mmu.translate(VA)
    with pytest.raises(PageFault):
        mmu.translate(VA, write=True)
    assert len(mmu.tlb) == 0
    frames.set_entry(*path[3], pte(40, TABLE))          # made writable: no spurious fault
    mmu.translate(VA)
    assert mmu.translate(VA, write=True) == 40


def test_capacity_evicts_the_oldest():
    tlb = Tlb(capacity=3)
    for vpn in range(5):
        tlb.insert(vpn, 100 + vpn, 0)
    assert list(tlb.entries) == [2, 3, 4] and tlb.evictions == 2
    tlb.insert(3, 7, 0)                                 # refill: no eviction
    assert len(tlb) == 3 and tlb.lookup(3) == (7, 0)
    with pytest.raises(ValueError):
        Tlb(0)


def test_small_tlb_misses_on_a_loop_larger_than_it(machine):
    frames, root, _ = machine
    for i in range(8):
        build(frames, root, VA + i * 4096, 40 + i)
    mmu = Mmu("direct", frames, tlb_entries=4)
    mmu.load_cr3(root)
    for _ in range(3):
        for i in range(8):
            mmu.translate(VA + i * 4096)
    assert mmu.counters["tlb_hits"] == 0 and mmu.counters["tlb_misses"] == 24


# -- hap: the two-dimensional walk ---------------------------------------------------------
class Hap:
    """A guest whose gfn g is mfn g + 100 through an EPT table in frames."""

    def __init__(self, gfns=range(64)):
        self.frames = Frames(400)
        self.frames.next_free = 300
        self.eptp = self.frames.alloc()
        for g in gfns:
            self.ept_set(g, g + 100)
        self.next_gfn = 1

    def ept_set(self, gfn, mfn, perms=EPT_RWX):
        table = self.eptp
        for level in (4, 3, 2):
            idx = va_index(gfn << 12, level)
            cur = self.frames.get_entry(table, idx)
            if not cur & EPT_RWX:
                cur = pte(self.frames.alloc(), EPT_RWX)
                self.frames.set_entry(table, idx, cur)
            table = (cur >> 12) & ((1 << 40) - 1)
        self.frames.set_entry(table, va_index(gfn << 12, 1), pte(mfn, perms))

    def ept_clear(self, gfn):
        table = self.eptp
        for level in (4, 3, 2):
            table = (self.frames.get_entry(table, va_index(gfn << 12, level)) >> 12) & (
                (1 << 40) - 1)
        self.frames.set_entry(table, va_index(gfn << 12, 1), 0)

    def guest_map(self, root_gfn, va, gfn):
        """The guest's own tables, in gfn terms, in frames gfn + 100."""
        table = root_gfn
        for level in (4, 3, 2):
            idx = va_index(va, level)
            cur = self.frames.get_entry(table + 100, idx)
            if not cur & PTE_PRESENT:
                self.next_gfn += 1
                cur = pte(self.next_gfn, TABLE)
                self.frames.set_entry(table + 100, idx, cur)
            table = (cur >> 12) & ((1 << 40) - 1)
        self.frames.set_entry(table + 100, va_index(va, 1), pte(gfn, TABLE))
        return table


def test_cold_two_dimensional_walk_costs_24_references():
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    hap.guest_map(1, VA, 50)
    mmu.load_cr3(1)
    assert mmu.translate(VA) == 150
    assert mmu.counters["walk_refs"] == WALK_REFS_2D == 24
    mmu.translate(VA)
    assert mmu.counters["walk_refs"] == 24 and mmu.counters["tlb_hits"] == 1


def test_nested_fault_for_a_missing_ept_entry_of_the_data_page():
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    hap.guest_map(1, VA, 50)
    hap.ept_clear(50)
    mmu.load_cr3(1)
    with pytest.raises(NestedFault) as exc:
        mmu.translate(VA, write=True)
    assert exc.value.gpa == 50 << 12 and exc.value.write and not exc.value.present
    hap.ept_set(50, 160)
    assert mmu.translate(VA, write=True) == 160


def test_nested_fault_for_a_guest_table_frame():
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    l1_gfn = hap.guest_map(1, VA, 50)
    hap.ept_clear(l1_gfn)
    mmu.load_cr3(1)
    with pytest.raises(NestedFault) as exc:
        mmu.translate(VA)
    assert exc.value.gpa == l1_gfn << 12 and not exc.value.write
    assert mmu.counters["nested_faults"] == 1


def test_read_only_ept_entry_refuses_a_write_only():
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    hap.guest_map(1, VA, 50)
    hap.ept_set(50, 150, EPT_READ)
    mmu.load_cr3(1)
    assert mmu.translate(VA) == 150
    with pytest.raises(NestedFault) as exc:
        mmu.translate(VA, write=True)
    assert exc.value.present and exc.value.write


def test_guest_fault_in_hap_is_a_page_fault_in_guest_terms():
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    mmu.load_cr3(1)
    with pytest.raises(PageFault) as exc:
        mmu.translate(VA, user=True)
    assert exc.value.code == PFEC_USER and exc.value.level == 4


# -- translation agrees with a hand walk for random tables ---------------------------------
def hand_walk(frames, cr3, va, write, user, fetch):
    """SDM 4.5-4.7 read the plain way: ('ok', mfn) or ('pf', code, level)."""
    access = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0) | (
        PFEC_INSN if fetch else 0)
    table = cr3
    entries = []
    for level in (4, 3, 2, 1):
        e = frames.get_entry(table, (va >> (12 + 9 * (level - 1))) & 511)
        if not e & 1:
            return ("pf", access, level)
        reserved = ((e >> MAXPHYADDR) & ((1 << (52 - MAXPHYADDR)) - 1)) or (
            level > 1 and e & PTE_PSE)
        if reserved:
            return ("pf", access | PFEC_PRESENT | PFEC_RSVD, level)
        entries.append((level, e))
        table = (e >> 12) & FRAME_MASK
    for level, e in entries:
        if (write and not e & PTE_RW) or (user and not e & PTE_USER) or (
                fetch and e & PTE_NX):
            return ("pf", access | PFEC_PRESENT, level)
    return ("ok", table)


def _entry_flags(kind, rw, user, nx):
    """kind 0: not present; 1: PS set; 2: a reserved address bit; else present."""
    flags = (0 if kind == 0 else PTE_PRESENT) | (PTE_PSE if kind == 1 else 0) | (
        1 << (MAXPHYADDR + 2) if kind == 2 else 0)
    return flags | (PTE_RW if rw else 0) | (PTE_USER if user else 0) | (PTE_NX if nx else 0)


flags_st = st.builds(_entry_flags, st.integers(0, 12), st.integers(0, 3).map(bool),
                     st.integers(0, 3).map(bool), st.integers(0, 4).map(lambda n: n == 0))
# a handful of addresses sharing upper-level tables
va_st = st.builds(lambda hi, i2, i1: (USER_BASE if not hi else KERNEL_DIRECT_MAP)
                  + (i2 << 21) + (i1 << 12),
                  st.booleans(), st.integers(0, 2), st.integers(0, 3))
access_st = st.tuples(st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps=st.lists(st.tuples(va_st, st.lists(flags_st,
                                                min_size=4, max_size=4)),
                     min_size=1, max_size=8),
       probes=st.lists(st.tuples(va_st, access_st), min_size=1, max_size=12))
def test_translation_agrees_with_a_hand_walk(maps, probes):
    frames = Frames(128)
    root = frames.alloc()
    for n, (va, flags) in enumerate(maps):
        build(frames, root, va, 100 + n, flags)
    mmu = Mmu("direct", frames)
    mmu.load_cr3(root)
    for va, (write, user, fetch) in probes:
        # A/D bits never change a translation's outcome; the hand walk reads them too
        expected = hand_walk(frames, root, va, write, user, fetch)
        try:
            got = ("ok", mmu.translate(va, write, user, fetch))
        except PageFault as pf:
            got = ("pf", pf.code, pf.level)
        assert got == expected


def test_a_tlb_hit_keeps_the_ept_rights():
    """A translation cached by a read of a read-only EPT page must not serve
    a write, even when the guest's own entry is writable and dirty."""
    hap = Hap()
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    l1 = hap.guest_map(1, VA, 50)
    hap.frames.set_entry(l1 + 100, va_index(VA, 1), pte(50, TABLE | PTE_ACCESSED | PTE_DIRTY))
    hap.ept_set(50, 150, EPT_READ)
    mmu.load_cr3(1)
    assert mmu.translate(VA) == 150
    with pytest.raises(NestedFault):
        mmu.translate(VA, write=True)


def hand_walk_2d(frames, eptp, cr3, va, write, user, fetch):
    """The 2-D walk read plainly: each guest table's gpa through the EPT
    first; ('ok', mfn, refs), ('pf', code, level, refs) or ('nf', gpa, write, refs)."""
    refs = 0

    def nested(gfn, need_write, need_exec):
        nonlocal refs
        table, perms = eptp, EPT_RWX
        for level in (4, 3, 2, 1):
            e = frames.get_entry(table, (gfn >> (9 * (level - 1))) & 511)
            refs += 1
            if not e & EPT_RWX:
                return None, False
            perms &= e
            table = (e >> 12) & FRAME_MASK
        ok = perms & EPT_READ and (not need_write or perms & EPT_WRITE) and (
            not need_exec or perms & EPT_EXEC)
        return table, not ok

    access = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0) | (
        PFEC_INSN if fetch else 0)
    gfn = cr3
    entries = []
    for level in (4, 3, 2, 1):
        mfn, refused = nested(gfn, False, False)
        if mfn is None or refused:
            return ("nf", gfn << 12, False, refs)
        e = frames.get_entry(mfn, (va >> (12 + 9 * (level - 1))) & 511)
        refs += 1
        if not e & 1:
            return ("pf", access, level, refs)
        entries.append((level, e))
        gfn = (e >> 12) & FRAME_MASK
    for level, e in entries:
        if (write and not e & PTE_RW) or (user and not e & PTE_USER) or (
                fetch and e & PTE_NX):
            return ("pf", access | PFEC_PRESENT, level, refs)
    mfn, refused = nested(gfn, write, fetch)
    if mfn is None or refused:
        return ("nf", gfn << 12, bool(write), refs)
    return ("ok", mfn, refs)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables_mapped=st.lists(st.integers(0, 15).map(bool), min_size=12, max_size=12),
       data_perms=st.lists(st.sampled_from([0, EPT_READ, EPT_READ | EPT_WRITE, EPT_RWX,
                                            EPT_READ | EPT_EXEC]), min_size=4, max_size=4),
       leaf_flags=st.lists(flags_st.map(lambda f: f & ~PTE_PSE & ~(1 << (MAXPHYADDR + 2))),
                           min_size=4, max_size=4),
       probes=st.lists(st.tuples(st.integers(0, 3), access_st), min_size=1, max_size=8))
def test_two_dimensional_walk_agrees_with_a_hand_walk(tables_mapped, data_perms, leaf_flags,
                                                     probes):
    hap = Hap(gfns=())
    for i in range(4):
        l1 = hap.guest_map(1, VA + i * 0x20_0000, 40 + i)           # four L1s, one page each
        hap.frames.set_entry(l1 + 100, va_index(VA, 1), pte(40 + i, 0) | leaf_flags[i])
    table_gfns = sorted(set(range(1, hap.next_gfn + 1)))
    for n, gfn in enumerate(table_gfns):
        if tables_mapped[n % len(tables_mapped)] or gfn == 1:
            hap.ept_set(gfn, gfn + 100)
    for i, perms in enumerate(data_perms):
        if perms:
            hap.ept_set(40 + i, 140 + i, perms)
    mmu = Mmu("hap", hap.frames)
    mmu.eptp = hap.eptp
    mmu.load_cr3(1)
    for i, (write, user, fetch) in probes:
        va = VA + i * 0x20_0000
        mmu.flush()
        expected = hand_walk_2d(hap.frames, hap.eptp, 1, va, write, user, fetch)
        before = mmu.counters["walk_refs"]
        try:
            got = ("ok", mmu.translate(va, write, user, fetch))
        except PageFault as pf:
            got = ("pf", pf.code, pf.level)
        except NestedFault as nf:
            got = ("nf", nf.gpa, nf.write)
        assert got + (mmu.counters["walk_refs"] - before,) == expected


def test_the_hit_path_shifts_land_on_the_error_code_bits():
    assert (True << 1, True << 2, True << 4) == (PFEC_WRITE, PFEC_USER, PFEC_INSN)
