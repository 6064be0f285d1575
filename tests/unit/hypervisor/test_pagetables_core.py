"""hypervisor/pagetables.py on plain bytearrays: each of Xen's direct-paging
rules, with the errno x86 mm.c gives its refusal."""
from __future__ import annotations

import errno
import struct

import pytest

from xenlab.hypervisor.pagetables import PageTables
from xenlab.testing_invariants import check_page_types
from xenlab.xen import paging as pg
from xenlab.xen.paging import PageType, pte

P = pg.PTE_PRESENT
RW = P | pg.PTE_RW
D1 = list(range(0x100, 0x110))       # d1's frames
D2 = list(range(0x110, 0x114))       # d2's
FREE = 0x120                         # RAM no one owns
MMIO = 0x42                          # not RAM


class Host:
    """Frames, owners and a PageTables over them, as MachineMemory wires it."""

    def __init__(self):
        self.frames = {mfn: memoryview(bytearray(4096)) for mfn in D1 + D2 + [FREE]}
        self.owners = {**{m: 1 for m in D1}, **{m: 2 for m in D2}}
        self.pt = PageTables(self.frame, self.owners.get, lambda mfn: mfn >= 0x100)

    def frame(self, mfn: int) -> memoryview:
        try:
            return self.frames[mfn]
        except KeyError:
            raise LookupError(mfn) from None

    def write(self, table: int, index: int, val: int) -> None:
        """The guest writing its own (not yet validated) frame directly."""
        struct.pack_into("<Q", self.frames[table], index * 8, val)

    def read(self, table: int, index: int) -> int:
        return struct.unpack_from("<Q", self.frames[table], index * 8)[0]

    def update(self, domid, table, index, val, foreign=None, cmd=pg.MMU_NORMAL_PT_UPDATE):
        return self.pt.mmu_update(domid, [(table << 12 | index * 8 | cmd, val)], foreign or {})

    def ext(self, domid, *ops, foreign=None):
        return self.pt.mmuext(domid, list(ops), foreign)

    def check(self, foreign=None) -> None:
        assert check_page_types(self.pt, self.owners.get, lambda d: (foreign or {}).get(d, {}),
                                self.frame) == []


@pytest.fixture
def h():
    return Host()


def tree(h: Host, l4=D1[0], l3=D1[1], l2=D1[2], l1=D1[3]) -> tuple[int, int, int, int]:
    """A 4-level tree written straight into d1's frames (as a kernel builds
    its tables before pinning them): L4[0] -> L3[0] -> L2[0] -> L1."""
    h.write(l4, 0, pte(l3, RW))
    h.write(l3, 0, pte(l2, RW))
    h.write(l2, 0, pte(l1, RW))
    return l4, l3, l2, l1


# -- recursive validation at pin -------------------------------------------------
def test_pinning_an_l4_validates_the_whole_tree(h):
    l4, l3, l2, l1 = tree(h)
    h.write(l1, 5, pte(D1[8], RW))
    h.write(l1, 6, pte(l1, P))                    # the table itself, read-only
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (1, [0])
    types = {m: (h.pt.info(m).type, h.pt.info(m).count) for m in (l4, l3, l2, l1, D1[8])}
    assert types == {l4: (PageType.L4, 1), l3: (PageType.L3, 1), l2: (PageType.L2, 1),
                     l1: (PageType.L1, 1), D1[8]: (PageType.WRITABLE, 1)}
    assert h.pt.info(l1).refs == 2 and h.pt.stats(1)["validations"] == 4
    h.check()


def test_a_bad_entry_deep_in_the_tree_fails_the_pin_and_leaves_nothing_taken(h):
    l4, l3, l2, l1 = tree(h)
    h.write(l1, 0, pte(D1[8], RW))
    h.write(l1, 9, pte(D2[0], P))                 # d2's frame, not granted
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (0, [-errno.EBUSY])
    assert h.pt.frames() == {} and h.pt.pinned() == {}
    h.check()


