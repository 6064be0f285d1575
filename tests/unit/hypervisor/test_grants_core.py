"""GrantTables: grant, end, map, unmap and batched copy (grant_table.h v1)."""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from xenlab.drivers.netback.datapath import gnttab_ops
from xenlab.drivers.netback.scratch import GrantCopy
from xenlab.hypervisor.grants import CopyOp, CopyPtr, GrantEntry, GrantTables
from xenlab.hypervisor.caller import Caller
from xenlab.hypervisor.memory import MachineMemory
from xenlab.rpc import grpc_status
from xenlab.xen import abi
from xenlab.xen.paging import PTE_PRESENT, PTE_RW
from xenlab.xen.errors import GrantError, MemoryError_, XenError

from guest_grants import GuestGrants

PAGE = abi.PAGE_SIZE
D0, D1, D2, D3 = Caller(0, True), Caller(1), Caller(2), Caller(3)
SELF = abi.DOMID_SELF


@pytest.fixture
def gt():
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    shm = Path(tempfile.mkdtemp(prefix="xl-gnt-", dir=base))
    mem = MachineMemory(shm, "g-", total_pages=1000)
    grants = GrantTables(mem, max_maptrack=4)
    grants.guests = {}
    for domid in range(4):
        mem.add_domain(domid, 16, 8)
        grants.add_domain(domid)
    yield grants
    for guest in grants.guests.values():
        guest.close()
    for domid in range(10):
        for remove in (grants.remove_domain, mem.remove_domain):
            with contextlib.suppress(XenError):
                remove(domid)
    assert mem.shm_files() == []
    shutil.rmtree(shm, ignore_errors=True)


def guest(gt, domid: int, frames: int = 1) -> GuestGrants:
    """``domid``'s kernel half of its table: its grant frames are its
    highest frames (populated for the purpose), as its kernel would pick."""
    if domid not in gt.guests:
        top = gt.memory.reservation(domid)[1]
        gt.guests[domid] = GuestGrants(gt, domid, list(range(top - 1, top - 1 - frames, -1)))
    return gt.guests[domid]


def grant(gt, domid: int, peer: int, gfn: int, readonly: bool = False) -> int:
    return guest(gt, domid).grant(peer, gfn, readonly)


def end(gt, domid: int, ref: int) -> bool:
    return guest(gt, domid).end(ref)


def status_of(call) -> int:
    with pytest.raises(GrantError) as e:
        call()
    return e.value.status


# -- granting ------------------------------------------------------------------------
def test_grant_access_fills_v1_entries(gt):
    ref = grant(gt, 1, peer=2, gfn=3, readonly=True)
    assert ref >= abi.GNTTAB_NR_RESERVED_ENTRIES
    [entry] = gt.entries(1)
    assert (entry.ref, entry.domid, entry.frame) == (ref, 2, 3)
    assert entry.flags == abi.GTF_permit_access | abi.GTF_readonly
    assert grant(gt, 1, 2, 4, False) == ref + 1


def test_a_grant_is_a_write_to_the_granters_own_frame(gt):
    """No call: the entry the hypervisor reads is in d1's grant frame, in
    d1's memory, at ref * 8."""
    ref = grant(gt, 1, 2, 3, readonly=False)
    frame = gt.memory.frame(1, gt.grant_frames(1)[0])
    assert abi.GRANT_ENTRY_V1.unpack_from(frame, ref * 8) == (abi.GTF_permit_access, 2, 3)


def test_setup_table_takes_populated_frames_of_the_domains_own_up_to_its_max(gt):
    gt.memory.add_domain(7, 8, 8)
    gt.add_domain(7, max_frames=2)
    assert gt.query_size(7) == (0, 2)
    assert status_of(lambda: gt.setup_table(7, [0, 1, 2])) == abi.GNTST_general_error
    assert status_of(lambda: gt.setup_table(7, [99])) == abi.GNTST_bad_page
    assert status_of(lambda: gt.setup_table(7, [1, 1])) == abi.GNTST_bad_page
    gt.memory.frame(7, 5)[:4] = b"junk"
    assert gt.setup_table(7, [5]) == 1
    assert bytes(gt.memory.frame(7, 5)[:4]) == bytes(4)       # a new frame reads as zeros
    assert status_of(lambda: gt.setup_table(7, [6, 5])) == abi.GNTST_general_error   # frames stay
    assert gt.setup_table(7, [5, 6]) == 2 and gt.query_size(7) == (2, 2)
    assert gt.grant_frames(7) == [5, 6]


def test_a_grant_frame_cannot_be_freed(gt):
    guest(gt, 1)
    [frame] = gt.grant_frames(1)
    with pytest.raises(MemoryError_) as e:
        gt.memory.decrease_reservation(1, [frame])
    assert e.value.errno == errno.EBUSY and "grant table" in e.value.message


def test_a_ref_outside_the_table_is_bad_gntref(gt):
    ref = grant(gt, 1, 2, 3)
    assert status_of(lambda: gt.map(D2, 1, 512, True)) == abi.GNTST_bad_gntref
    assert gt.copy(D2, [CopyOp(CopyPtr(1, ref=512, use_gref=True), CopyPtr(SELF, gfn=0), 8)]) \
        == [abi.GNTST_bad_gntref]
    assert gt.map(D2, 1, ref, True).ref == ref


def test_end_access(gt):
    ref = grant(gt, 1, 2, 3, False)
    assert end(gt, 1, ref)
    assert gt.entries(1) == []


# -- mapping ---# -- mapping ------------------------------------------------------------------------------
def test_map_hands_out_exactly_the_granted_page(gt):
    mem = gt.memory
    ref = grant(gt, 1, 0, 5, False)
    m = gt.map(D0, 1, ref, readonly=False)
    assert (m.granter, m.ref, m.readonly, m.length) == (1, ref, False, PAGE)
    assert m.shm_path == mem.segment_path(1)
    assert m.offset == mem.frame_offset(1, 5) and m.mfn == mem.gfn_to_mfn(1, 5)
    with open(m.shm_path, "r+b") as f:
        page = mmap.mmap(f.fileno(), m.length, offset=m.offset)
    page[:6] = b"via d2"
    assert bytes(mem.frame(1, 5)[:6]) == b"via d2"
    page.close()


