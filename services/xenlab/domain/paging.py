"""The domain kernel's paging: its MMU over its own frames, its own address
space (the direct map), and the workloads run on it.

At boot the kernel maps every frame it has at ``KERNEL_DIRECT_MAP + gfn *
4096`` (Linux x86-64's direct map) in an address space of its own, then loads
it into CR3, as a PV Linux extends the tables Xen's domain builder gave it
(xen_setup_kernel_pagetable, init_mem_mapping) before it runs anything else.
From then on ``frame(gfn)`` is an access through the MMU: the frame's
direct-map address is translated once (a TLB hit after the first), and the
caller gets a view of the machine frame it names; drivers keep their views,
so the data path pays one translation per page it sets up, never per byte.

The balloon unmaps a frame's direct-map entry before the frame goes back to
the hypervisor, and maps each frame it gets (a new mfn in direct mode), so a
page the domain no longer has is a page fault, not a silent write.

``DomainFrames`` is the MMU's way to memory (a FrameView): the domain's own
frames by mfn (the inverse of its P2M, as a PV guest keeps its p2m and reads
Xen's M2P), and machine frames mapped into it from elsewhere (its paging
pool, read-only; grant mappings).

Workloads (xenlab.domain.paging_workloads) run on the kernel's vCPU, in
user address spaces of their own, as a process it schedules: synchronously
(nothing else runs on the vCPU meanwhile), and the kernel's address space is
loaded back when they end.

No I/O: the backend (the hypervisor, as the guest reaches it) is handed in.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

from xenlab.domain.mmu import Mmu, PageFault
from xenlab.domain.paging_workloads import WorkloadResult, run_workloads
from xenlab.domain.pagetable import AddressSpace, GuestPaging, PagingBackend
from xenlab.xen.abi import PAGE_SIZE
from xenlab.xen.paging import KERNEL_DIRECT_MAP, PagingMode


def direct_map_va(gfn: int) -> int:
    """Where the kernel reaches its frame ``gfn`` (Linux's __va)."""
    return KERNEL_DIRECT_MAP + gfn * PAGE_SIZE


class DomainFrames:
    """mfn -> a view of that machine frame, for the frames this domain can
    reach: its own (through its P2M's inverse) and those mapped into it."""

    def __init__(self, raw_frame: Callable[[int], memoryview], p2m: Mapping[int, int]):
        """``raw_frame(gfn)``: the bytes of the domain's frame ``gfn`` in its
        memory object (no MMU); ``p2m``: gfn -> mfn of its populated frames."""
        self._raw = raw_frame
        self._p2m: dict[int, int] = dict(p2m)
        self._m2p: dict[int, int] = {mfn: gfn for gfn, mfn in self._p2m.items()}
        self._mapped: dict[int, memoryview] = {}

    def __call__(self, mfn: int) -> memoryview:
        gfn = self._m2p.get(mfn)
        if gfn is not None:
            return self._raw(gfn)
        view = self._mapped.get(mfn)
        if view is None:
            raise LookupError(f"machine frame {mfn:#x} is not this domain's nor mapped into it")
        return view

    def mfn(self, gfn: int) -> int:
        try:
            return self._p2m[gfn]
        except KeyError:
            raise LookupError(f"gfn {gfn} is not populated") from None

    def gfns(self) -> list[int]:
        return sorted(self._p2m)

    def populated(self, p2m: Mapping[int, int]) -> None:
        """Frames the hypervisor populated (the balloon's new frames)."""
        for gfn, mfn in p2m.items():
            old = self._p2m.pop(gfn, None)
            if old is not None:
                self._m2p.pop(old, None)
            self._p2m[gfn] = mfn
            self._m2p[mfn] = gfn

    def released(self, gfns: Iterable[int]) -> None:
        for gfn in gfns:
            mfn = self._p2m.pop(gfn, None)
            if mfn is not None:
                self._m2p.pop(mfn, None)

    def map_machine(self, mfn: int, view: memoryview) -> None:
        """A machine frame that is not the domain's, mapped into it."""
        self._mapped[mfn] = view

    def unmap_machine(self, mfn: int) -> None:
        self._mapped.pop(mfn, None)


class KernelPaging:
    """One domain kernel's paging, in its domain's mode."""

    def __init__(self, mode: PagingMode, frames: DomainFrames, backend: PagingBackend,
                 alloc_frames: Callable[[int], list[int]], free_frames: Callable[[list[int]], None],
                 eptp: int | None = None, clock: Callable[[], float] = time.perf_counter):
        self.mode = PagingMode(mode)
        self.frames = frames
        self.backend = backend
        self._alloc_frames = alloc_frames
        self._free_frames = free_frames
        self._eptp = eptp
        self._clock = clock
        self.mmu = self._mmu()
        self.paging = self._paging(self.mmu)
        self.space: AddressSpace | None = None
        self.boot_seconds = 0.0

    def _mmu(self) -> Mmu:
        mmu = Mmu(self.mode, self.frames)
        if self.mode is PagingMode.HAP:
            mmu.eptp = self._eptp
        return mmu

    def _paging(self, mmu: Mmu) -> GuestPaging:
        return GuestPaging(self.mode, mmu, self.backend, self.frames.mfn,
                           self._alloc_table, self._free_table)

    def _alloc_table(self) -> int:
        return self._alloc_frames(1)[0]

    def _free_table(self, gfn: int) -> None:
        self._free_frames([gfn])

    def boot(self) -> None:
        """Build the direct map of every frame the domain has, then load it."""
        started = self._clock()
        space = AddressSpace(self.paging, user=False)
        space.map_many([(direct_map_va(gfn), gfn, True) for gfn in self.frames.gfns()])
        space.activate()
        self.space = space
        self.boot_seconds = self._clock() - started

    def frame(self, gfn: int) -> memoryview:
        """The kernel's access to its frame ``gfn``: through the MMU."""
        try:
            mfn = self.mmu.translate(direct_map_va(gfn), write=True)
        except PageFault as fault:
            raise IndexError(f"gfn {gfn} is not mapped: {fault}") from None
        return self.frames(mfn)

    # -- the balloon -------------------------------------------------------------------------
    def release(self, gfns: list[int]) -> None:
        """Before the frames go back to the hypervisor: unmap them."""
        for gfn in gfns:
            self.space.unmap(direct_map_va(gfn))
        self.frames.released(gfns)

    def populate(self, p2m: Mapping[int, int]) -> None:
        """Frames the hypervisor gave the domain (gfn -> their new mfn): map them."""
        self.frames.populated(p2m)
        self.space.map_many([(direct_map_va(gfn), gfn, True) for gfn in sorted(p2m)])

    # -- the workloads -----------------------------------------------------------------------
    def run_workloads(self, pages: int, remap: int, seed: int = 0,
                      hypervisor_counters: Callable[[], Mapping[str, int]] = dict,
                      gauges: Callable[[], Mapping[str, int]] = dict) -> list[WorkloadResult]:
        """The paging workloads in user address spaces; the kernel's own is
        loaded back after them, whatever happened."""
        try:
            return run_workloads(self.paging, self._alloc_table, self._free_table, pages, remap,
                                 seed, hypervisor_counters=hypervisor_counters, gauges=gauges,
                                 home=self.space.activate, clock=self._clock)
        finally:
            self.space.activate()