def test_type_conflict_refuses_a_second_level(h):
    l4, l3, l2, l1 = tree(h)
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (1, [0])
    # l1 is an L1 in use: it cannot be pinned as an L2, nor named by an L3 entry
    assert h.ext(1, (pg.MMUEXT_PIN_L2_TABLE, l1)) == (0, [-errno.EINVAL])
    assert h.update(1, l3, 1, pte(l1, RW)) == (0, [-errno.EINVAL])
    # but another L2 may name it (an L1 shared by two L2s: type count 2)
    assert h.update(1, l2, 1, pte(l1, RW)) == (1, [0])
    assert h.pt.info(l1).count == 2
    h.check()


def test_a_frame_mapped_writable_cannot_become_a_table_and_back(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    assert h.update(1, l1, 0, pte(D1[9], RW)) == (1, [0])
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, D1[9])) == (0, [-errno.EINVAL])
    assert h.update(1, l1, 0, pte(D1[9], P)) == (1, [0])       # now read-only
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, D1[9])) == (1, [0])
    assert h.update(1, l1, 1, pte(D1[9], RW)) == (0, [-errno.EBUSY])
    h.check()


@pytest.mark.parametrize("level", [2, 3, 4])
def test_linear_page_tables_are_refused(h, level):
    """An entry naming a table of its own level (the self-map Xen allows
    read-only with pv-linear-pt): refused here, as with pv-linear-pt=0."""
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    table = {4: l4, 3: l3, 2: l2}[level]
    for target in (table, {4: l4, 3: l3, 2: l2}[level]):
        assert h.update(1, table, 7, pte(target, P)) == (0, [-errno.EINVAL])
    # written into a frame before its pin: the pin fails the same way
    h.write(D1[10], 3, pte(D1[10], P))
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE + level - 1, D1[10])) == (0, [-errno.EINVAL])
    h.check()


@pytest.mark.parametrize("level, flag", [
    (1, 1 << 3), (1, 1 << 4), (1, pg.PTE_PSE), (1, pg.PTE_GNTTAB),   # PWT, PCD, PAT, GNTTAB
    (2, pg.PTE_PSE), (3, pg.PTE_PSE), (4, pg.PTE_PSE), (2, pg.PTE_GLOBAL), (4, 1 << 4)])
def test_reserved_bits_are_refused(h, level, flag):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    table, target = {1: (l1, D1[8]), 2: (l2, D1[8]), 3: (l3, D1[8]), 4: (l4, D1[8])}[level]
    assert h.update(1, table, 9, pte(target, RW | flag)) == (0, [-errno.EINVAL])
    assert h.read(table, 9) == 0
    h.check()