def test_an_unprivileged_mapper_is_never_told_the_granters_segment(gt):
    """The break: a driver domain that mapped one granted page was told the
    path of the granter's whole segment, and could open it and read pages
    nobody granted it (and keep them after the unmap). Only a privileged
    mapper (Domain-0) is told where the page is; any other holds the
    mapping and reaches the page through the hypervisor (copy on the ref)."""
    ref = grant(gt, 1, 2, 5, False)
    m = gt.map(D2, 1, ref, readonly=False)
    assert m.shm_path == "" and (m.granter, m.ref, m.length) == (1, ref, PAGE)
    gt.memory.frame(1, 5)[:4] = b"page"
    got = gt.memory.frame(2, 6)
    assert gt.copy(D2, [CopyOp(CopyPtr(1, ref=ref, use_gref=True), CopyPtr(abi.DOMID_SELF, gfn=6),
                               4)]) == [abi.GNTST_okay]
    assert bytes(got[:4]) == b"page"


def test_map_flags_track_readers_and_writers(gt):
    ro_ref = grant(gt, 1, 2, 3, True)
    rw_ref = grant(gt, 1, 2, 4, False)
    r = gt.map(D2, 1, ro_ref, readonly=True)
    w = gt.map(D2, 1, rw_ref, readonly=False)
    flags = {e.ref: e.flags for e in gt.entries(1)}
    assert flags[ro_ref] & abi.GTF_reading and not flags[ro_ref] & abi.GTF_writing
    assert flags[rw_ref] & abi.GTF_writing
    assert gt.query(1)["active_maps"] == 2
    gt.unmap(D2, r.handle)
    gt.unmap(D2, w.handle)
    assert all(not e.flags & (abi.GTF_reading | abi.GTF_writing) for e in gt.entries(1))


def test_map_refusals(gt):
    # map_grant_ref: "Bad flags or dom" and a write-pin of a r/o entry are
    # GNTST_general_error; only a ref past the table is GNTST_bad_gntref.
    ro = grant(gt, 1, 2, 3, True)
    assert status_of(lambda: gt.map(D3, 1, ro, True)) == abi.GNTST_general_error
    assert status_of(lambda: gt.map(D0, 1, ro, True)) == abi.GNTST_general_error
    assert status_of(lambda: gt.map(D2, 1, ro, False)) == abi.GNTST_general_error
    assert status_of(lambda: gt.map(D2, 9, ro, True)) == abi.GNTST_bad_domain
    assert status_of(lambda: gt.map(D2, 1, ro + 1, True)) == abi.GNTST_general_error
    assert status_of(lambda: gt.map(D2, 1, 512, True)) == abi.GNTST_bad_gntref
    assert gt.mappings() == []


def test_end_access_refused_while_mapped(gt):
    """gnttab_end_foreign_access_ref: the granter's compare-and-swap fails
    while the hypervisor has GTF_reading/GTF_writing set, and leaves the
    entry as it was."""
    ref = grant(gt, 1, 2, 3, False)
    m = gt.map(D2, 1, ref, readonly=False)
    before = gt.entry(1, ref)
    assert not end(gt, 1, ref)
    assert gt.entry(1, ref) == before
    gt.unmap(D2, m.handle)
    assert end(gt, 1, ref)
    assert gt.entry(1, ref).flags == 0

def test_granter_cannot_free_a_mapped_frame(gt):
    ref = grant(gt, 1, 2, 3, False)
    m = gt.map(D2, 1, ref, readonly=True)
    with pytest.raises(MemoryError_) as e:
        gt.memory.decrease_reservation(1, [3])
    assert e.value.errno == errno.EBUSY and "d2" in e.value.message
    gt.unmap(D2, m.handle)
    gt.memory.decrease_reservation(1, [3])
    assert status_of(lambda: gt.map(D2, 1, ref, True)) == abi.GNTST_bad_page


def test_unmap_refusals(gt):
    ref = grant(gt, 1, 2, 3, False)
    m = gt.map(D2, 1, ref, readonly=False)
    assert status_of(lambda: gt.unmap(D3, m.handle)) == abi.GNTST_bad_handle
    assert status_of(lambda: gt.unmap(D2, m.handle + 1)) == abi.GNTST_bad_handle
    gt.unmap(D2, m.handle)
    assert status_of(lambda: gt.unmap(D2, m.handle)) == abi.GNTST_bad_handle


def test_maptrack_limit(gt):
    ref = grant(gt, 1, 2, 3, False)
    handles = [gt.map(D2, 1, ref, True).handle for _ in range(4)]
    assert sorted(handles) == [0, 1, 2, 3]
    assert status_of(lambda: gt.map(D2, 1, ref, True)) == abi.GNTST_no_device_space
    gt.unmap(D2, 2)
    assert gt.map(D2, 1, ref, True).handle == 2


def test_mapped_by(gt):
    a = grant(gt, 1, 2, 3, True)
    b = grant(gt, 1, 2, 4, False)
    gt.map(D2, 1, a, True)
    gt.map(D2, 1, b, True)
    gt.map(D2, 1, b, False)
    mem = gt.memory
    assert gt.mapped_by(2) == {mem.gfn_to_mfn(1, 3): True, mem.gfn_to_mfn(1, 4): False}
    assert gt.mapped_by(1) == {}


def test_remove_mapper_releases_its_mappings(gt):
    ref = grant(gt, 1, 2, 3, False)
    gt.map(D2, 1, ref, False)
    gt.remove_domain(2)
    gt.memory.remove_domain(2)
    end(gt, 1, ref)
    assert gt.mappings() == []


def test_remove_granter_keeps_the_mappers_handle(gt):
    ref = grant(gt, 1, 2, 3, False)
    m = gt.map(D2, 1, ref, False)
    guest(gt, 1).close()
    del gt.guests[1]
    gt.remove_domain(1)
    gt.memory.remove_domain(1)
    assert gt.mappings(2) == [m]
    gt.add_domain(1)                      # a new d1 must not inherit the old counts
    gt.memory.add_domain(1, 16, 8)
    new_ref = grant(gt, 1, 2, 3, False)
    assert new_ref == ref
    gt.unmap(D2, m.handle)
    assert gt.entries(1)[0].flags == abi.GTF_permit_access
    assert gt.pinned(1) == {}

def test_query(gt):
    info = gt.query(1)
    assert info == {"domid": 1, "nr_frames": 0, "max_frames": abi.DEFAULT_MAX_GRANT_FRAMES,
                    "entries_in_use": 0, "max_entries": abi.DEFAULT_MAX_GRANT_FRAMES * 512,
                    "active_maps": 0}
    guest(gt, 1, frames=2)
    for _ in range(600):
        grant(gt, 1, 2, 0, True)
    assert gt.query(1)["nr_frames"] == 2
    assert gt.query(1)["entries_in_use"] == 600

