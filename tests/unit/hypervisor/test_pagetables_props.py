"""Property tests of the direct-paging validator (hypervisor/pagetables.py):
whatever sequence of mmu_update, mmuext_op, grant and scribbling calls two
guests make over a few frames, no page-table frame is ever mapped writable,
no frame is mapped that its mapper neither owns nor was granted, every type
count is what the validated tables hold, every refusal carries the errno
Xen's mm.c gives it, and a refused item leaves nothing changed."""
from __future__ import annotations

import errno
import struct

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenlab.hypervisor.pagetables import PageTables
from xenlab.testing_invariants import check_page_types
from xenlab.xen import paging as pg
from xenlab.xen.paging import PageType

D1 = list(range(0x100, 0x108))
D2 = list(range(0x110, 0x114))
FREE, XEN, MMIO = 0x120, 0x20, 0x42
OWNERS = {**{m: 1 for m in D1}, **{m: 2 for m in D2}}
FRAMES = D1 + D2 + [FREE]
INDEXES = st.integers(0, 3)

RW = pg.PTE_PRESENT | pg.PTE_RW
# Xen's disallow masks, written out again here (not imported): what the
# validator must refuse with EINVAL at each level.
L1_BAD = (1 << 3) | (1 << 4) | (1 << 7) | pg.PTE_GNTTAB
LN_BAD = (1 << 3) | (1 << 4) | (1 << 7) | pg.PTE_GLOBAL
FAST_L1 = pg.PTE_NX | (0x7FF << 52) | (0x7 << 9) | pg.PTE_GLOBAL | pg.PTE_AD | pg.PTE_USER
FLAGS = st.sampled_from([
    0, pg.PTE_PRESENT, RW, RW, RW | pg.PTE_USER, pg.PTE_PRESENT | pg.PTE_NX,
    RW | pg.PTE_ACCESSED | pg.PTE_DIRTY, RW | pg.PTE_GLOBAL, RW | pg.PTE_PSE,
    pg.PTE_PRESENT | (1 << 4), RW | pg.PTE_GNTTAB, RW | (1 << 52)])
TARGETS = st.sampled_from(FRAMES + [MMIO, XEN])
CMDS = st.sampled_from([pg.MMU_NORMAL_PT_UPDATE] * 6
                       + [pg.MMU_PT_UPDATE_PRESERVE_AD, pg.MMU_MACHPHYS_UPDATE, 5])
EXT = st.sampled_from(
    [pg.MMUEXT_PIN_L1_TABLE, pg.MMUEXT_PIN_L2_TABLE, pg.MMUEXT_PIN_L3_TABLE,
     pg.MMUEXT_PIN_L4_TABLE] * 3
    + [pg.MMUEXT_UNPIN_TABLE] * 4 + [pg.MMUEXT_NEW_BASEPTR] * 2
    + [pg.MMUEXT_NEW_USER_BASEPTR, pg.MMUEXT_TLB_FLUSH_LOCAL, pg.MMUEXT_INVLPG_ALL,
       pg.MMUEXT_FLUSH_CACHE, pg.MMUEXT_SET_LDT])
ANY_ERRNO = {0, -errno.EINVAL, -errno.EBUSY, -errno.EPERM}


