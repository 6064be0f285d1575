"""One guest's paging in this process: frames as bytearrays, a P2M, the
hypervisor's side of the chosen mode behind an in-process backend, and the
guest's MMU and kernel paging (``domain/mmu.py``, ``domain/pagetable.py``).

``PagingMachine(mode, pages=N)`` boots the guest: its kernel address space
maps every guest frame at KERNEL_DIRECT_MAP (built before CR3 is loaded),
then loads CR3. Tests and the paging benchmark's in-process run then make
process address spaces with ``machine.space()`` and touch them through
``machine.kernel``.

The hypervisor's side is its real cores where they exist: direct mode's
validator (``hypervisor/pagetables.py``: Xen's page types and type counts)
and hap mode's nested P2M (``hypervisor/hap.py``, in a ``PagingPool``).
Shadow mode runs on the shadow code (``hypervisor/shadow.py``: shadows made
lazily one guest table at a time, in a PagingPool). ``MiniShadow`` stays as
a stand-in written to ShadowPaging's interface (docs/PAGING.md), not Xen's
algorithm: it rebuilds the whole shadow tree from the guest's tables on
every fill and emulates every write to a guest table reachable from CR3.
"""
from __future__ import annotations

import collections
import errno
import struct

from xenlab.domain.mmu import Mmu
from xenlab.hypervisor.hap import NestedP2M
from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.hypervisor.shadow import ShadowPaging
from xenlab.domain.pagetable import AddressSpace, GuestPaging
from xenlab.hypervisor.pagetables import PageTables
from xenlab.testing_invariants import check_page_types
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    ENTRIES, KERNEL_DIRECT_MAP, LEVELS, PFEC_PRESENT, PFEC_USER, PFEC_WRITE, PTE_ADDR_MASK, PTE_PRESENT, PTE_RW, PTE_USER, PagingMode, pte, va_index,
)

_ENTRY = struct.Struct("<Q")
DOMID = 1
FIRST_MFN = 0x100          # guest frames live at machine frames FIRST_MFN.. (shuffled)
POOL_MFN = 0x10000         # the hypervisor's paging pool


def _frame_of(val: int) -> int:
    return (val & PTE_ADDR_MASK) >> PAGE_SHIFT


class Frames(dict):
    """mfn -> a writable 4096-byte memoryview; a FrameView when called."""

    def add(self, mfn: int) -> memoryview:
        view = self[mfn] = memoryview(bytearray(PAGE_SIZE))
        return view

    def __call__(self, mfn: int) -> memoryview:
        return self[mfn]            # KeyError is a LookupError: "not reachable"

    def entry(self, mfn: int, index: int) -> int:
        return _ENTRY.unpack_from(self[mfn], index * 8)[0]

    def set_entry(self, mfn: int, index: int, val: int) -> None:
        _ENTRY.pack_into(self[mfn], index * 8, val)


def table_tree(frames: Frames, root: int, name=lambda f: f) -> dict[int, int]:
    """Every table frame under ``root`` (by what its entries name, mapped to
    an mfn by ``name``) -> its level."""
    found = {root: LEVELS}
    todo = [(root, LEVELS)]
    while todo:
        table, level = todo.pop()
        if level == 1:
            continue
        for index in range(ENTRIES):
            val = frames.entry(name(table), index)
            if val & PTE_PRESENT:
                child = _frame_of(val)
                if child not in found:
                    found[child] = level - 1
                    todo.append((child, level - 1))
    return found