# -- copy ---------------------------------------------------------------------------------
def fill(gt, domid, gfn, data: bytes, offset=0):
    gt.memory.frame(domid, gfn)[offset:offset + len(data)] = data


def read(gt, domid, gfn, offset, length) -> bytes:
    return bytes(gt.memory.frame(domid, gfn)[offset:offset + length])


def test_copy_between_gref_and_own_frame(gt):
    rx = grant(gt, 1, 2, 3, False)        # d1 posts a buffer for d2 to fill
    tx = grant(gt, 1, 2, 4, True)         # d1 offers data for d2 to read
    fill(gt, 2, 1, b"packet", 10)
    fill(gt, 1, 4, b"reply!", 100)
    ops = [CopyOp(CopyPtr(SELF, gfn=1, offset=10), CopyPtr(1, ref=rx, use_gref=True, offset=20), 6),
           CopyOp(CopyPtr(1, ref=tx, use_gref=True, offset=100),
                  CopyPtr(abi.DOMID_SELF, gfn=2), 6)]
    assert gt.copy(D2, ops) == [abi.GNTST_okay, abi.GNTST_okay]
    assert read(gt, 1, 3, 20, 6) == b"packet"
    assert read(gt, 2, 2, 0, 6) == b"reply!"


def test_copy_statuses_per_op(gt):
    ro = grant(gt, 1, 2, 3, True)
    rw = grant(gt, 1, 2, 4, False)
    other = grant(gt, 1, 3, 5, False)
    fill(gt, 2, 0, b"x" * 8)
    own = CopyPtr(SELF, gfn=0)
    cases = [
        (CopyOp(own, CopyPtr(1, ref=rw, use_gref=True, offset=4000), 100), abi.GNTST_bad_copy_arg),
        (CopyOp(CopyPtr(SELF, gfn=0, offset=PAGE), own, 1), abi.GNTST_bad_copy_arg),
        (CopyOp(own, CopyPtr(1, ref=ro, use_gref=True), 8), abi.GNTST_general_error),
        (CopyOp(own, CopyPtr(9, ref=rw, use_gref=True), 8), abi.GNTST_bad_domain),
        (CopyOp(own, CopyPtr(1, ref=300, use_gref=True), 8), abi.GNTST_general_error),
        (CopyOp(own, CopyPtr(1, ref=1 << 20, use_gref=True), 8), abi.GNTST_bad_gntref),
        (CopyOp(own, CopyPtr(1, ref=other, use_gref=True), 8), abi.GNTST_general_error),
        (CopyOp(own, CopyPtr(1, gfn=4), 8), abi.GNTST_permission_denied),
        (CopyOp(CopyPtr(SELF, gfn=12), own, 8), abi.GNTST_bad_page),
        (CopyOp(CopyPtr(1, ref=ro, use_gref=True), CopyPtr(SELF, gfn=1), 8), abi.GNTST_okay),
        (CopyOp(own, CopyPtr(1, ref=rw, use_gref=True, offset=PAGE - 8), 8), abi.GNTST_okay),
    ]
    assert gt.copy(D2, [op for op, _ in cases]) == [want for _, want in cases]
    assert read(gt, 1, 4, PAGE - 8, 8) == b"x" * 8
    assert read(gt, 1, 3, 0, 8) == bytes(8)     # the refused write left d1 alone


def test_a_copy_names_a_frame_by_gfn_only_for_domid_self(gt):
    """gnttab_copy_lock_domain: "Only DOMID_SELF may reference via frame",
    whoever asks: not another domain's frame, not even a privileged
    caller's own frame under its own domid."""
    fill(gt, 1, 2, b"secret")
    assert gt.copy(D0, [CopyOp(CopyPtr(1, gfn=2), CopyPtr(SELF, gfn=0), 6)]) == \
        [abi.GNTST_permission_denied]
    assert gt.copy(D0, [CopyOp(CopyPtr(0, gfn=2), CopyPtr(SELF, gfn=0), 6)]) == \
        [abi.GNTST_permission_denied]
    assert gt.copy(D3, [CopyOp(CopyPtr(1, gfn=2), CopyPtr(SELF, gfn=0), 6)]) == \
        [abi.GNTST_permission_denied]
    assert read(gt, 0, 0, 0, 6) == bytes(6) and read(gt, 3, 0, 0, 6) == bytes(6)

def test_copy_within_one_frame_overlapping(gt):
    fill(gt, 2, 0, b"abcdefgh")
    assert gt.copy(D2, [CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(SELF, gfn=0, offset=2), 6)]) == [0]
    assert read(gt, 2, 0, 0, 8) == b"ababcdef"


def test_map_batch_each_op_on_its_own(gt):
    ro = grant(gt, 1, 2, 3, True)
    rw = grant(gt, 1, 2, 4, False)
    other = grant(gt, 1, 3, 5, False)          # for d3, not d2
    results = gt.map_batch(D2, [(1, ro, True), (1, ro, False), (1, other, True),
                                (1, 300, True), (1, rw, False)])
    assert [r.status if isinstance(r, GrantError) else abi.GNTST_okay for r in results] == [
        abi.GNTST_okay, abi.GNTST_general_error, abi.GNTST_general_error,
        abi.GNTST_general_error, abi.GNTST_okay]
    mapped = [r for r in results if not isinstance(r, GrantError)]
    assert [(m.ref, m.readonly) for m in mapped] == [(ro, True), (rw, False)]
    assert sorted(m.handle for m in gt.mappings(2)) == sorted(m.handle for m in mapped)
    # what the batch mapped pins the grants, as single maps do
    assert not end(gt, 1, rw)
    assert gt.unmap_batch(D2, [mapped[0].handle, 77, mapped[1].handle, mapped[1].handle]) == [
        abi.GNTST_okay, abi.GNTST_bad_handle, abi.GNTST_okay, abi.GNTST_bad_handle]
    assert gt.mappings(2) == []
    assert end(gt, 1, ro) and end(gt, 1, rw)


def test_map_batch_stops_at_the_maptrack_limit(gt):
    ref = grant(gt, 1, 2, 3, True)
    results = gt.map_batch(D2, [(1, ref, True)] * 6)
    assert [isinstance(r, GrantError) and r.status for r in results] == [
        False, False, False, False, abi.GNTST_no_device_space, abi.GNTST_no_device_space]
    assert len(gt.mappings(2)) == 4