def test_l1_global_user_nx_and_avail_bits_are_allowed(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    val = pte(D1[8], RW | pg.PTE_GLOBAL | pg.PTE_USER | pg.PTE_NX | 0x7 << 9 | 1 << 52)
    assert h.update(1, l1, 9, val) == (1, [0])


@pytest.mark.parametrize("ptr_frame, val, err", [
    (D2[0], 0, errno.EINVAL),                    # the entry is in d2's frame
    (FREE, 0, errno.EINVAL),                     # in a free frame
    (0x20, 0, errno.EINVAL),                     # in Xen's own
    (D1[3], pte(MMIO, P), errno.EPERM),          # not RAM
    (D1[3], pte(FREE, P), errno.EBUSY),          # a free frame
    (D1[3], pte(D2[1], P), errno.EBUSY),         # another domain's, not granted
    (D1[3], pte(D1[2], RW), errno.EBUSY),        # an L2 in use, writable
    (D1[2], pte(D2[1], RW), errno.EINVAL),       # an L2 entry naming d2's frame
    (D1[2], pte(FREE, RW), errno.EINVAL),
    (D1[2], pte(D1[8], RW), errno.EINVAL),       # a frame mapped writable is no L1
])
def test_each_refusal_carries_xens_errno(h, ptr_frame, val, err):
    l4, l3, l2, l1 = tree(h)
    h.write(l1, 0, pte(D1[8], RW))
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    before = h.pt.frames()
    assert h.update(1, ptr_frame, 3, val) == (0, [-err])
    assert h.pt.frames() == before
    h.check()


def test_foreign_frames_need_a_grant_writable_to_map_writable(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    foreign = {D2[0]: True, D2[1]: False}
    assert h.update(1, l1, 1, pte(D2[0], P), foreign) == (1, [0])
    assert h.update(1, l1, 2, pte(D2[0], RW), foreign) == (0, [-errno.EBUSY])
    assert h.update(1, l1, 2, pte(D2[1], RW), foreign) == (1, [0])
    assert h.pt.revoke_foreign(1, D2[1]) == 1 and h.read(l1, 2) == 0
    h.check({1: foreign})


def test_unpin_drops_every_reference_the_tree_held(h):
    l4, l3, l2, l1 = tree(h)
    h.write(l1, 0, pte(D1[8], RW))
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4), (pg.MMUEXT_PIN_L1_TABLE, l1))
    assert h.ext(1, (pg.MMUEXT_UNPIN_TABLE, l4)) == (1, [0])
    # the L1 stays (its own pin), the rest is gone
    assert set(h.pt.frames()) == {l1, D1[8]}
    assert h.pt.info(l1).count == 1 and h.pt.busy(l2) is None
    assert h.ext(1, (pg.MMUEXT_UNPIN_TABLE, l4)) == (0, [-errno.EINVAL])      # not pinned
    assert h.ext(2, (pg.MMUEXT_UNPIN_TABLE, l1)) == (0, [-errno.EINVAL])      # not d2's
    assert h.ext(1, (pg.MMUEXT_UNPIN_TABLE, l1)) == (1, [0])
    assert h.pt.frames() == {}
    h.check()


def test_pin_twice_is_refused(h):
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, D1[5])) == (1, [0])
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, D1[5])) == (0, [-errno.EINVAL])
    assert h.ext(2, (pg.MMUEXT_PIN_L1_TABLE, D1[6])) == (0, [-errno.EINVAL])  # not d2's
    assert h.pt.info(D1[5]).count == 1


def test_new_baseptr_swaps_the_type_refs(h):
    l4, l3, l2, l1 = tree(h)
    other = D1[12]
    h.write(other, 1, pte(l3, RW))
    assert h.ext(1, (pg.MMUEXT_NEW_BASEPTR, l4)) == (1, [0])
    assert h.pt.baseptr(1) == l4 and h.pt.info(l4).count == 1 and h.pt.info(l3).count == 1
    assert h.ext(1, (pg.MMUEXT_NEW_BASEPTR, other)) == (1, [0])
    # the old root went when it lost its last reference; l3 is shared across
    assert h.pt.baseptr(1) == other and h.pt.info(l4).count == 0
    assert h.pt.info(l3).count == 1 and h.pt.info(other).type == PageType.L4
    # an L1 in use (under other's tree) is no L4: the old base stays loaded
    assert h.ext(1, (pg.MMUEXT_NEW_BASEPTR, l1)) == (0, [-errno.EINVAL])
    assert h.pt.baseptr(1) == other and h.pt.info(other).count == 1
    h.check()


