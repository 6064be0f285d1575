"""The guest kernel's page tables in the three paging modes, on the
in-process paging machine (testing/paging_machine.py)."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlab.domain.mmu import PageFault
from xenlab.domain.pagetable import FLUSH_CEILING, GuestPagingError
from xenlab.testing.paging_machine import DOMID, PagingMachine
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    KERNEL_DIRECT_MAP, MAX_MMU_UPDATES, PFEC_PRESENT, PFEC_USER, PFEC_WRITE,
    USER_BASE, WALK_REFS_2D, pte_frame, va_index,
)

MODES = ["direct", "shadow", "hap"]
PAGE = 4096


def va(i: int) -> int:
    return USER_BASE + i * PAGE


@pytest.fixture(params=MODES)
def machine(request):
    return PagingMachine(request.param, pages=128)


def process(machine, n=4):
    space = machine.space()
    gfns = [machine.alloc_frame() for _ in range(n)]
    space.map_many([(va(i), g, True) for i, g in enumerate(gfns)])
    space.activate()
    for i in range(n):
        machine.kernel.write(va(i), bytes([0x41 + i]) * PAGE)
    return space, gfns


def test_bytes_written_read_back(machine):
    process(machine)
    assert machine.kernel.read(va(1) + 10, 3) == b"BBB"
    assert machine.kernel.read(va(0) + PAGE - 2, 4) == b"AABB"


def test_unmap_faults_not_present(machine):
    space, _ = process(machine)
    space.unmap(va(2))
    with pytest.raises(PageFault) as exc:
        machine.kernel.read(va(2), 1)
    assert exc.value.code == PFEC_USER                 # not present, read, user
    assert machine.kernel.faults == [(va(2), PFEC_USER)]
    with pytest.raises(KeyError):
        space.unmap(va(2))


def test_protect_read_only_then_back(machine):
    space, _ = process(machine)
    space.protect(va(1), writable=False)
    assert machine.kernel.read(va(1), 1) == b"B"
    with pytest.raises(PageFault) as exc:
        machine.kernel.write(va(1), b"x")
    assert exc.value.code == PFEC_PRESENT | PFEC_WRITE | PFEC_USER
    space.protect(va(1), writable=True)
    machine.kernel.write(va(1), b"x")
    assert machine.kernel.read(va(1), 2) == b"xB"


def test_fork_cow_shares_bytes_and_a_write_copies_only_that_page(machine):
    kernel = machine.kernel
    parent, gfns = process(machine)
    child = parent.fork_cow()
    child.activate()
    assert [kernel.read(va(i), 2) for i in range(4)] == [b"AA", b"BB", b"CC", b"DD"]
    free = machine.free_frames
    kernel.write(va(1), b"child")
    assert kernel.counters["cow_copies"] == 1 and machine.free_frames == free - 1
    assert child.lookup(va(1))[0] != gfns[1]
    assert [child.lookup(va(i))[0] for i in (0, 2, 3)] == [gfns[0], gfns[2], gfns[3]]
    assert kernel.read(va(1), 6) == b"childB"
    parent.activate()
    assert kernel.read(va(1), 6) == b"BBBBBB"
    kernel.write(va(1), b"parent")                    # no longer shared: reused, no copy
    assert kernel.counters["cow_copies"] == 1 and kernel.counters["cow_reuses"] == 1
    assert parent.lookup(va(1))[0] == gfns[1]
    child.activate()
    assert kernel.read(va(1), 6) == b"childB"
    assert kernel.faults == [(va(1), PFEC_PRESENT | PFEC_WRITE | PFEC_USER)] * 2


def test_fork_keeps_read_only_pages_read_only(machine):
    kernel = machine.kernel
    parent, _ = process(machine)
    parent.protect(va(0), writable=False)
    child = parent.fork_cow()
    child.activate()
    with pytest.raises(PageFault):
        kernel.write(va(0), b"x")
    assert kernel.counters["cow_copies"] == 0


def test_teardown_returns_every_frame(machine):
    kernel = machine.kernel
    before = machine.free_frames
    parent, gfns = process(machine)
    child = parent.fork_cow()
    child.activate()
    kernel.write(va(0), b"x")
    child.teardown()
    parent.teardown()
    for g in gfns:
        machine.free_frame(g)
    assert machine.free_frames == before
    assert kernel.active is machine.kernel_space
    with pytest.raises(GuestPagingError):
        parent.map(va(0), gfns[0])


def test_bad_addresses_are_refused(machine):
    space = machine.space()
    with pytest.raises(ValueError):
        space.map(0x0000_8000_0000_0000, 1)                  # non-canonical
    with pytest.raises(ValueError):
        space.map(KERNEL_DIRECT_MAP, 1)                      # a process maps below the hole
    with pytest.raises(ValueError):
        machine.kernel.access(va(0) + 4000, 200, False)      # one page at a time


def test_a_process_sees_the_kernel_half_but_not_from_user_mode(machine):
    kernel = machine.kernel
    process(machine)
    dm = KERNEL_DIRECT_MAP + 3 * PAGE
    assert len(kernel.access(dm, 8, False)) == 8             # supervisor, through the shared L3
    with pytest.raises(PageFault) as exc:
        kernel.access(dm, 8, False, user=True)
    assert exc.value.code == PFEC_PRESENT | PFEC_USER


def test_unmap_is_seen_at_once_a_stale_tlb_entry_is_flushed(machine):
    kernel = machine.kernel
    space, gfns = process(machine)
    assert kernel.read(va(3), 1) == b"D"                     # in the TLB now
    space.map(va(3), gfns[0])                                # remap: invlpg
    assert kernel.read(va(3), 1) == b"A"


# -- direct -------------------------------------------------------------------------------
def test_direct_tables_are_read_only_in_the_direct_map():
    machine = PagingMachine("direct", pages=128)
    kernel = machine.kernel
    space, _ = process(machine)
    space.map(va(600), machine.alloc_frame())                # a new L1 while pinned
    assert machine.check() == []
    for gfn in space.table_frames() + machine.kernel_space.table_frames():
        with pytest.raises(PageFault) as exc:
            kernel.access(KERNEL_DIRECT_MAP + gfn * PAGE, 8, True)
        assert exc.value.code == PFEC_PRESENT | PFEC_WRITE
    space.teardown()
    for gfn in [g for g in range(128) if g in machine._free]:
        kernel.access(KERNEL_DIRECT_MAP + gfn * PAGE, 8, True)   # writable again once freed


def test_direct_entries_name_machine_frames_and_go_through_batched_mmu_update():
    machine = PagingMachine("direct", pages=128)
    space = machine.space()
    space.activate()
    calls = machine.backend.counters["mmu_update"]
    gfn = machine.alloc_frame()
    space.map_many([(va(i), gfn, True) for i in range(200)])
    assert machine.backend.counters["mmu_update"] == calls + 1
    mfn = machine.mmu.translate(va(5), user=True)
    assert mfn == machine.p2m[gfn]
    l1 = machine.frames.entry(machine.p2m[space._leaf_slot(va(5))[0]], va_index(va(5), 1))
    assert pte_frame(l1) == machine.p2m[gfn] != gfn


def test_direct_batches_split_at_the_hypervisors_cap():
    machine = PagingMachine("direct", pages=64)
    space = machine.space()
    space.activate()
    gfn = machine.alloc_frame()
    n = MAX_MMU_UPDATES + 10
    before = machine.backend.counters["mmu_update"]
    space.map_many([(va(i), gfn, True) for i in range(n)])
    # n leaves and the 2 L1s (with their read-only direct-map entries) they need
    assert machine.backend.counters["mmu_update"] - before == 2
    assert machine.pagetables.stats(DOMID)["entries"] >= n


def test_direct_many_unmaps_flush_once():
    machine = PagingMachine("direct", pages=64)
    space = machine.space()
    gfn = machine.alloc_frame()
    space.map_many([(va(i), gfn, True) for i in range(FLUSH_CEILING + 8)])
    space.activate()
    ops = machine.pagetables.stats(DOMID)["tlb_flushes"]
    for i in range(FLUSH_CEILING + 8):
        machine.kernel.read(va(i), 1)
    space.fork_cow()                                         # every parent entry loses RW
    assert machine.pagetables.stats(DOMID)["tlb_flushes"] == ops + 1


def test_direct_hypervisor_refusal_reaches_the_guest():
    machine = PagingMachine("direct", pages=64)
    space = machine.space()
    space.activate()
    table = machine.kernel_space.table_frames()[-1]
    with pytest.raises(MemoryError_):
        space.map(va(0), table)                              # a table frame, writable


# -- shadow -------------------------------------------------------------------------------
def test_shadow_writes_to_live_tables_trap_and_are_emulated():
    machine = PagingMachine("shadow", pages=128)
    space = machine.space()
    space.activate()
    emulated = machine.shadow.counters["emulated_writes"]
    gfn = machine.alloc_frame()
    space.map(va(0), gfn)
    assert machine.shadow.counters["emulated_writes"] > emulated
    machine.kernel.write(va(0), b"through the shadow")
    assert machine.kernel.read(va(0), 7) == b"through"
    assert machine.kernel.counters["cr3_exits"] == 2
    assert machine.kernel.faults == []                       # fills are not the guest's


# -- hap ----------------------------------------------------------------------------------
def test_hap_cold_miss_walks_24_references():
    machine = PagingMachine("hap", pages=64)
    process(machine)
    machine.mmu.flush()
    refs = machine.mmu.counters["walk_refs"]
    machine.kernel.read(va(2), 1)
    assert machine.mmu.counters["walk_refs"] - refs == WALK_REFS_2D


def test_hap_nested_fault_goes_to_the_hypervisor():
    machine = PagingMachine("hap", pages=64)
    space, gfns = process(machine)
    machine.nested.clear(gfns[0])                           # EPT entry gone
    assert machine.nested.take_tlb_flush()
    machine.mmu.flush()
    assert machine.kernel.read(va(0), 1) == b"A"
    assert machine.backend.counters["exit_nested_fault"] == 1
    assert machine.kernel.faults == []


# -- the same workload in three modes -----------------------------------------------------
op_st = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 7), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("unmap"), st.integers(0, 7)),
    st.tuples(st.just("protect"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("write"), st.integers(0, 7), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.tuples(st.just("fork"),),
    st.tuples(st.just("switch"),),
)


def run_workload(mode: str, ops) -> tuple[list, list, str]:
    machine = PagingMachine(mode, pages=96)
    kernel = machine.kernel
    data = [machine.alloc_frame() for _ in range(6)]
    spaces = [machine.space()]
    current = spaces[0]
    current.activate()
    results = []
    prefix = [("map", i, i, True) for i in range(6)] + [("write", i, b"%d" % i) for i in range(6)]
    for op in prefix + list(ops):
        try:
            if op[0] == "map":
                current.map(va(op[1]), data[op[2]], writable=op[3])
            elif op[0] == "unmap":
                current.unmap(va(op[1]))
            elif op[0] == "protect":
                current.protect(va(op[1]), op[2])
            elif op[0] == "write":
                kernel.write(va(op[1]) + 100, op[2])
            elif op[0] == "read":
                results.append(kernel.read(va(op[1]) + 100, 6))
            elif op[0] == "fork" and len(spaces) < 4:
                spaces.append(current.fork_cow())
            elif op[0] == "switch":
                current = spaces[(spaces.index(current) + 1) % len(spaces)]
                current.activate()
        except PageFault as pf:
            results.append(("pf", pf.va, pf.code))
        except KeyError:
            results.append("unmapped")
    assert machine.check() == []          # direct: Xen's type counts agree with the tables
    digest = hashlib.sha256()
    for space in spaces:
        space.activate()
        for i in range(12):
            if space.lookup(va(i)):
                digest.update(kernel.read(va(i), PAGE))
    for space in spaces:
        space.teardown()
    assert machine.check() == []
    # shadows come with A (and D where writable): the MMU never writes the pool
    assert machine.mmu.counters["ad_readonly"] == 0
    return results, kernel.faults, digest.hexdigest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=25))
def test_the_same_workload_gives_the_same_results_in_every_mode(ops):
    direct, shadow, hap = (run_workload(mode, ops) for mode in MODES)
    assert direct == shadow == hap


def test_fixed_workload_in_every_mode_with_different_counters():
    ops = [("map", i, i % 6, True) for i in range(8)] + [
        ("write", i, bytes([i]) * 4) for i in range(8)] + [
        ("fork",), ("switch",), ("write", 2, b"cow"), ("read", 2), ("unmap", 3), ("read", 3),
        ("protect", 4, False), ("write", 4, b"no"), ("switch",), ("read", 2)]
    outcomes = {mode: run_workload(mode, ops) for mode in MODES}
    assert outcomes["direct"] == outcomes["shadow"] == outcomes["hap"]
    results, faults, _ = outcomes["direct"]
    assert ("pf", va(3) + 100, PFEC_USER) in results
    assert (va(2) + 100, PFEC_PRESENT | PFEC_WRITE | PFEC_USER) in faults


def test_remapped_page_is_still_copied_on_write_after_fork(machine):
    """A remap must count the new frame's mapping: otherwise the child's
    write after fork would land in the parent's page."""
    kernel = machine.kernel
    parent, _ = process(machine)
    parent.map(va(0), machine.alloc_frame())                 # remapped to a fresh frame
    kernel.write(va(0), b"parent")
    child = parent.fork_cow()
    child.activate()
    kernel.write(va(0), b"child")
    assert kernel.counters["cow_copies"] == 1
    parent.activate()
    assert kernel.read(va(0), 6) == b"parent"