def test_batches_are_bounded(gt):
    from xenlab.hypervisor.grants import MAX_MAP_BATCH
    ref = grant(gt, 1, 2, 3, True)
    with pytest.raises(XenError) as err:
        gt.map_batch(D2, [(1, ref, True)] * (MAX_MAP_BATCH + 1))
    assert err.value.errno == errno.E2BIG and gt.mappings(2) == []
    with pytest.raises(XenError):
        gt.unmap_batch(D2, [0] * (MAX_MAP_BATCH + 1))


def test_a_privileged_domain_may_have_a_larger_maptrack(gt):
    gt.memory.add_domain(7, 16, 8)
    gt.add_domain(7, max_maptrack=10)
    assert gt.maptrack_limit(7) == 10 and gt.maptrack_limit(2) == 4
    ref = grant(gt, 1, 7, 3, True)
    assert not any(isinstance(r, GrantError) for r in gt.map_batch(Caller(7, True),
                                                                   [(1, ref, True)] * 10))


# -- issue "Hold the boundaries": bounded calls, no oracle, no PTE past its grant ----------
def refusal(call) -> tuple[int, str]:
    with pytest.raises(GrantError) as e:
        call()
    return e.value.status, e.value.message


def test_a_live_ref_of_another_domain_and_an_unused_ref_give_the_same_error(gt):
    live = grant(gt, 1, 2, 3, False)          # d1's ref, granted to d2
    unused = live + 1
    # map_grant_ref: one "bad flags or dom" failure for both, in the same words
    answers = [refusal(lambda r=r: gt.map(D3, 1, r, True)) for r in (live, unused)]
    assert answers[0][0] == answers[1][0] == abi.GNTST_general_error
    assert answers[0][1].replace(str(live), "R") == answers[1][1].replace(str(unused), "R")
    batch = gt.map_batch(D3, [(1, live, True), (1, unused, True)])
    assert [r.status for r in batch] == [abi.GNTST_general_error] * 2
    assert batch[0].message.replace(str(live), "R") == batch[1].message.replace(str(unused), "R")
    ops = [CopyOp(CopyPtr(1, ref=r, use_gref=True), CopyPtr(SELF, gfn=0), 8) for r in (live, unused)]
    assert gt.copy(D3, ops) == [abi.GNTST_general_error] * 2
    # only a ref past the table is told apart, as Xen's bounds check does
    assert refusal(lambda: gt.map(D3, 1, 512, True))[0] == abi.GNTST_bad_gntref


def test_copy_is_capped(gt):
    from xenlab.hypervisor.grants import MAX_COPY_OPS
    fill(gt, 2, 0, b"x")
    op = CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(SELF, gfn=1), 1)
    assert gt.copy(D2, [op] * MAX_COPY_OPS) == [abi.GNTST_okay] * MAX_COPY_OPS
    with pytest.raises(XenError) as err:
        gt.copy(D2, [op] * (MAX_COPY_OPS + 1))
    assert err.value.errno == errno.E2BIG and f"at most {MAX_COPY_OPS}" in err.value.message
    assert grpc_status(err.value) == grpc.StatusCode.INVALID_ARGUMENT




def test_the_busy_check_counts_mappings_exactly(gt):
    a = grant(gt, 1, 2, 3, True)
    b = grant(gt, 1, 3, 3, True)              # the same frame, to another domain
    m1 = gt.map(D2, 1, a, True)
    m2 = gt.map(D2, 1, a, True)
    m3 = gt.map(D3, 1, b, True)
    for mapper, m in ((D2, m1), (D3, m3), (D2, m2)):
        with pytest.raises(MemoryError_):
            gt.memory.decrease_reservation(1, [3])
        gt.unmap(mapper, m.handle)
    gt.memory.decrease_reservation(1, [3])
    # a mapper's destruction counts too
    c = grant(gt, 1, 2, 4, True)
    gt.map(D2, 1, c, True)
    gt.remove_domain(2)
    gt.memory.decrease_reservation(1, [4])


RW_PTE = PTE_PRESENT | PTE_RW
RO_PTE = PTE_PRESENT


def pin_table(gt, domid: int, gfn: int) -> int:
    mem = gt.memory
    table = mem.gfn_to_mfn(domid, gfn)
    assert mem.mmuext(domid, [("pin_l1", table)]) == (1, [0])
    return table


def set_pte(gt, domid: int, table: int, index: int, mfn: int, flags: int) -> int:
    ptr = table << abi.PAGE_SHIFT | index * 8
    done, status = gt.memory.mmu_update(domid, [(ptr, mfn << abi.PAGE_SHIFT | flags)],
                                        gt.mapped_by(domid))
    return status[0]


def test_unmapping_a_grant_clears_the_ptes_that_map_its_frame(gt):
    mem = gt.memory
    ref = grant(gt, 1, 2, 3, False)
    m = gt.map(D2, 1, ref, readonly=False)
    table = pin_table(gt, 2, 0)
    assert set_pte(gt, 2, table, 5, m.mfn, RW_PTE) == 0
    assert mem.pinned_ptes(table) == {5: m.mfn << abi.PAGE_SHIFT | RW_PTE}
    gt.unmap(D2, m.handle)
    # as Xen's unmap of a host mapping: the PTE goes with the grant mapping
    assert mem.pinned_ptes(table) == {}
    assert bytes(mem.frame(2, 0)[5 * 8:6 * 8]) == bytes(8)
    assert set_pte(gt, 2, table, 6, m.mfn, RO_PTE) == -errno.EBUSY     # no grant now
    # so the granter can end the grant and free the frame
    end(gt, 1, ref)
    mem.decrease_reservation(1, [3])


def test_unmapping_the_writable_mapping_leaves_only_read_only_ptes(gt):
    mem = gt.memory
    ref = grant(gt, 1, 2, 3, False)
    rw = gt.map(D2, 1, ref, readonly=False)
    ro = gt.map(D2, 1, ref, readonly=True)
    table = pin_table(gt, 2, 0)
    assert set_pte(gt, 2, table, 1, rw.mfn, RW_PTE) == 0
    assert set_pte(gt, 2, table, 2, rw.mfn, RO_PTE) == 0
    gt.unmap(D2, rw.handle)
    assert mem.pinned_ptes(table) == {2: rw.mfn << abi.PAGE_SHIFT | RO_PTE}
    assert mem.writable_count(rw.mfn) == 0
    gt.unmap(D2, ro.handle)
    assert mem.pinned_ptes(table) == {}