def test_new_baseptr_refusals(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    assert h.ext(1, (pg.MMUEXT_NEW_BASEPTR, l3)) == (0, [-errno.EINVAL])     # an L3
    assert h.ext(2, (pg.MMUEXT_NEW_BASEPTR, l4)) == (0, [-errno.EINVAL])     # not d2's
    h.write(D1[13], 0, pte(D2[0], RW))
    assert h.ext(1, (pg.MMUEXT_NEW_BASEPTR, D1[13])) == (0, [-errno.EINVAL])
    assert h.pt.baseptr(1) is None and h.pt.baseptr(2) is None
    h.check()


def test_flushes_and_invlpg_are_counted_and_cache_flush_refused(h):
    ops = [(pg.MMUEXT_TLB_FLUSH_LOCAL, 0), (pg.MMUEXT_TLB_FLUSH_ALL, 0),
           (pg.MMUEXT_INVLPG_LOCAL, pg.USER_BASE), (pg.MMUEXT_INVLPG_ALL, 1 << 60),
           (pg.MMUEXT_FLUSH_CACHE, 0)]
    assert h.ext(1, *ops) == (4, [0, 0, 0, 0, -errno.EACCES])
    stats = h.pt.stats(1)
    assert stats["tlb_flushes"] == 2 and stats["invlpgs"] == 1       # non-canonical: none
    assert stats["mmuext_calls"] == stats["hypercalls"] == 1 and stats["mmuext_ops"] == 4
    assert stats["refusals"] == 1
    assert h.ext(1, (99, 0)) == (0, [-errno.ENOSYS])


def test_a_failed_batch_item_leaves_nothing_half_done(h):
    """An L3 entry whose L2 fails validation deep down: the L2 (and the L1
    under it, validated first) are taken back; earlier items stay done."""
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    new_l2, new_l1 = D1[10], D1[11]
    h.write(new_l2, 0, pte(new_l1, RW))
    h.write(new_l1, 0, pte(D1[9], RW))
    h.write(new_l1, 1, pte(new_l2, RW))           # the L2 above it, writable: refused
    before = {m: (i.type, i.count, i.refs) for m, i in h.pt.frames().items()}
    done, status = h.pt.mmu_update(1, [(l1 << 12 | 8, pte(D1[8], P)),
                                       (l3 << 12 | 16, pte(new_l2, RW)),
                                       (l1 << 12 | 24, pte(D1[8], P))], {})
    assert (done, status) == (1, [0, -errno.EBUSY])
    after = {m: (i.type, i.count, i.refs) for m, i in h.pt.frames().items()}
    assert after == {**before, D1[8]: (PageType.NONE, 0, 1)}
    assert h.read(l3, 2) == 0 and h.read(l1, 3) == 0
    h.check()


def test_updates_of_a_frame_that_is_no_table_are_plain_writes(h):
    """Xen's writable_mmu_updates: an entry in a frame with no table type
    in force is just a write (validated when the frame is pinned)."""
    assert h.update(1, D1[5], 0, pte(D2[0], RW)) == (1, [0])
    assert h.read(D1[5], 0) == pte(D2[0], RW) and h.pt.frames() == {}
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, D1[5])) == (0, [-errno.EBUSY])


def test_preserve_ad_keeps_the_bits_the_mmu_set(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    h.update(1, l1, 4, pte(D1[8], RW))
    h.write(l1, 4, pte(D1[8], RW | pg.PTE_ACCESSED | pg.PTE_DIRTY))      # the MMU's A/D
    assert h.update(1, l1, 4, pte(D1[8], RW | pg.PTE_NX),
                    cmd=pg.MMU_PT_UPDATE_PRESERVE_AD) == (1, [0])
    assert h.read(l1, 4) == pte(D1[8], RW | pg.PTE_NX | pg.PTE_AD)
    assert h.pt.info(D1[8]).count == 1
    h.check()


def test_busy_frames_and_forget_domain(h):
    l4, l3, l2, l1 = tree(h)
    h.write(l1, 0, pte(D2[0], P))
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (0, [-errno.EBUSY])     # no grant
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4), (pg.MMUEXT_NEW_BASEPTR, l4),
                 foreign={D2[0]: True}) == (2, [0, 0])
    assert "pinned" in h.pt.busy(l4) and "type reference" in h.pt.busy(l3)
    assert "mapped by 1 page-table entry" in h.pt.busy(D2[0])
    h.pt.forget_domain(1)
    assert h.pt.frames() == {} and h.pt.baseptr(1) is None and h.pt.busy(D2[0]) is None


