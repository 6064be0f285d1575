"""MachineMemory: segments, reservations, the P2M and validated PTE updates."""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlab.hypervisor.memory import MAX_DOMAIN_PAGES, MFN_HYPERVISOR_LIMIT, MachineMemory
from xenlab.testing_invariants import check_machine_frames
from xenlab.xen import abi
from xenlab.xen.paging import PTE_PRESENT, PTE_RW
from xenlab.xen.errors import MemoryError_, XenError

PAGE = abi.PAGE_SIZE
RW = PTE_PRESENT | PTE_RW
RO = PTE_PRESENT


@pytest.fixture
def shm_dir():
    # tmpfs, as in production: lazy allocation and MADV_REMOVE behave as there.
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="xl-mem-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mem(shm_dir):
    m = MachineMemory(shm_dir, "t-", total_pages=1000)
    yield m
    for domid in range(10):
        if m.shm_files():
            with contextlib.suppress(XenError):
                m.remove_domain(domid)
    assert m.shm_files() == []


def guest_view(m: MachineMemory, domid: int) -> mmap.mmap:
    """What the domain itself maps: the whole segment, through its path."""
    mm = m.memory_map(domid)
    with open(mm["shm_path"], "r+b") as f:
        return mmap.mmap(f.fileno(), mm["segment_pages"] * PAGE)


def errno_of(excinfo) -> int:
    return excinfo.value.errno


# -- segments -------------------------------------------------------------------------
def test_add_domain_creates_a_sized_segment(mem):
    mem.add_domain(1, max_pages=16, initial_pages=4)
    mm = mem.memory_map(1, with_populated=True)
    assert mm["segment_pages"] == 17
    assert mm["shared_info_offset"] == 0 and mm["first_frame_offset"] == PAGE
    assert mm["populated"] == [0, 1, 2, 3]
    assert os.path.getsize(mm["shm_path"]) == 17 * PAGE
    assert mem.shm_files() == [mm["shm_path"]] == [mem.segment_path(1)]
    assert mem.reservation(1) == (4, 16, 4)
    assert mem.free_pages == 996


def test_remove_domain_unlinks_the_segment(mem):
    mem.add_domain(1, 8, 8)
    path = mem.segment_path(1)
    mem.remove_domain(1)
    assert not os.path.exists(path)
    assert mem.free_pages == mem.total_pages
    with pytest.raises(MemoryError_) as e:
        mem.reservation(1)
    assert errno_of(e) == errno.ESRCH


def test_remove_domain_with_exported_buffers(mem):
    mem.add_domain(1, 8, 8)
    buf, _ = mem.shared_info_buffer(1)
    view = memoryview(buf)
    frame = mem.frame(1, 0)
    mem.remove_domain(1)
    assert mem.shm_files() == []
    view.release()
    frame.release()


def test_add_domain_refusals(mem):
    with pytest.raises(MemoryError_) as e:
        mem.add_domain(1, max_pages=4, initial_pages=5)
    assert errno_of(e) == errno.EINVAL
    with pytest.raises(MemoryError_) as e:
        mem.add_domain(1, max_pages=2000, initial_pages=1001)
    assert errno_of(e) == errno.ENOMEM
    mem.add_domain(1, 4, 4)
    with pytest.raises(MemoryError_) as e:
        mem.add_domain(1, 4, 4)
    assert errno_of(e) == errno.EEXIST
    assert mem.shm_files() == [mem.segment_path(1)]


def test_frames_are_the_segment_pages_after_shared_info(mem):
    mem.add_domain(1, 8, 4)
    view = guest_view(mem, 1)
    mem.frame(1, 2)[:5] = b"hello"
    assert view[3 * PAGE:3 * PAGE + 5] == b"hello"
    assert mem.frame_offset(1, 2) == 3 * PAGE
    buf, off = mem.shared_info_buffer(1)
    buf[off:off + 4] = b"sinf"
    assert view[0:4] == b"sinf"
    view[PAGE:PAGE + 3] = b"abc"
    assert bytes(mem.frame(1, 0)[:3]) == b"abc"
    view.close()