def test_a_frame_the_guest_does_not_have_is_refused(machine):
    space = machine.space()
    with pytest.raises(ValueError):
        space.map(va(0), 10_000)
    assert space.lookup(va(0)) is None


def test_only_a_process_forks_and_the_kernel_space_outlives_them(machine):
    with pytest.raises(GuestPagingError):
        machine.kernel_space.fork_cow()
    space, _ = process(machine)
    with pytest.raises(GuestPagingError):
        machine.kernel_space.teardown()
    space.teardown()
    machine.kernel_space.teardown()
    assert machine.kernel.kernel_space is None


def test_map_many_with_one_bad_item_maps_nothing(machine):
    space = machine.space()
    space.activate()
    gfn = machine.alloc_frame()
    with pytest.raises(ValueError):
        space.map_many([(va(0), gfn, True), (va(1), 10_000, True)])
    assert space.lookup(va(0)) is None
    space.map(va(2), gfn)
    with pytest.raises(PageFault):
        machine.kernel.read(va(0), 1)
    assert machine.check() == []


def test_teardown_clears_the_tables_as_linux_exit_does(machine):
    space, _ = process(machine)
    frames = space.table_frames()
    writes = machine.kernel.counters["pt_writes"]
    space.teardown()
    for gfn in frames[1:]:
        assert bytes(machine.kernel._frame(gfn)) == bytes(PAGE)
    root = machine.kernel._frame(frames[0])
    assert bytes(root[:PAGE // 2]) == bytes(PAGE // 2)     # the kernel's half is left
    assert machine.kernel.counters["pt_writes"] - writes >= 4 + 3
    assert machine.check() == []


def test_recycled_table_frames_serve_as_data(machine):
    kernel = machine.kernel
    space, _ = process(machine)
    old_tables = set(space.table_frames())
    space.teardown()
    fresh = [machine.alloc_frame() for _ in range(len(old_tables))]
    assert old_tables & set(fresh)
    again = machine.space()
    again.map_many([(va(i), g, True) for i, g in enumerate(fresh)])
    again.activate()
    for i in range(len(fresh)):
        kernel.write(va(i), b"data %d" % i)
    assert [kernel.read(va(i), 6) for i in range(len(fresh))] == [
        b"data %d" % i for i in range(len(fresh))]
    assert kernel.faults == []


def test_unmap_many_is_one_batch_and_all_or_nothing(machine):
    kernel = machine.kernel
    space, gfns = process(machine)
    with pytest.raises(KeyError):
        space.unmap_many([va(0), va(9)])
    assert space.lookup(va(0)) is not None
    calls = kernel.counters["hypercalls"]
    space.unmap_many([va(0), va(1), va(2)])
    if machine.mode.value == "direct":
        assert kernel.counters["hypercalls"] - calls == 2     # mmu_update, then invlpgs
    for i in (0, 1, 2):
        with pytest.raises(PageFault):
            kernel.read(va(i), 1)
    assert kernel.read(va(3), 1) == b"D"


def test_shadow_a_table_written_through_a_stale_writable_tlb_entry_is_caught():
    """The kernel clears a new table through the direct map (a writable TLB
    entry); once the hypervisor shadows that table it must flush, or the
    guest's later writes to it bypass the trap and the shadow goes stale."""
    machine = PagingMachine("shadow", pages=64)
    kernel = machine.kernel
    space = machine.space()
    space.activate()
    space.map(va(0), machine.alloc_frame())       # new L3..L1, cleared through the direct map
    kernel.read(va(0), 1)                          # shadowed now: write-protected
    space.unmap(va(0))
    with pytest.raises(PageFault):
        kernel.read(va(0), 1)
    assert machine.check() == []


class _NoDying:
    """The harness's backend without HVMOP_pagetable_dying."""

    def __init__(self, backend):
        self._b = backend

    def mmu_update(self, updates):
        return self._b.mmu_update(updates)

    def mmuext(self, ops):
        return self._b.mmuext(ops)

    def exit_page_fault(self, va, code, value):
        return self._b.exit_page_fault(va, code, value)

    def exit_cr3(self, gfn):
        return self._b.exit_cr3(gfn)

    def exit_nested_fault(self, gpa, write):
        return self._b.exit_nested_fault(gpa, write)


@pytest.mark.parametrize("dying", [True, False])
def test_shadow_teardown_with_and_without_pagetable_dying(dying):
    machine = PagingMachine("shadow", pages=128)
    if not dying:
        machine.kernel.backend = _NoDying(machine.backend)
    space, _ = process(machine, n=16)
    frames = space.table_frames()
    emulated = machine.shadow.counters["emulated_writes"]
    space.teardown()
    zap_exits = machine.shadow.counters["emulated_writes"] - emulated
    if dying:
        # Linux's exit_mmap: the shadows go first, the zap is plain stores
        assert zap_exits == 0 and machine.kernel.counters["pagetable_dying"] == 1
        assert not any(machine.shadow.is_shadowed(g) for g in frames)
    else:
        assert zap_exits >= 16                                # every leaf cleared traps
    assert machine.check() == []
    again, _ = process(machine, n=16)                         # frames reused: still right
    assert machine.kernel.read(va(15), 2) == bytes([0x41 + 15]) * 2
    if dying:
        assert machine.check() == []
    # Without it the old L4 keeps its pinned shadow while it serves as data
    # (stale, walked by nothing); a new table is cleared through the MMU,
    # which resyncs it, so a space built on recycled frames is right.
    again.teardown()
    third, _ = process(machine, n=16)
    assert [machine.kernel.read(va(i), 1) for i in range(16)] == [
        bytes([0x41 + i]) for i in range(16)]


def test_a_direct_map_of_more_tables_than_one_call_may_validate_is_pinned_bottom_up(monkeypatch):
    """The hypervisor validates at most MAX_VALIDATIONS_PER_CALL tables in
    one call (E2BIG past it): a guest of more than about 512 MiB has more
    L1 tables than that and pinning its L4 alone was refused, so it could
    not boot. Here the cap is 16 tables (a call carries at most 16 ops) and
    the guest's direct map needs 17 L1s: the kernel pins the tree bottom-up,
    then drops the lower pins."""
    from xenlab.domain import pagetable
    from xenlab.hypervisor import pagetables as core
    from xenlab.testing.paging_machine import PagingMachine
    defaults = list(core.PageTables.__init__.__defaults__)
    defaults[-1] = 16
    monkeypatch.setattr(core.PageTables.__init__, "__defaults__", tuple(defaults))
    monkeypatch.setattr(pagetable, "PREPIN_TABLES", 4)
    machine = PagingMachine("direct", pages=17 * 512)
    assert len(machine.pagetables.pinned(1)) == 1          # the L4 alone stays pinned
    space = machine.space()
    space.map(0x7F0000000000, machine.alloc_frame())
    space.activate()
    machine.kernel.write(0x7F0000000000, b"bottom-up")
    assert machine.kernel.read(0x7F0000000000, 9) == b"bottom-up"
    machine.check()