# -- grant PTEs ------------------------------------------------------------------------
def test_grant_pte_install_and_remove(h):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    addr = l1 << 12 | 20 * 8
    val = h.pt.map_grant_pte(1, addr, D2[2], readonly=False)
    assert h.read(l1, 20) == val and pg.pte_frame(val) == D2[2] and val & pg.PTE_GNTTAB
    assert h.pt.info(D2[2]).type == PageType.WRITABLE and h.pt.grant_ptes() == {addr: 1}
    h.check()
    # the guest cannot forge one, nor reuse the slot
    assert h.update(1, l1, 21, val) == (0, [-errno.EINVAL])
    with pytest.raises(Exception) as e:
        h.pt.map_grant_pte(1, addr, D2[3], readonly=True)
    assert e.value.errno == errno.EBUSY
    assert h.pt.unmap_grant_pte(1, addr) is True
    assert h.read(l1, 20) == 0 and h.pt.info(D2[2]).count == 0 and h.pt.grant_ptes() == {}
    assert h.pt.unmap_grant_pte(1, addr) is False
    h.check()


@pytest.mark.parametrize("where", ["l2", "unpinned", "d2", "misaligned"])
def test_grant_pte_needs_a_validated_l1_of_the_mapper(h, where):
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    addr = {"l2": l2 << 12, "unpinned": D1[9] << 12, "d2": D2[0] << 12,
            "misaligned": l1 << 12 | 3}[where]
    with pytest.raises(Exception) as e:
        h.pt.map_grant_pte(1, addr, D2[2], readonly=True)
    assert e.value.errno == errno.EINVAL and h.pt.grant_ptes() == {}
    h.check()


def test_a_grant_pte_goes_with_its_table(h):
    """Revocation by devalidation: unpinning the tree clears the grant PTE
    in the frame too, so a later pin cannot bring it back."""
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    addr = l1 << 12 | 8
    h.pt.map_grant_pte(1, addr, D2[2], readonly=True)
    h.ext(1, (pg.MMUEXT_UNPIN_TABLE, l4))
    assert h.read(l1, 1) == 0 and h.pt.grant_ptes() == {}
    assert h.pt.unmap_grant_pte(1, addr) is False
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (1, [0])
    h.check()


def test_a_writable_grant_pte_of_a_granters_page_table_is_refused(h):
    h.ext(2, (pg.MMUEXT_PIN_L1_TABLE, D2[0]))
    l4, l3, l2, l1 = tree(h)
    h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4))
    with pytest.raises(Exception) as e:
        h.pt.map_grant_pte(1, l1 << 12 | 8, D2[0], readonly=False)
    assert e.value.errno == errno.EBUSY and h.read(l1, 1) == 0
    h.pt.map_grant_pte(1, l1 << 12 | 8, D2[0], readonly=True)
    with pytest.raises(Exception) as e:
        h.pt.hold_writable(D2[0])
    assert e.value.errno == errno.EBUSY
    h.check()


def test_the_validation_work_of_one_call_is_capped(h):
    """Xen preempts a long validation; here one call may validate at most
    max_validations tables, and a refused pin takes back all it validated.
    Pinning the lower levels first keeps each call within the cap."""
    h.pt.max_validations = 3
    l4, l3, l2, l1 = tree(h)
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (0, [-errno.E2BIG])
    assert h.pt.frames() == {}
    assert h.ext(1, (pg.MMUEXT_PIN_L2_TABLE, l2)) == (1, [0])
    assert h.ext(1, (pg.MMUEXT_PIN_L4_TABLE, l4)) == (1, [0])
    assert h.pt.stats(1)["validations"] == 4
    h.check()


def test_a_frame_that_is_not_reachable_is_refused_not_a_crash(h):
    """FrameView raising LookupError: the frame is not reachable here."""
    h.owners[0x130] = 1                      # owned, but no bytes behind it
    assert h.ext(1, (pg.MMUEXT_PIN_L1_TABLE, 0x130)) == (0, [-errno.EINVAL])
    assert h.update(1, 0x130, 0, 0) == (0, [-errno.EINVAL])
    assert h.pt.frames() == {}