def test_frame_refusals(mem):
    mem.add_domain(1, 8, 2)
    with pytest.raises(MemoryError_) as e:
        mem.frame(9, 0)
    assert errno_of(e) == errno.ESRCH
    with pytest.raises(MemoryError_) as e:
        mem.frame(1, 5)
    assert errno_of(e) == errno.EINVAL and "not populated" in e.value.message
    with pytest.raises(MemoryError_) as e:
        mem.frame(1, 8)
    assert errno_of(e) == errno.EINVAL and "outside" in e.value.message
    assert not mem.is_populated(1, 5) and not mem.is_populated(9, 0)


# -- reservations ----------------------------------------------------------------------------
def test_increase_reservation_takes_the_lowest_free_gfns(mem):
    mem.add_domain(1, 8, 4)
    mem.decrease_reservation(1, [1])
    assert mem.increase_reservation(1, nr_pages=2) == [1, 4]
    assert mem.increase_reservation(1, gfns=[7]) == [7]
    assert mem.memory_map(1, True)["populated"] == [0, 1, 2, 3, 4, 7]
    assert mem.free_pages == 1000 - 6


def test_increase_past_max_changes_nothing(mem):
    mem.add_domain(1, 8, 6)
    for kwargs in ({"nr_pages": 3}, {"gfns": [6, 7, 0]}):
        with pytest.raises(MemoryError_):
            mem.increase_reservation(1, **kwargs)
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, nr_pages=3)
    assert errno_of(e) == errno.ENOMEM and "maximum of 8" in e.value.message
    assert mem.reservation(1) == (6, 8, 6)


def test_increase_refuses_bad_gfns(mem):
    mem.add_domain(1, 8, 2)
    for gfns in ([1], [5, 5], [8], [3, 1]):
        with pytest.raises(MemoryError_) as e:
            mem.increase_reservation(1, gfns=gfns)
        assert errno_of(e) == errno.EINVAL
    with pytest.raises(MemoryError_):
        mem.increase_reservation(1, nr_pages=3, gfns=[4])
    assert mem.memory_map(1, True)["populated"] == [0, 1]


def test_host_budget(mem):
    mem.add_domain(1, 2000, 990)
    mem.add_domain(2, 100, 10)
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, nr_pages=1)
    assert errno_of(e) == errno.ENOMEM and "host" in e.value.message
    mem.decrease_reservation(2, [0, 1])
    assert mem.increase_reservation(1, nr_pages=2) == [990, 991]
    assert mem.free_pages == 0


def test_decrease_zeroes_and_releases_the_frame(mem, shm_dir):
    mem.add_domain(1, 256, 256)
    path = mem.segment_path(1)
    lazy = os.stat(path).st_blocks
    view = guest_view(mem, 1)
    for gfn in range(64):
        view[(1 + gfn) * PAGE:(2 + gfn) * PAGE] = b"\xaa" * PAGE
    touched = os.stat(path).st_blocks
    assert touched >= lazy + 64 * PAGE // 512      # tmpfs backs pages once written
    assert mem.decrease_reservation(1, list(range(64))) == list(range(64))
    assert os.stat(path).st_blocks <= lazy + 8     # and punches them out when freed
    assert view[PAGE:65 * PAGE] == bytes(64 * PAGE)
    assert mem.reservation(1)[0] == 192
    mem.increase_reservation(1, gfns=[3])
    assert bytes(mem.frame(1, 3)) == bytes(PAGE)
    view.close()


def test_decrease_is_all_or_nothing(mem):
    mem.add_domain(1, 8, 4)
    for gfns in ([0, 5], [1, 1], [0, 9]):
        with pytest.raises(MemoryError_) as e:
            mem.decrease_reservation(1, gfns)
        assert errno_of(e) == errno.EINVAL
    assert mem.reservation(1)[0] == 4


def test_busy_check_vetoes_freeing(mem):
    mem.add_domain(1, 8, 4)
    mem.add_busy_check(lambda d, g: "is in use" if (d, g) == (1, 2) else None)
    with pytest.raises(MemoryError_) as e:
        mem.decrease_reservation(1, [1, 2])
    assert errno_of(e) == errno.EBUSY and "in use" in e.value.message
    assert mem.reservation(1)[0] == 4