# -- shadow -----------------------------------------------------------------------------------
class MiniShadow:
    """Shadow paging, reduced: the shadow of the guest's tree (in machine
    terms, in pool frames) is rebuilt whole on every fill; a guest table
    reachable from CR3 is mapped read-only in it, and a write to one is
    emulated."""

    def __init__(self, frames: Frames, p2m: dict[int, int]):
        self.frames, self.p2m = frames, p2m
        self.guest_root: int | None = None
        self.root: int | None = None
        self._pool_next = POOL_MFN
        self._pool_free: list[int] = []
        self._used: list[int] = []
        self.counters: collections.Counter = collections.Counter()
        self.tlb_flush_pending = False

    def take_tlb_flush(self) -> bool:
        pending, self.tlb_flush_pending = self.tlb_flush_pending, False
        return pending

    def _alloc(self) -> int:
        mfn = self._pool_free.pop() if self._pool_free else self._next()
        self.frames[mfn][:] = bytes(PAGE_SIZE)
        return mfn

    def _next(self) -> int:
        self._pool_next += 1
        self.frames.add(self._pool_next)
        return self._pool_next

    def _guest_tables(self) -> dict[int, int]:
        return table_tree(self.frames, self.guest_root, lambda gfn: self.p2m[gfn])

    def _rebuild(self) -> None:
        self._pool_free += self._used
        self._used = []
        self.frames[self.root][:] = bytes(PAGE_SIZE)
        tables = self._guest_tables()
        self._copy(self.guest_root, self.root, LEVELS, tables)
        self.counters["fills"] += 1
        self.tlb_flush_pending = True       # a whole new shadow: nothing cached holds

    def _copy(self, gtable: int, stable: int, level: int, tables: dict[int, int]) -> None:
        for index in range(ENTRIES):
            val = self.frames.entry(self.p2m[gtable], index)
            if not val & PTE_PRESENT:
                continue
            gfn = _frame_of(val)
            if gfn not in self.p2m:
                continue                        # a bad gfn: left out, the guest faults
            flags = val & ~PTE_ADDR_MASK
            if level == 1:
                if gfn in tables:
                    flags &= ~PTE_RW
                self.frames.set_entry(stable, index, pte(self.p2m[gfn], flags))
            else:
                child = self._alloc()
                self._used.append(child)
                self.frames.set_entry(stable, index, pte(child, flags))
                self._copy(gfn, child, level - 1, tables)

    def set_cr3(self, gfn: int) -> int:
        self.counters["traps"] += 1
        self.guest_root = gfn
        if self.root is None:
            self.root = self._next()
        self._rebuild()
        return self.root

    def _guest_walk(self, va: int, code: int):
        table = self.guest_root
        rw = user = True
        for level in range(LEVELS, 0, -1):
            val = self.frames.entry(self.p2m[table], va_index(va, level))
            if not val & PTE_PRESENT:
                return None
            rw &= bool(val & PTE_RW)
            user &= bool(val & PTE_USER)
            table = _frame_of(val)
        if (code & PFEC_WRITE and not rw) or (code & PFEC_USER and not user):
            return None
        return table

    def page_fault(self, va: int, code: int, value: bytes | None = None) -> str:
        self.counters["traps"] += 1
        gfn = self._guest_walk(va, code)
        if gfn is None:
            self.counters["injected"] += 1
            return "inject"
        if code & PFEC_WRITE and code & PFEC_PRESENT and gfn in self._guest_tables():
            if value is None:
                return "inject"
            offset = va & (PAGE_SIZE - 1)
            self.frames[self.p2m[gfn]][offset:offset + len(value)] = value
            self.counters["emulated_writes"] += 1
            self._rebuild()
            return "emulated"
        self._rebuild()
        return "fixed"


# -- the backend the guest calls --------------------------------------------------------------
class InProcessBackend:
    """PagingBackend over the hypervisor's side in this process, as domain
    ``domid``; ``mmu`` is the vCPU whose TLB an EPT change must flush."""

    def __init__(self, domid: int, mmu: Mmu, p2m: dict[int, int], pagetables=None,
                 shadow=None, nested=None):
        self.domid, self.mmu, self._p2m = domid, mmu, p2m
        self.pagetables, self.shadow, self.nested = pagetables, shadow, nested
        self.counters: collections.Counter = collections.Counter()

    def mmu_update(self, updates):
        self.counters["mmu_update"] += 1
        done, statuses = self.pagetables.mmu_update(self.domid, updates, {})
        _raise_refused("mmu_update", done, statuses)

    def mmuext(self, ops):
        self.counters["mmuext"] += 1
        done, statuses = self.pagetables.mmuext(self.domid, ops, {})
        _raise_refused("mmuext_op", done, statuses)

    def exit_page_fault(self, va, code, value):
        self.counters["exit_page_fault"] += 1
        try:
            return self.shadow.page_fault(va, code, value)
        finally:
            self._shadow_flush()

    def exit_cr3(self, gfn):
        self.counters["exit_cr3"] += 1
        try:
            return self.shadow.set_cr3(gfn)
        finally:
            self._shadow_flush()

    def _shadow_flush(self) -> None:
        """A frame newly write-protected, or a shadow entry gone: the vCPU's
        TLB may hold what no longer holds (Xen flushes the domain's TLBs)."""
        if self.shadow.take_tlb_flush():
            self.counters["tlb_flushes"] += 1
            self.mmu.flush()

    def exit_nested_fault(self, gpa, write):
        """An EPT violation: populate the entry from the P2M (as Xen's
        hvm_hap_nested_page_fault does for a p2m entry it has)."""
        self.counters["exit_nested_fault"] += 1
        gfn = gpa >> PAGE_SHIFT
        if gfn not in self._p2m:
            raise MemoryError_(errno.EFAULT, f"gpa {gpa:#x} is not in the guest's P2M")
        self.nested.set(gfn, self._p2m[gfn])
        if self.nested.take_tlb_flush():
            self.mmu.flush()