class Validator(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.frames = {mfn: memoryview(bytearray(4096)) for mfn in FRAMES}
        self.pt = PageTables(self.frame, OWNERS.get, lambda mfn: mfn >= 0x100)
        self.foreign: dict[int, dict[int, bool]] = {1: {}, 2: {}}
        self.refusals = 0

    def frame(self, mfn: int) -> memoryview:
        try:
            return self.frames[mfn]
        except KeyError:
            raise LookupError(mfn) from None

    def snapshot(self):
        return ({m: (i.type, i.count, i.refs, i.pinned, i.entries and dict(i.entries))
                 for m, i in self.pt.frames().items()},
                self.pt.base_pointers(), self.pt.grant_ptes(),
                {m: bytes(v) for m, v in self.frames.items()})

    def outcome(self, status: int, expected: int | None, before) -> None:
        if expected is not None:
            assert status == expected, (status, expected)
        else:
            assert status in ANY_ERRNO, status
        if status:
            self.refusals += 1
            assert self.snapshot() == before, "a refused item changed something"

    # -- the oracle: what Xen answers, from facts a guest can see ------------------
    def expect_update(self, domid: int, table: int, index: int, val: int, cmd: int) -> int | None:
        if cmd not in (pg.MMU_NORMAL_PT_UPDATE, pg.MMU_PT_UPDATE_PRESERVE_AD):
            return -errno.ENOSYS
        if OWNERS.get(table) != domid:
            return -errno.EINVAL
        info = self.pt.info(table)
        if not info.validated or not val & pg.PTE_PRESENT:
            return 0
        level = int(info.type)
        if val & pg.PTE_FLAGS_MASK & (L1_BAD if level == 1 else LN_BAD):
            return -errno.EINVAL
        old = info.entries.get(index, 0)
        fast = FAST_L1 if level == 1 else FAST_L1 | pg.PTE_RW
        if old and not (old ^ val) & ~fast:
            return 0
        target = pg.pte_frame(val)
        t_info = self.pt.info(target)
        if level == 1:
            if target < 0x100:
                return -errno.EPERM
            mapped = self.foreign[domid]
            if OWNERS.get(target) != domid and not (
                    target in mapped and not (val & pg.PTE_RW and mapped[target])):
                return -errno.EBUSY
            if val & pg.PTE_RW and (target == table or (
                    t_info.count and t_info.type != PageType.WRITABLE)):
                return -errno.EBUSY
            return 0
        if OWNERS.get(target) != domid:
            return -errno.EINVAL
        if t_info.count:
            return 0 if t_info.type == PageType.table(level - 1) else -errno.EINVAL
        return None          # the target's validation decides

    def expect_ext(self, domid: int, cmd: int, arg: int) -> int | None:
        info = self.pt.info(arg)
        if cmd in pg.PIN_LEVEL:
            if OWNERS.get(arg) != domid or info.pinned:
                return -errno.EINVAL
            if info.count:
                return 0 if info.type == PageType.table(pg.PIN_LEVEL[cmd]) else -errno.EINVAL
            return None
        if cmd == pg.MMUEXT_UNPIN_TABLE:
            return 0 if OWNERS.get(arg) == domid and info.pinned else -errno.EINVAL
        if cmd in (pg.MMUEXT_NEW_BASEPTR, pg.MMUEXT_NEW_USER_BASEPTR):
            base, user = self.pt.base_pointers().get(domid, (None, None))
            if arg == (base if cmd == pg.MMUEXT_NEW_BASEPTR else user):
                return 0
            if OWNERS.get(arg) != domid:
                return -errno.EINVAL
            if info.count:
                return 0 if info.type == PageType.L4 else -errno.EINVAL
            return None
        if cmd == pg.MMUEXT_FLUSH_CACHE:
            return -errno.EACCES
        if cmd == pg.MMUEXT_SET_LDT:
            return -errno.ENOSYS
        return 0

    # -- rules -----------------------------------------------------------------------
    @rule(domid=st.sampled_from([1, 1, 2]), table=st.sampled_from(FRAMES + [XEN]),
          index=INDEXES, names=TARGETS, flags=FLAGS, cmd=CMDS)
    def mmu_update(self, domid, table, index, names, flags, cmd):
        val = pg.pte(names, flags) if flags else 0
        expected = self.expect_update(domid, table, index, val, cmd)
        before = self.snapshot()
        done, status = self.pt.mmu_update(domid, [(table << 12 | index * 8 | cmd, val)],
                                          self.foreign[domid])
        assert done == (0 if status[0] else 1)
        self.outcome(status[0], expected, before)

    @rule(domid=st.sampled_from([1, 1, 2]), cmd=EXT, arg=st.sampled_from(FRAMES + [XEN]))
    def mmuext(self, domid, cmd, arg):
        expected = self.expect_ext(domid, cmd, arg)
        before = self.snapshot()
        done, status = self.pt.mmuext(domid, [(cmd, arg)], self.foreign[domid])
        self.outcome(status[0], expected, before)

    @rule(items=st.lists(st.tuples(st.sampled_from(D1), INDEXES, TARGETS, FLAGS),
                         min_size=2, max_size=5))
    def batch(self, items):
        """A batch stops at its first refusal; what came before stays."""
        updates = [(t << 12 | i * 8, pg.pte(target, f) if f else 0) for t, i, target, f in items]
        done, status = self.pt.mmu_update(1, updates, self.foreign[1])
        assert status[:done] == [0] * done and len(status) in (done, done + 1)
        assert all(s in ANY_ERRNO for s in status)

    @rule(mfn=st.sampled_from(D1 + D2), index=INDEXES, names=TARGETS, flags=FLAGS)
    def scribble(self, mfn, index, names, flags):
        """The guest writing its own frame directly: only frames that are no
        table in force (its tables are read-only to it in Xen)."""
        if not self.pt.is_table(mfn):
            struct.pack_into("<Q", self.frames[mfn], index * 8, pg.pte(names, flags))

    @rule(mfn=st.sampled_from(D2), readonly=st.booleans())
    def grant(self, mfn, readonly):
        self.foreign[1][mfn] = readonly and self.foreign[1].get(mfn, True)

    @rule(mfn=st.sampled_from(D2))
    def ungrant(self, mfn):
        if self.foreign[1].pop(mfn, None) is not None:
            self.pt.revoke_foreign(1, mfn)

    @rule(table=st.sampled_from(D1), index=INDEXES, mfn=st.sampled_from(D2),
          readonly=st.booleans())
    def map_grant_pte(self, table, index, mfn, readonly):
        before = self.snapshot()
        info = self.pt.info(table)
        try:
            self.pt.map_grant_pte(1, table << 12 | index * 8, mfn, readonly)
        except Exception as err:
            t_info = self.pt.info(mfn)
            if info.type != PageType.L1 or not info.validated:
                assert err.errno == errno.EINVAL
            elif index in info.entries:
                assert err.errno == errno.EBUSY
            else:
                assert not readonly and t_info.count and t_info.type != PageType.WRITABLE
                assert err.errno == errno.EBUSY
            assert self.snapshot() == before

    @rule(data=st.data())
    def unmap_grant_pte(self, data):
        ptes = sorted(self.pt.grant_ptes(1))
        if ptes:
            assert self.pt.unmap_grant_pte(1, data.draw(st.sampled_from(ptes))) is True

    @rule()
    def destroy_d2(self):
        self.pt.forget_domain(2)
        assert all(OWNERS[m] != 2 for m in self.pt.pinned())

    # -- after every step ---------------------------------------------------------------
    @invariant()
    def type_counts_agree_with_the_tables(self):
        levels = {int(level) for level, _ in self.pt.tables().values()}
        event(f"deepest table in force: L{max(levels, default=0)}")
        assert check_page_types(self.pt, OWNERS.get, self.foreign.get, self.frame) == []

    @invariant()
    def no_writable_mapping_of_a_table(self):
        for table, (level, entries) in self.pt.tables().items():
            if level == PageType.L1:
                for val in entries.values():
                    if val & pg.PTE_RW:
                        assert not self.pt.is_table(pg.pte_frame(val))


Validator.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                       deadline=None)
TestValidator = Validator.TestCase