def test_set_max(mem):
    mem.add_domain(1, 8, 4)
    with pytest.raises(MemoryError_) as e:
        mem.set_max(1, 3)
    assert errno_of(e) == errno.EINVAL and "below the current reservation" in e.value.message
    mem.frame(1, 0)[:4] = b"keep"
    old_frame = mem.frame(1, 1)           # an export the remap must survive
    mem.set_max(1, 32)
    assert os.path.getsize(mem.segment_path(1)) == 33 * PAGE
    assert mem.increase_reservation(1, gfns=[31]) == [31]
    mem.frame(1, 31)[:2] = b"hi"
    assert bytes(mem.frame(1, 0)[:4]) == b"keep"
    old_frame.release()
    mem.set_max(1, 5)                     # lowering keeps the frames above it
    assert mem.reservation(1) == (5, 5, 4)
    assert bytes(mem.frame(1, 31)[:2]) == b"hi"
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, nr_pages=1)
    assert errno_of(e) == errno.ENOMEM
    with pytest.raises(MemoryError_) as e:
        mem.set_max(1, MAX_DOMAIN_PAGES + 1)
    assert errno_of(e) == errno.EINVAL


def test_set_target(mem):
    mem.add_domain(1, 8, 8)
    mem.set_target(1, 4)
    assert mem.reservation(1) == (8, 8, 4)
    with pytest.raises(MemoryError_) as e:
        mem.set_target(1, 9)
    assert errno_of(e) == errno.EINVAL
    assert mem.reservation(1) == (8, 8, 4)


# -- the P2M ---------------------------------------------------------------------------
# A frame of the 1000-page pool that the tests below never hand out.
FREE_MFN = MFN_HYPERVISOR_LIMIT + 999


def test_p2m_and_mfn_owner(mem):
    mem.add_domain(1, 8, 8)
    mem.add_domain(2, 8, 8)
    for domid in (1, 2):
        for gfn in range(8):
            mfn = mem.gfn_to_mfn(domid, gfn)
            assert mfn >= MFN_HYPERVISOR_LIMIT and mem.mfn_owner(mfn) == (domid, gfn)
    assert len({mem.gfn_to_mfn(d, g) for d in (1, 2) for g in range(8)}) == 16
    assert mem.mfn_owner(0x10) is None and mem.mfn_owner(FREE_MFN) is None
    old = set(mem.p2m(1).values())
    mem.remove_domain(1)
    assert all(mem.mfn_owner(mfn) is None for mfn in old)
    mem.add_domain(1, 8, 8)
    # Never-used frames are handed out before freed ones.
    assert not old & set(mem.p2m(1).values())


# -- page tables -------------------------------------------------------------------------------
@pytest.fixture
def pt(mem):
    """d1 with an L1 table pinned at gfn 0, and d2."""
    mem.add_domain(1, 16, 8)
    mem.add_domain(2, 16, 8)
    table = mem.gfn_to_mfn(1, 0)
    assert mem.mmuext(1, [("pin_l1", table)]) == (1, [0])
    return mem, table


def pte_ptr(table_mfn: int, index: int) -> int:
    return table_mfn << abi.PAGE_SHIFT | index * 8


def pte(mfn: int, flags: int) -> int:
    return mfn << abi.PAGE_SHIFT | flags


def read_pte(mem, domid, gfn, index) -> int:
    return struct.unpack_from("<Q", mem.frame(domid, gfn), index * 8)[0]


def test_mmu_update_maps_an_own_frame(pt):
    mem, table = pt
    target = mem.gfn_to_mfn(1, 3)
    assert mem.mmu_update(1, [(pte_ptr(table, 5), pte(target, RW))], {}) == (1, [0])
    assert read_pte(mem, 1, 0, 5) == pte(target, RW)
    assert mem.writable_count(target) == 1
    assert mem.mmu_update(1, [(pte_ptr(table, 5), 0)], {}) == (1, [0])
    assert mem.writable_count(target) == 0 and read_pte(mem, 1, 0, 5) == 0