def test_the_busy_check_walks_no_table(gt):
    class NoScan(dict):
        def _scan(self, *args):
            raise AssertionError("the pinned entries were walked")
        __iter__ = items = values = keys = _scan

    refs = [grant(gt, 1, 2, 3 + i % 4, True) for i in range(300)]
    m = gt.map(D2, 1, refs[5], True)
    gt._tables[1].active = NoScan(gt._tables[1].active)
    assert gt.query(1)["active_maps"] == 1 and gt.query(1)["entries_in_use"] == 300
    assert gt.maptrack_count(2) == 1
    with pytest.raises(MemoryError_):
        gt.memory.decrease_reservation(1, [4])
    gt.unmap(D2, m.handle)
    assert gt.query(1)["active_maps"] == 0
    gt.memory.decrease_reservation(1, [4])


# -- the contract: exact flags, both sides of each bound, the GNTST_ of each refusal ------

def test_mapping_sets_exactly_the_in_use_flags_and_unmapping_clears_only_them(gt):
    ro = grant(gt, 1, 2, 3, True)
    rw = grant(gt, 1, 2, 4, False)
    flags = lambda: {e.ref: e.flags for e in gt.entries(1)}
    permit, readonly = abi.GTF_permit_access, abi.GTF_readonly
    m_ro = gt.map(D2, 1, ro, readonly=True)
    assert flags() == {ro: permit | readonly | abi.GTF_reading, rw: permit}
    m_w = gt.map(D2, 1, rw, readonly=False)
    # _set_status_v1: a writable pin sets GTF_reading and GTF_writing
    assert flags()[rw] == permit | abi.GTF_writing | abi.GTF_reading
    m_r = gt.map(D2, 1, rw, readonly=True)
    assert flags()[rw] == permit | abi.GTF_writing | abi.GTF_reading
    gt.unmap(D2, m_w.handle)
    assert flags()[rw] == permit | abi.GTF_reading
    gt.unmap(D2, m_r.handle)
    gt.unmap(D2, m_ro.handle)
    assert flags() == {ro: permit | readonly, rw: permit}


def test_every_mapping_counts_until_the_last_is_gone(gt):
    ref = grant(gt, 1, 2, 3, False)
    a = gt.map(D2, 1, ref, readonly=False)
    b = gt.map(D2, 1, ref, readonly=False)
    assert gt.query(1)["active_maps"] == 2 and gt.maptrack_count(2) == 2
    gt.unmap(D2, a.handle)
    assert gt.entries(1)[0].flags & abi.GTF_writing
    assert not end(gt, 1, ref)
    gt.unmap(D2, b.handle)
    assert gt.query(1)["active_maps"] == 0 and gt.maptrack_count(2) == 0
    assert end(gt, 1, ref)


def test_the_busy_check_names_the_mapper_and_the_ref(gt):
    ref = grant(gt, 1, 2, 3, True)
    gt.map(D2, 1, ref, True)
    with pytest.raises(MemoryError_) as err:
        gt.memory.decrease_reservation(1, [3])
    assert f"is mapped by d2 through grant ref {ref}" in err.value.message
    gt.memory.decrease_reservation(1, [4])         # another frame is free to go


@pytest.mark.parametrize("soff, doff, length", [(0, 0, PAGE), (PAGE - 1, 0, 1), (0, PAGE - 1, 1),
                                                (PAGE, 0, 0), (0, 0, 0)])
def test_copies_that_end_exactly_at_the_page_edge_are_allowed(gt, soff, doff, length):
    fill(gt, 2, 0, bytes(range(256)) * 16)
    assert gt.copy(D2, [CopyOp(CopyPtr(SELF, gfn=0, offset=soff), CopyPtr(SELF, gfn=1, offset=doff),
                               length)]) == [abi.GNTST_okay]
    assert read(gt, 2, 1, doff, length) == read(gt, 2, 0, soff, length)


@pytest.mark.parametrize("soff, doff, length", [(0, 0, PAGE + 1), (PAGE - 1, 0, 2), (0, PAGE - 1, 2),
                                                (-1, 0, 1), (0, -1, 1), (0, 0, -1), (PAGE + 1, 0, 0)])
def test_copies_past_the_page_or_below_it_are_bad_copy_args(gt, soff, doff, length):
    fill(gt, 2, 1, b"untouched")
    assert gt.copy(D2, [CopyOp(CopyPtr(SELF, gfn=0, offset=soff), CopyPtr(SELF, gfn=1, offset=doff),
                               length)]) == [abi.GNTST_bad_copy_arg]
    assert read(gt, 2, 1, 0, 9) == b"untouched"


def test_a_copy_batch_tells_a_read_from_a_write_of_the_same_ref(gt):
    ro = grant(gt, 1, 2, 3, True)
    fill(gt, 1, 3, b"ro data")
    ops = [CopyOp(CopyPtr(1, ref=ro, use_gref=True), CopyPtr(SELF, gfn=0), 7),
           CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(1, ref=ro, use_gref=True), 7),
           CopyOp(CopyPtr(1, ref=ro, use_gref=True), CopyPtr(SELF, gfn=1), 7)]
    assert gt.copy(D2, ops) == [abi.GNTST_okay, abi.GNTST_general_error, abi.GNTST_okay]
    assert read(gt, 2, 1, 0, 7) == b"ro data"


def test_a_copy_batch_tells_a_gref_from_a_gfn_of_the_same_number(gt):
    ref = grant(gt, 1, 2, 3, False)
    fill(gt, 1, 3, b"granted")
    fill(gt, 2, ref % 8, b"own")
    ops = [CopyOp(CopyPtr(1, ref=ref, use_gref=True), CopyPtr(SELF, gfn=0), 7),
           CopyOp(CopyPtr(1, gfn=ref), CopyPtr(SELF, gfn=0), 7)]
    assert gt.copy(D2, ops) == [abi.GNTST_okay, abi.GNTST_permission_denied]


