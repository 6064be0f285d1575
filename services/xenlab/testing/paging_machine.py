"""One guest's paging in this process: frames as bytearrays, a P2M, the
hypervisor's side of the chosen mode behind an in-process backend, and the
guest's MMU and kernel paging (``domain/mmu.py``, ``domain/pagetable.py``).

``PagingMachine(mode, pages=N)`` boots the guest: its kernel address space
maps every guest frame at KERNEL_DIRECT_MAP (built before CR3 is loaded),
then loads CR3. Tests and the paging benchmark's in-process run then make
process address spaces with ``machine.space()`` and touch them through
``machine.kernel``.

The hypervisor's side is its real cores: direct mode's validator
(``hypervisor/pagetables.py``: Xen's page types and type counts), shadow
mode's ``ShadowPaging`` (``hypervisor/shadow.py``) and hap mode's
``NestedP2M`` (``hypervisor/hap.py``), the last two in a ``PagingPool``;
``InProcessBackend`` calls them as the hypervisor's paging service would.
"""
from __future__ import annotations

import collections
import errno
import struct

from xenlab.domain.mmu import Mmu
from xenlab.domain.pagetable import AddressSpace, GuestPaging
from xenlab.hypervisor.hap import NestedP2M
from xenlab.hypervisor.pagetables import PageTables
from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.hypervisor.shadow import ShadowPaging
from xenlab.testing_invariants import check_page_types
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import KERNEL_DIRECT_MAP, PagingMode

_ENTRY = struct.Struct("<Q")
DOMID = 1
FIRST_MFN = 0x100          # guest frames live at machine frames FIRST_MFN.. (shuffled)
POOL_MFN = 0x10000         # the hypervisor's paging pool


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

    def pagetable_dying(self, gfn):
        self.counters["pagetable_dying"] += 1
        self.shadow.pagetable_dying(gfn)
        self._shadow_flush()

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
        self._readonly: dict[int, memoryview] = {}
        self.mmu = Mmu(self.mode, self.vcpu_frame, tlb_entries)
        if self.mode is PagingMode.DIRECT:
            self.pagetables = PageTables(self.frames, self.owner)
        elif self.mode is PagingMode.SHADOW:
            self.pool = self._pool(pool_pages or 16 + pages // 8)
            self.shadow = ShadowPaging(DOMID, self.pool, self.p2m.get, self._guest_frame)
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
            self._readonly[mfn] = self.frames.add(mfn).toreadonly()
        return PagingPool(range(POOL_MFN, POOL_MFN + pages), self.frames)

    def vcpu_frame(self, mfn: int) -> memoryview:
        """The domain's FrameView: its own frames writable, the paging pool
        (shadows, the nested P2M) read-only, as the domain maps it."""
        view = self._readonly.get(mfn)
        return self.frames[mfn] if view is None else view

    def _guest_frame(self, gfn: int) -> memoryview:
        return self.frames[self.p2m[gfn]]

    def owner(self, mfn: int) -> int | None:
        return DOMID if mfn in self._mfns else None

    def check(self) -> list[str]:
        """The hypervisor's invariants over this guest, [] when they hold:
        Xen's page types (direct: testing_invariants.check_page_types), every
        shadow against the guest's tables (shadow: ShadowPaging.audit)."""
        if self.pagetables is not None:
            return check_page_types(self.pagetables, self.owner, frame=self.frames)
        if self.shadow is not None:
            return self.shadow.audit()
        return []

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


__all__ = ["PagingMachine", "Frames", "InProcessBackend", "DOMID"]