# Each refusal with the errno Xen's mm.c gives it.
@pytest.mark.parametrize("make_update, err", [
    (lambda t, m: (pte_ptr(t, 1) | abi.MMU_MACHPHYS_UPDATE, 0), errno.ENOSYS),
    (lambda t, m: (pte_ptr(t, 1) | 5, 0), errno.ENOSYS),                     # no such command
    (lambda t, m: (pte_ptr(m.gfn_to_mfn(2, 0), 0), 0), errno.EINVAL),        # d2's frame
    (lambda t, m: (pte_ptr(0x20, 0), 0), errno.EINVAL),                      # Xen's own
    (lambda t, m: (pte_ptr(t, 1), pte(0x42, RO)), errno.EPERM),              # not RAM
    (lambda t, m: (pte_ptr(t, 1), pte(m.gfn_to_mfn(2, 1), RO)), errno.EBUSY),  # not granted
    (lambda t, m: (pte_ptr(t, 1), pte(1 << 39, RO)), errno.EPERM),           # no such frame
    (lambda t, m: (pte_ptr(t, 1), pte(FREE_MFN, RO)), errno.EBUSY),          # a free frame
    (lambda t, m: (pte_ptr(t, 1), pte(t, RW)), errno.EBUSY),                 # the table itself
    (lambda t, m: (pte_ptr(t, 1), pte(m.gfn_to_mfn(1, 3), RO | 1 << 4)), errno.EINVAL),  # PCD
])
def test_mmu_update_refusals(pt, make_update, err):
    mem, table = pt
    update = make_update(table, mem)
    assert mem.mmu_update(1, [update], {}) == (0, [-err])
    assert read_pte(mem, 1, 0, 1) == 0


def test_page_table_may_be_mapped_read_only(pt):
    mem, table = pt
    assert mem.mmu_update(1, [(pte_ptr(table, 0), pte(table, RO))], {}) == (1, [0])


def test_batch_stops_at_first_failure(pt):
    mem, table = pt
    good = mem.gfn_to_mfn(1, 2)
    updates = [(pte_ptr(table, 1), pte(good, RW)), (pte_ptr(table, 2), pte(0x42, RO)),
               (pte_ptr(table, 3), pte(good, RO))]
    assert mem.mmu_update(1, updates, {}) == (1, [0, -errno.EPERM])
    assert read_pte(mem, 1, 0, 1) and not read_pte(mem, 1, 0, 3)


def test_foreign_frames_need_a_grant(pt):
    mem, table = pt
    ro_mfn, rw_mfn = mem.gfn_to_mfn(2, 1), mem.gfn_to_mfn(2, 2)
    foreign = {ro_mfn: True, rw_mfn: False}
    assert mem.mmu_update(1, [(pte_ptr(table, 1), pte(ro_mfn, RO)),
                              (pte_ptr(table, 2), pte(rw_mfn, RW))], foreign) == (2, [0, 0])
    assert mem.mmu_update(1, [(pte_ptr(table, 3), pte(ro_mfn, RW))], foreign) == \
        (0, [-errno.EBUSY])


def test_pin_refused_while_mapped_writable(pt):
    mem, table = pt
    frame = mem.gfn_to_mfn(1, 4)
    mem.mmu_update(1, [(pte_ptr(table, 7), pte(frame, RW))], {})
    # a type conflict: WRITABLE while mapped writable (_get_page_type's EINVAL)
    assert mem.mmuext(1, [("pin_l1", frame)]) == (0, [-errno.EINVAL])
    mem.mmu_update(1, [(pte_ptr(table, 7), pte(frame, RO))], {})
    assert mem.mmuext(1, [("pin_l1", frame)]) == (1, [0])
    assert mem.mmu_update(1, [(pte_ptr(table, 8), pte(frame, RW))], {}) == (0, [-errno.EBUSY])