def test_a_copy_with_dest_gref_writes_through_the_grant(gt):
    rw = grant(gt, 1, 2, 3, False)
    fill(gt, 2, 0, b"to d1")
    op = (0, abi.DOMID_SELF, 0, rw, 1, 10, 5, abi.GNTCOPY_dest_gref)
    assert gt.copy_gnttab(D2, [op]) == [abi.GNTST_okay]
    assert read(gt, 1, 3, 10, 5) == b"to d1"
    op = (rw, 1, 10, 1, abi.DOMID_SELF, 0, 5, abi.GNTCOPY_source_gref)
    assert gt.copy_gnttab(D2, [op]) == [abi.GNTST_okay]
    assert read(gt, 2, 1, 0, 5) == b"to d1"


def test_netbacks_copy_plan_for_a_frontend_without_persistent_grants_moves_both_ways(gt):
    """What netback sends when the frontend keeps no grants (every copy goes
    to the hypervisor as GNTTABOP_copy): rx writes its frame into the
    frontend's posted buffer, tx reads the frontend's request into netback's
    own frame, and a tx grant (read-only) cannot be written through."""
    rx = grant(gt, 1, 2, 3, False)          # d1's netfront posts an rx buffer for d2's netback
    tx = grant(gt, 1, 2, 4, True)           # and grants a tx request read-only
    fill(gt, 2, 1, b"to the guest", 10)
    fill(gt, 1, 4, b"from the guest", 100)
    plan = [GrantCopy(gref=rx, gref_offset=20, gfn=1, gfn_offset=10, length=12, to_frontend=True),
            GrantCopy(gref=tx, gref_offset=100, gfn=2, gfn_offset=0, length=14, to_frontend=False),
            GrantCopy(gref=tx, gref_offset=0, gfn=1, gfn_offset=10, length=12, to_frontend=True)]
    assert gt.copy_gnttab(D2, gnttab_ops(plan, frontend_id=1)) == [
        abi.GNTST_okay, abi.GNTST_okay, abi.GNTST_general_error]
    assert read(gt, 1, 3, 20, 12) == b"to the guest"
    assert read(gt, 2, 2, 0, 14) == b"from the guest"
    assert read(gt, 1, 4, 0, 12) == bytes(12)


def test_a_copy_through_a_grant_of_a_domain_gone_from_memory_is_bad_page(gt):
    gt.memory.add_domain(7, 4, 4)
    gt.add_domain(7)
    ref = grant(gt, 7, 2, 0, False)
    gt.memory.remove_domain(7)
    assert gt.copy(D2, [CopyOp(CopyPtr(7, ref=ref, use_gref=True), CopyPtr(SELF, gfn=0), 1)]) == [
        abi.GNTST_bad_page]


def test_an_unmap_batch_of_exactly_its_cap_runs(gt):
    from xenlab.hypervisor.grants import MAX_MAP_BATCH
    assert gt.unmap_batch(D2, [0] * MAX_MAP_BATCH) == [abi.GNTST_bad_handle] * MAX_MAP_BATCH

def test_the_granter_side_refuses_an_unknown_domain_with_esrch(gt):
    for call in (lambda: grant(gt, 9, 2, 3, False), lambda: end(gt, 9, 8),
                 lambda: gt.query(9), lambda: gt.entries(9), lambda: gt.mapped_by(9),
                 lambda: gt.maptrack_count(9), lambda: gt.mappings(9), lambda: gt.remove_domain(9),
                 lambda: gt.map(Caller(9), 1, 8, True), lambda: gt.unmap(Caller(9), 0),
                 lambda: gt.copy(Caller(9), [])):
        with pytest.raises(XenError) as err:
            call()
        assert err.value.errno == errno.ESRCH and not isinstance(err.value, GrantError)
        assert err.value.message == "no domain d9"


def test_a_second_grant_table_for_a_domain_is_eexist(gt):
    with pytest.raises(XenError) as err:
        gt.add_domain(1)
    assert err.value.errno == errno.EEXIST and gt.domains() == [0, 1, 2, 3]


def test_refusals_carry_their_gntst_and_words(gt):
    ro = grant(gt, 1, 2, 3, True)
    assert refusal(lambda: gt.map(D2, 1, ro, False)) == (
        abi.GNTST_general_error, f"d1: grant ref {ro} is read-only")
    assert refusal(lambda: gt.map(D3, 1, ro, True)) == (
        abi.GNTST_general_error, f"d1: grant ref {ro} is not granted to d3")
    assert refusal(lambda: gt.map(D2, 1, 512, True)) == (
        abi.GNTST_bad_gntref, "grant ref 512 is past d1's table of 512 entries")
    assert refusal(lambda: gt.map(D2, 1, -1, True))[0] == abi.GNTST_bad_gntref
    assert refusal(lambda: gt.map(D2, 1, 511, True))[0] == abi.GNTST_general_error
    assert refusal(lambda: gt.unmap(D2, 3)) == (
        abi.GNTST_bad_handle, "d2 has no grant mapping with handle 3")
    assert refusal(lambda: gt.map(D2, 8, ro, True)) == (abi.GNTST_bad_domain, "no domain d8")

def test_a_map_of_an_unpopulated_frame_is_bad_page(gt):
    ref = grant(gt, 1, 2, 3, True)
    gt.memory.decrease_reservation(1, [3])
    assert refusal(lambda: gt.map(D2, 1, ref, True)) == (
        abi.GNTST_bad_page, f"grant ref {ref} of d1 names a frame it cannot grant")
    assert gt.maptrack_count(2) == 0 and gt.query(1)["active_maps"] == 0
    assert gt.entry(1, ref).flags == abi.GTF_permit_access | abi.GTF_readonly   # pin undone


def test_a_grant_of_the_grant_frame_itself_is_bad_page(gt):
    [frame] = guest(gt, 1).gfns
    ref = grant(gt, 1, 2, frame, False)
    assert status_of(lambda: gt.map(D2, 1, ref, False)) == abi.GNTST_bad_page

def test_a_full_maptrack_says_how_many(gt):
    ref = grant(gt, 1, 2, 3, True)
    for _ in range(4):
        gt.map(D2, 1, ref, True)
    assert refusal(lambda: gt.map(D2, 1, ref, True)) == (
        abi.GNTST_no_device_space, "d2 holds 4 mappings already")


def test_freed_refs_and_handles_come_back_lowest_first(gt):
    refs = [grant(gt, 1, 2, 3, True) for _ in range(4)]
    end(gt, 1, refs[2])
    end(gt, 1, refs[0])
    assert [grant(gt, 1, 2, 3, True) for _ in range(3)] == [refs[0], refs[2], refs[3] + 1]
    handles = [gt.map(D2, 1, refs[1], True).handle for _ in range(4)]
    gt.unmap_batch(D2, [handles[3], handles[1]])
    assert [gt.map(D2, 1, refs[1], True).handle for _ in range(2)] == [1, 3]