def _raise_refused(what: str, done: int, statuses: list[int]) -> None:
    """As the domain's typed hypercall layer raises a refusal."""
    if done < len(statuses):
        err = MemoryError_(-statuses[done], f"{what} item {done} refused")
        err.done = done
        raise err


class PagingMachine:
    """A booted guest in ``mode`` with ``pages`` frames; its kernel's direct
    map covers them all."""

    def __init__(self, mode: PagingMode | str, pages: int = 256, tlb_entries: int = 1536,
                 pool_pages: int | None = None):
        self.mode = PagingMode(mode)
        self.frames = Frames()
        # a shuffled P2M, so that a gfn taken for an mfn (or back) shows
        step = 7 if pages % 7 else 11
        self.p2m = {gfn: FIRST_MFN + (gfn * step) % pages for gfn in range(pages)}
        for mfn in self.p2m.values():
            self.frames.add(mfn)
        self._free = list(range(pages - 1, -1, -1))
        self._mfns = frozenset(self.p2m.values())
        self.pagetables = self.shadow = self.nested = self.pool = None
        self.mmu = Mmu(self.mode, self.frames, tlb_entries)
        if self.mode is PagingMode.DIRECT:
            self.pagetables = PageTables(self.frames, self.owner)
        elif self.mode is PagingMode.SHADOW:
            pool_pages = pool_pages or 8 + pages // 64
            for mfn in range(POOL_MFN, POOL_MFN + pool_pages):
                self.frames.add(mfn)
            self.pool = PagingPool(range(POOL_MFN, POOL_MFN + pool_pages), self.frames)
            p2m = self.p2m
            self.shadow = ShadowPaging(DOMID, self.pool, p2m.get,
                                       lambda gfn: self.frames[p2m[gfn]])
        else:
            self.pool = self._pool(pool_pages or 8 + pages // 256)
            self.nested = NestedP2M(self.pool)
            for gfn, mfn in self.p2m.items():
                self.nested.set(gfn, mfn)
            self.mmu.eptp = self.nested.root
        self.backend = InProcessBackend(DOMID, self.mmu, self.p2m, self.pagetables,
                                        self.shadow, self.nested)
        self.kernel = GuestPaging(self.mode, self.mmu, self.backend, self.p2m.__getitem__,
                                  self.alloc_frame, self.free_frame)
        self.kernel_space = AddressSpace(self.kernel, user=False)
        self.kernel_space.map_many([(KERNEL_DIRECT_MAP + (gfn << PAGE_SHIFT), gfn, True)
                                    for gfn in range(pages)])
        self.kernel_space.activate()

    def _pool(self, pages: int) -> PagingPool:
        for mfn in range(POOL_MFN, POOL_MFN + pages):
            self.frames.add(mfn)
        return PagingPool(range(POOL_MFN, POOL_MFN + pages), self.frames)

    def owner(self, mfn: int) -> int | None:
        return DOMID if mfn in self._mfns else None

    def check(self) -> list[str]:
        """The hypervisor's invariants over this guest (direct mode: Xen's
        page types, testing_invariants.check_page_types); [] when they hold."""
        if self.pagetables is None:
            return []
        return check_page_types(self.pagetables, self.owner, frame=self.frames)

    def alloc_frame(self) -> int:
        if not self._free:
            raise MemoryError_(errno.ENOMEM, "the guest is out of frames")
        return self._free.pop()

    def free_frame(self, gfn: int) -> None:
        if gfn in self._free or gfn not in self.p2m:
            raise ValueError(f"gfn {gfn} freed twice or never the guest's")
        self._free.append(gfn)

    @property
    def free_frames(self) -> int:
        return len(self._free)

    def space(self) -> AddressSpace:
        """A new process address space."""
        return AddressSpace(self.kernel, user=True)

    def counters(self) -> collections.Counter:
        """The guest's, the MMU's and the hypervisor side's counters."""
        c = collections.Counter()
        c.update({f"mmu.{k}": v for k, v in self.mmu.counters.items()})
        c.update({f"kernel.{k}": v for k, v in self.kernel.counters.items()})
        c.update({f"backend.{k}": v for k, v in self.backend.counters.items()})
        if self.pagetables is not None:
            c.update({f"direct.{k}": v for k, v in self.pagetables.stats(DOMID).items()})
        for name in ("shadow", "nested"):
            core = getattr(self, name)
            if core is not None:
                c.update({f"{name}.{k}": v for k, v in core.counters.items()})
        if self.pool is not None:
            c["pool.used"] = self.pool.used
        return c


__all__ = ["PagingMachine", "Frames", "MiniShadow", "InProcessBackend", "table_tree"]