def test_pin_and_unpin_refusals(pt):
    mem, table = pt
    assert mem.mmuext(1, [("pin_l1", table)]) == (0, [-errno.EINVAL])          # already
    assert mem.mmuext(2, [("pin_l1", table)]) == (0, [-errno.EINVAL])          # not d2's
    assert mem.mmuext(2, [("unpin", table)]) == (0, [-errno.EINVAL])
    assert mem.mmuext(1, [("unpin", mem.gfn_to_mfn(1, 1))]) == (0, [-errno.EINVAL])  # not pinned
    assert mem.mmuext(1, [("pin_l1", 0x30)]) == (0, [-errno.EINVAL])
    assert mem.mmuext(1, [("pin_l1", FREE_MFN)]) == (0, [-errno.EINVAL])
    assert mem.mmuext(1, [("pin_l2", table)]) == (0, [-errno.EINVAL])         # it is an L1
    assert mem.mmuext(1, [("set_ldt", 0)]) == (0, [-errno.ENOSYS])


def test_unpin_drops_the_tables_mappings(pt):
    mem, table = pt
    frame = mem.gfn_to_mfn(1, 4)
    mem.mmu_update(1, [(pte_ptr(table, 7), pte(frame, RW))], {})
    assert mem.mmuext(1, [("unpin", table)]) == (1, [0])
    assert mem.writable_count(frame) == 0
    assert mem.mmuext(1, [("pin_l1", frame)]) == (1, [0])
    assert mem.pinned_tables() == {frame: 1}


def test_pin_validates_what_the_guest_wrote(pt):
    mem, _ = pt
    struct.pack_into("<Q", mem.frame(1, 5), 0, pte(0x42, RW))
    assert mem.mmuext(1, [("pin_l1", mem.gfn_to_mfn(1, 5))]) == (0, [-errno.EPERM])
    struct.pack_into("<Q", mem.frame(1, 5), 0, pte(mem.gfn_to_mfn(1, 5), RW))
    assert mem.mmuext(1, [("pin_l1", mem.gfn_to_mfn(1, 5))]) == (0, [-errno.EBUSY])
    struct.pack_into("<Q", mem.frame(1, 5), 0, pte(mem.gfn_to_mfn(1, 6), RW))
    assert mem.mmuext(1, [("pin_l1", mem.gfn_to_mfn(1, 5))]) == (1, [0])
    assert mem.writable_count(mem.gfn_to_mfn(1, 6)) == 1


def test_guest_writes_to_a_pinned_table_do_not_count(pt):
    mem, table = pt
    struct.pack_into("<Q", mem.frame(1, 0), 8, pte(mem.gfn_to_mfn(1, 6), RW))
    assert mem.writable_count(mem.gfn_to_mfn(1, 6)) == 0
    assert mem.mmuext(1, [("pin_l1", mem.gfn_to_mfn(1, 6))]) == (1, [0])


def test_frames_in_use_by_page_tables_cannot_be_freed(pt):
    mem, table = pt
    mem.mmu_update(1, [(pte_ptr(table, 1), pte(mem.gfn_to_mfn(1, 3), RO))], {})
    for gfn in (0, 3):
        with pytest.raises(MemoryError_) as e:
            mem.decrease_reservation(1, [gfn])
        assert errno_of(e) == errno.EBUSY
    mem.mmu_update(1, [(pte_ptr(table, 1), 0)], {})
    mem.mmuext(1, [("unpin", table)])
    assert mem.decrease_reservation(1, [0, 3]) == [0, 3]


def test_remove_domain_drops_its_tables(pt):
    mem, table = pt
    granted = mem.gfn_to_mfn(2, 1)
    mem.mmu_update(1, [(pte_ptr(table, 1), pte(granted, RW))], {granted: False})
    mem.remove_domain(1)
    assert mem.pinned_tables() == {}
    assert mem.writable_count(granted) == 0
    assert mem.mmuext(2, [("pin_l1", granted)]) == (1, [0])


def test_unknown_domain(mem):
    for call in (lambda: mem.mmu_update(5, [], {}), lambda: mem.mmuext(5, []),
                 lambda: mem.set_max(5, 1), lambda: mem.memory_map(5)):
        with pytest.raises(XenError) as e:
            call()
        assert errno_of(e) == errno.ESRCH