def test_nr_frames_counts_the_frames_the_table_was_given(gt):
    gt.add_domain(7, max_frames=3)
    gt.memory.add_domain(7, 4, 4)
    assert gt.query(7)["nr_frames"] == 0
    gt.setup_table(7, [3])
    assert gt.query(7)["nr_frames"] == 1
    gt.setup_table(7, [3, 2])
    assert gt.query(7)["nr_frames"] == 2
    assert gt.query(7)["max_entries"] == 3 * 512 and gt.query(7)["max_frames"] == 3

def test_mappings_lists_every_mappers_or_one(gt):
    a = grant(gt, 1, 2, 3, True)
    b = grant(gt, 1, 3, 4, True)
    ma = gt.map(D2, 1, a, True)
    mb = gt.map(D3, 1, b, True)
    assert gt.mappings() == [ma, mb] and gt.mappings(3) == [mb] and gt.mappings(0) == []


def test_a_frame_mapped_both_ways_is_writable_until_the_writer_goes(gt):
    ref = grant(gt, 1, 2, 3, False)
    mfn = gt.memory.gfn_to_mfn(1, 3)
    r = gt.map(D2, 1, ref, True)
    w = gt.map(D2, 1, ref, False)
    view = gt.mapped_by(2)
    assert view[mfn] is False and mfn in view and list(view) == [mfn] and len(view) == 1
    gt.unmap(D2, w.handle)
    assert view[mfn] is True
    gt.unmap(D2, r.handle)
    assert mfn not in view and len(view) == 0


def test_a_copy_batch_resolves_each_frame_once(gt, monkeypatch):
    ref = grant(gt, 1, 2, 3, False)
    calls = []
    frame = gt.memory.frame

    def counting(domid, gfn):
        calls.append((domid, gfn))
        return frame(domid, gfn)
    monkeypatch.setattr(gt.memory, "frame", counting)
    ops = [CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(1, ref=ref, use_gref=True), 8)] * 50
    assert gt.copy(D2, ops) == [abi.GNTST_okay] * 50
    assert sorted(calls) == [(1, 3), (2, 0)]


def test_a_frame_the_memory_cannot_hand_over_is_a_general_error(gt, monkeypatch):
    def refusing(domid, gfn):
        raise XenError(errno.EFAULT, "no such frame")
    monkeypatch.setattr(gt.memory, "frame", refusing)
    ops = [CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(SELF, gfn=1), 8)] * 2
    assert gt.copy(D2, ops) == [abi.GNTST_general_error] * 2


def test_the_lowest_ref_is_in_the_table_and_below_it_is_not(gt):
    guest(gt, 1)
    assert refusal(lambda: gt.map(D2, 1, 0, True)) == (
        abi.GNTST_general_error, "d1: grant ref 0 is not granted to d2")
    assert refusal(lambda: gt.map(D2, 1, -1, True)) == (
        abi.GNTST_bad_gntref, "grant ref -1 is past d1's table of 512 entries")

def test_each_grant_keeps_its_access(gt):
    ro, rw = grant(gt, 1, 2, 3, True), grant(gt, 1, 2, 4, False)
    flags = {e.ref: e.flags for e in gt.entries(1)}
    assert flags == {ro: abi.GTF_permit_access | abi.GTF_readonly, rw: abi.GTF_permit_access}

def test_table_level_refusals_say_why(gt):
    from xenlab.hypervisor.grants import MAX_MAP_BATCH
    with pytest.raises(XenError) as err:
        gt.map_batch(D2, [(1, 8, True)] * (MAX_MAP_BATCH + 1))
    assert err.value.message == f"{MAX_MAP_BATCH + 1} ops in one call; at most {MAX_MAP_BATCH}"
    with pytest.raises(XenError) as err:
        gt.add_domain(1)
    assert err.value.message == "d1 already has a grant table"
    gt.add_domain(7, max_frames=1)
    gt.memory.add_domain(7, 4, 4)
    assert refusal(lambda: gt.setup_table(7, [0, 1])) == (
        abi.GNTST_general_error, "d7 asks for 2 grant frames; at most 1")

def test_a_domain_without_a_grant_table_may_free_its_frames(gt):
    gt.memory.add_domain(8, 16, 8)                 # memory, but no grant table (yet)
    gt.memory.decrease_reservation(8, [3])
    assert not gt.memory.is_populated(8, 3)


# -- the pins: what the hypervisor reads from the granter's frame, and when ----------------
def test_a_copy_lets_go_of_its_pins_when_the_batch_ends(gt):
    """acquire_grant_for_copy pins for the copy only: afterwards the flags
    are as the granter wrote them and it may end the grants."""
    rw, ro = grant(gt, 1, 2, 3), grant(gt, 1, 2, 4, True)
    fill(gt, 2, 0, b"data")
    assert gt.copy(D2, [CopyOp(CopyPtr(SELF, gfn=0), CopyPtr(1, ref=rw, use_gref=True), 4),
                        CopyOp(CopyPtr(1, ref=ro, use_gref=True), CopyPtr(SELF, gfn=1), 4)]) \
        == [abi.GNTST_okay, abi.GNTST_okay]
    assert gt.pinned(1) == {}
    assert gt.entry(1, rw).flags == abi.GTF_permit_access
    assert gt.entry(1, ro).flags == abi.GTF_permit_access | abi.GTF_readonly
    assert end(gt, 1, rw) and end(gt, 1, ro)


def test_a_copy_through_a_grant_to_oneself_names_the_granter_domid_self(gt):
    ref = grant(gt, 1, 1, 3)
    fill(gt, 1, 3, b"self")
    assert gt.copy(D1, [CopyOp(CopyPtr(SELF, ref=ref, use_gref=True), CopyPtr(SELF, gfn=4), 4)]) \
        == [abi.GNTST_okay]
    assert read(gt, 1, 4, 0, 4) == b"self"