# -- bounded work (issue "Hold the boundaries", item 2) ------------------------------------
class NoScan(dict):
    """A grant table's entries that fail the test when anything walks them."""

    def _scan(self, *args):
        raise AssertionError("the grant table was scanned")

    __iter__ = items = values = keys = _scan


def test_decrease_reservation_of_16k_gfns_costs_no_table_scan(shm_dir):
    from xenlab.hypervisor.grants import GrantTables
    from xenlab.hypervisor.caller import Caller
    from xenlab.hypervisor.memory import MAX_EXTENTS
    from xenlab.xen.grant_table import GrantFrames
    mem = MachineMemory(shm_dir, "s-", total_pages=40000)
    grants = GrantTables(mem)
    for domid in (1, 2):
        mem.add_domain(domid, 20000, 20000)
        grants.add_domain(domid)
    # a full table in d1's frames 19936..19999, one entry mapped by d2
    frames = list(range(20000 - abi.DEFAULT_MAX_GRANT_FRAMES, 20000))
    grants.setup_table(1, frames)
    table = GrantFrames(mem.frame(1, gfn) for gfn in frames)
    for ref in range(abi.GNTTAB_NR_RESERVED_ENTRIES, table.nr_entries):
        table.grant(ref, 2, 100 + ref % 64, readonly=True)
    table.release()
    grants.map(Caller(2), 1, 64, readonly=True)                # gfn 100
    grants._tables[1].active = NoScan(grants._tables[1].active)
    gfns = list(range(1000, 1000 + 16384))
    for start in range(0, len(gfns), MAX_EXTENTS):
        mem.decrease_reservation(1, gfns[start:start + MAX_EXTENTS])
    assert mem.reservation(1)[0] == 20000 - 16384
    with pytest.raises(MemoryError_) as busy:
        mem.decrease_reservation(1, [99, 100])
    assert errno_of(busy) == errno.EBUSY and "mapped by d2 through grant ref 64" in busy.value.message
    assert mem.is_populated(1, 99)
    for domid in (1, 2):
        grants.remove_domain(domid)
        mem.remove_domain(domid)


def test_reservation_calls_are_capped(shm_dir):
    from xenlab.hypervisor.memory import MAX_EXTENTS
    from xenlab.xen.grant_table import GrantFrames
    mem = MachineMemory(shm_dir, "c-", total_pages=4000)
    mem.add_domain(1, 2000, 2000)
    with pytest.raises(MemoryError_) as e:
        mem.decrease_reservation(1, range(MAX_EXTENTS + 1))
    assert errno_of(e) == errno.E2BIG and f"at most {MAX_EXTENTS}" in e.value.message
    assert mem.reservation(1)[0] == 2000
    for start in (0, MAX_EXTENTS):
        mem.decrease_reservation(1, range(start, start + MAX_EXTENTS))
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, nr_pages=MAX_EXTENTS + 1)
    assert errno_of(e) == errno.E2BIG
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, gfns=range(MAX_EXTENTS + 1))
    assert errno_of(e) == errno.E2BIG
    # past the maximum is ENOMEM, whatever the size
    with pytest.raises(MemoryError_) as e:
        mem.increase_reservation(1, nr_pages=(1 << 64) - 1)
    assert errno_of(e) == errno.ENOMEM
    assert mem.increase_reservation(1, nr_pages=MAX_EXTENTS) == list(range(MAX_EXTENTS))
    mem.remove_domain(1)


def test_lowest_free_gfns_do_not_rescan_the_populated_ones(mem):
    mem.add_domain(1, 64, 64)
    mem.decrease_reservation(1, [40, 41, 50])
    assert mem.increase_reservation(1, nr_pages=2) == [40, 41]
    mem.decrease_reservation(1, [3])
    assert mem.increase_reservation(1, nr_pages=2) == [3, 50]