def test_a_pinned_entry_is_not_read_again(gt):
    """Xen reads the shared entry on the first pin only (and on the first
    writable one): a granter that rewrites a mapped entry changes nothing
    for the mapper, and a second map does not touch the entry."""
    ref = grant(gt, 1, 2, 3, readonly=True)
    first = gt.map(D2, 1, ref, True)
    frames = guest(gt, 1).frames
    frames.grant(ref, 3, 5, readonly=True)            # regranted to d3, behind the pin
    frames._cells[0].store16(ref * 8, 0)                # and its flags cleared
    second = gt.map(D2, 1, ref, True)
    assert second.mfn == first.mfn == gt.memory.gfn_to_mfn(1, 3)
    assert gt.entry(1, ref).flags == 0                  # left as the granter wrote it
    assert refusal(lambda: gt.map(D3, 1, ref, True)) == (
        abi.GNTST_general_error, f"grant ref {ref} of d1 is not granted to d3")
    assert gt.query(1)["entries_in_use"] == 0


def test_a_pinned_entry_whose_type_the_granter_cleared_is_not_an_entry_in_use(gt):
    ref = grant(gt, 1, 2, 3)
    gt.map(D2, 1, ref, False)
    guest(gt, 1).frames._cells[0].store16(ref * 8, abi.GTF_reading)
    assert gt.query(1)["entries_in_use"] == 0
    assert [e.ref for e in gt.entries(1)] == [ref]      # still listed: it is pinned


def test_a_writable_map_of_an_unpopulated_frame_undoes_both_flags(gt):
    ref = grant(gt, 1, 2, 3)
    gt.memory.decrease_reservation(1, [3])
    assert status_of(lambda: gt.map(D2, 1, ref, False)) == abi.GNTST_bad_page
    assert gt.entry(1, ref).flags == abi.GTF_permit_access


def test_entry_reads_every_ref_of_the_table_and_none_past_it(gt):
    guest(gt, 1)
    assert gt.entry(1, 0) == GrantEntry(0, 0, 0, 0)
    assert gt.entry(1, 511).ref == 511
    assert gt.entry(1, 512) is None and gt.entry(1, -1) is None


def test_setup_table_refusals_say_why(gt):
    guest(gt, 1)
    [frame] = gt.grant_frames(1)
    assert refusal(lambda: gt.setup_table(1, [frame - 1])) == (
        abi.GNTST_general_error, f"d1's grant frames [{frame}] cannot move")
    assert refusal(lambda: gt.setup_table(1, [frame, 5, 5])) == (
        abi.GNTST_bad_page, "a grant frame is named twice")
    assert refusal(lambda: gt.setup_table(1, [frame, 99])) == (
        abi.GNTST_bad_page, "gfn 0x63 of d1 cannot be a grant frame: not populated, or one already")
    gt.map(D2, 1, grant(gt, 1, 2, 6), True)
    assert refusal(lambda: gt.setup_table(1, [frame, 6])) == (
        abi.GNTST_bad_page, "gfn 0x6 of d1 is mapped by another domain")
    assert gt.grant_frames(1) == [frame]


# -- GNTMAP_host_map | GNTMAP_contains_pte: the PTE goes with the grant ---------------------
def test_a_grant_map_with_a_pte_address_installs_the_pte_and_unmap_clears_it(gt):
    from xenlab.xen import paging as pg
    mem = gt.memory
    ref = grant(gt, 1, 2, 3, False)
    table = pin_table(gt, 2, 0)
    addr = table << abi.PAGE_SHIFT | 9 * 8
    m = gt.map(D2, 1, ref, readonly=False, pte_addr=addr)
    entry = mem.pinned_ptes(table)[9]
    assert pg.pte_frame(entry) == m.mfn == mem.gfn_to_mfn(1, 3) and entry & pg.PTE_RW
    assert bytes(mem.frame(2, 0)[9 * 8:10 * 8]) == entry.to_bytes(8, "little")
    # a writable mapping of the frame holds a WRITABLE type reference:
    # neither the mapping's own nor the PTE's lets the granter pin it
    assert mem.writable_count(m.mfn) == 2
    assert mem.mmuext(1, [("pin_l1", m.mfn)]) == (0, [-errno.EINVAL])
    gt.unmap(D2, m.handle)
    assert mem.pinned_ptes(table) == {} and bytes(mem.frame(2, 0)[9 * 8:10 * 8]) == bytes(8)
    assert mem.writable_count(m.mfn) == 0
    assert mem.mmuext(1, [("pin_l1", m.mfn)]) == (1, [0])


@pytest.mark.parametrize("where", ["not a table", "not the mapper's", "slot in use"])
def test_a_grant_map_with_a_bad_pte_address_is_refused_and_pins_nothing(gt, where):
    mem = gt.memory
    ref = grant(gt, 1, 2, 3, True)
    table = pin_table(gt, 2, 0)
    assert set_pte(gt, 2, table, 4, mem.gfn_to_mfn(2, 5), RO_PTE) == 0
    addr = {"not a table": mem.gfn_to_mfn(2, 1) << abi.PAGE_SHIFT,
            "not the mapper's": mem.gfn_to_mfn(3, 0) << abi.PAGE_SHIFT,
            "slot in use": table << abi.PAGE_SHIFT | 4 * 8}[where]
    assert status_of(lambda: gt.map(D2, 1, ref, True, pte_addr=addr)) == abi.GNTST_general_error
    assert gt.pinned(1) == {} and gt.maptrack_count(2) == 0
    assert end(gt, 1, ref)


def test_a_granters_page_table_is_never_mapped_writable(gt):
    ref = grant(gt, 1, 2, 3, False)
    pin_table(gt, 1, 3)
    assert status_of(lambda: gt.map(D2, 1, ref, readonly=False)) == abi.GNTST_general_error
    m = gt.map(D2, 1, ref, readonly=True)
    assert m.readonly and gt.pinned(1)[ref][2:] == (1, 0)
    # nor written by a copy while it is a table in force
    [status] = gt.copy(D2, [CopyOp(CopyPtr(SELF, gfn=1), CopyPtr(1, ref=ref, use_gref=True), 8)])
    assert status == abi.GNTST_general_error


def test_destroying_the_mapper_clears_its_grant_ptes(gt):
    mem = gt.memory
    ref = grant(gt, 1, 2, 3, False)
    table = pin_table(gt, 2, 0)
    m = gt.map(D2, 1, ref, readonly=False, pte_addr=table << abi.PAGE_SHIFT)
    gt.remove_domain(2)
    mem.remove_domain(2)
    assert mem.writable_count(m.mfn) == 0 and mem.pagetables.busy(m.mfn) is None
    assert end(gt, 1, ref)
    mem.decrease_reservation(1, [3])