def test_page_table_calls_are_capped(pt):
    from xenlab.xen.paging import MAX_MMU_UPDATES, MAX_MMUEXT_OPS
    mem, table = pt
    with pytest.raises(MemoryError_) as e:
        mem.mmu_update(1, [(pte_ptr(table, 1), 0)] * (MAX_MMU_UPDATES + 1), {})
    assert errno_of(e) == errno.E2BIG
    with pytest.raises(MemoryError_) as e:
        mem.mmuext(1, [("unpin", table)] * (MAX_MMUEXT_OPS + 1))
    assert errno_of(e) == errno.E2BIG
    assert mem.pinned_tables() == {table: 1}


def allocated_pages(path) -> int:
    """The pages tmpfs backs for a file, as the host sees them."""
    return os.stat(path).st_blocks * 512 // PAGE


def test_a_balloon_out_frame_the_guest_touches_again_is_punched_out_at_its_next_reservation_call(mem):
    mem.add_domain(1, 256, 256)
    path = mem.segment_path(1)
    view = guest_view(mem, 1)
    for gfn in range(128):
        view[(1 + gfn) * PAGE:(2 + gfn) * PAGE] = b"\xaa" * PAGE
    mem.decrease_reservation(1, list(range(64, 128)))
    base = allocated_pages(path)
    # a hostile guest writes to frames it gave back, through its own mapping
    for gfn in range(64, 128):
        view[(1 + gfn) * PAGE:(2 + gfn) * PAGE] = b"\xbb" * PAGE
    assert allocated_pages(path) >= base + 64
    mem.decrease_reservation(1, [0])                         # its next reservation call
    assert allocated_pages(path) <= base
    assert view[65 * PAGE:129 * PAGE] == bytes(64 * PAGE)
    assert view[2 * PAGE:65 * PAGE] == b"\xaa" * 63 * PAGE  # populated frames are kept
    # a frame it gets back reads as zeros, whatever it wrote there meanwhile
    view[65 * PAGE:66 * PAGE] = b"\xcc" * PAGE
    assert mem.increase_reservation(1, gfns=[64]) == [64]
    assert bytes(mem.frame(1, 64)) == bytes(PAGE)
    view.close()


# -- the pool, the P2M and the M2P -------------------------------------------------------
def test_ballooned_frames_come_back_as_different_mfns(mem):
    mem.add_domain(1, 64, 64)
    mem.add_domain(2, 64, 8)
    before = mem.p2m(1)
    gone = list(range(32, 48))
    mem.decrease_reservation(1, gone)
    assert mem.machine_to_phys(before[g] for g in gone) == [abi.INVALID_M2P_ENTRY] * 16
    assert mem.increase_reservation(1, nr_pages=16) == gone
    after = mem.p2m(1)
    assert not {after[g] for g in gone} & set(before.values())
    assert {g: after[g] for g in after if g not in gone} == \
        {g: before[g] for g in before if g not in gone}
    assert mem.machine_to_phys(after[g] for g in gone) == gone
    assert all(mem.mfn_owner(after[g]) == (1, g) for g in gone)
    assert check_machine_frames(mem) == []


def test_freed_frames_are_reused_once_the_never_used_ones_are_gone(shm_dir):
    mem = MachineMemory(shm_dir, "t-", total_pages=8)
    mem.add_domain(1, 8, 8)
    first = mem.p2m(1)
    mem.decrease_reservation(1, [2, 5])
    mem.add_domain(2, 8, 0)
    assert mem.increase_reservation(2, nr_pages=2) == [0, 1]
    # The longest free first: gfn 2's frame went before gfn 5's.
    assert mem.p2m(2) == {0: first[2], 1: first[5]}
    assert mem.machine_to_phys([first[2], first[5]]) == [0, 1]
    assert mem.free_pages == 0 and check_machine_frames(mem) == []
    mem.remove_domain(2)
    mem.remove_domain(1)


def test_a_gone_domains_frame_stays_out_of_the_pool_while_referenced(shm_dir):
    """Xen frees a page when its last reference goes: a frame another
    domain still maps (a grant mapping, a PTE) must not become someone
    else's while it does."""
    mem = MachineMemory(shm_dir, "t-", total_pages=16)
    held: set[int] = set()
    mem.add_held_frames(lambda: held)
    mem.add_domain(1, 4, 4)
    mem.add_domain(2, 4, 4)
    mapped, by_pte = mem.gfn_to_mfn(1, 1), mem.gfn_to_mfn(1, 2)
    held.add(mapped)
    table = mem.gfn_to_mfn(2, 0)
    assert mem.mmuext(2, [("pin_l1", table)]) == (1, [0])
    assert mem.mmu_update(2, [(pte_ptr(table, 0), pte(by_pte, RO))], {by_pte: True}) == (1, [0])
    mem.remove_domain(1)
    assert mem.free_pages == 16 - 4 - 2
    assert mem.pool().kept == {mapped, by_pte}
    assert check_machine_frames(mem) == []
    mem.add_domain(3, 10, 10)                  # every free frame, none of the kept ones
    assert not {mapped, by_pte} & set(mem.p2m(3).values())
    with pytest.raises(MemoryError_) as e:
        mem.add_domain(4, 2, 1)
    assert errno_of(e) == errno.ENOMEM
    held.discard(mapped)                       # the grant is unmapped
    mem.add_domain(4, 2, 1)
    assert mem.p2m(4) == {0: mapped}
    with pytest.raises(MemoryError_):
        mem.increase_reservation(4, nr_pages=1)    # the PTE still names by_pte
    assert mem.mmu_update(2, [(pte_ptr(table, 0), 0)], {}) == (1, [0])
    assert mem.increase_reservation(4, nr_pages=1) == [1]
    assert mem.p2m(4)[1] == by_pte and check_machine_frames(mem) == []
    for domid in (2, 3, 4):
        mem.remove_domain(domid)
    assert mem.free_pages == 16 and check_machine_frames(mem) == []


_OPS = st.lists(st.tuples(
    st.sampled_from(["increase", "populate", "decrease", "hold", "release", "destroy"]),
    st.integers(1, 3), st.integers(0, 40)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_p2m_and_m2p_stay_inverse_under_any_sequence(ops):
    """Whatever the balloon, populate_physmap, grant references and domain
    destruction do, the M2P is the inverse of the P2Ms, no frame is owned
    twice, none is lost, and the free count is the pool's."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = Path(tempfile.mkdtemp(prefix="xl-mem-", dir=base))
    mem = MachineMemory(path, "p-", total_pages=48)
    held: dict[int, tuple[int, int]] = {}        # mfn -> (domid, gfn) when mapped
    mem.add_held_frames(lambda: held)
    # As the grant core does: the owner may not give back a mapped frame.
    mem.add_busy_check(lambda d, g: "is mapped" if (d, g) in held.values() else None)
    try:
        for op, domid, n in ops:
            if domid not in mem.domains():
                with contextlib.suppress(MemoryError_):
                    mem.add_domain(domid, 24, min(n, 24))
                continue
            have = mem.populated(domid)
            with contextlib.suppress(MemoryError_):
                if op == "increase":
                    mem.increase_reservation(domid, nr_pages=n % 8)
                elif op == "populate":
                    mem.increase_reservation(domid, gfns=[n % 24, (n * 7 + 3) % 24][:1 + n % 2])
                elif op == "decrease" and have:
                    mem.decrease_reservation(domid, have[n % len(have):][:1 + n % 5])
                elif op == "hold" and have:
                    gfn = have[n % len(have)]
                    held[mem.gfn_to_mfn(domid, gfn)] = (domid, gfn)
                elif op == "release" and held:
                    del held[sorted(held)[n % len(held)]]
                elif op == "destroy":
                    mem.remove_domain(domid)
            assert check_machine_frames(mem) == []
            owners = [mem.mfn_owner(mfn) for d in mem.domains() for mfn in mem.p2m(d).values()]
            assert owners == [(d, g) for d in mem.domains() for g in mem.p2m(d)]
            assert mem.free_pages >= 0
            for mfn, (owner, gfn) in held.items():
                # A mapped frame stays its granter's, or kept, never anyone else's.
                assert mem.mfn_owner(mfn) in ((owner, gfn), None)
                assert mem.mfn_owner(mfn) or mfn in mem.pool().kept
    finally:
        for domid in mem.domains():
            mem.remove_domain(domid)
        shutil.rmtree(path, ignore_errors=True)
