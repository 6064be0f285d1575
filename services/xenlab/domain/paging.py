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

The MMU's work is synchronous, as a vCPU's is, and an exit or a paging
hypercall waits for the hypervisor's answer. The kernel runs that work on a
worker thread (``KernelPaging.run``) whose exits are the kernel's typed
hypercalls, made on its event loop (``LoopBackend``): the loop goes on
serving the domain's rings meanwhile, and it works whether the hypervisor
is another process or runs on the same loop (the test labs).
"""
from __future__ import annotations

import asyncio
import errno
import heapq
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Mapping

from xenlab.domain.mmu import GeneralProtection, MachineCheck, Mmu, NestedFault, PageFault
from xenlab.domain.paging_workloads import WorkloadResult, run_workloads
from xenlab.domain.pagetable import AddressSpace, GuestPaging, PagingBackend
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.errors import XenError
from xenlab.xen.paging import KERNEL_DIRECT_MAP, KERNEL_VMALLOC, PagingMode, va_index

STORE_BYTES = 8          # the widest store an emulated page-table write takes (a PTE)
EXIT_TIMEOUT = 30.0      # seconds an exit or a paging hypercall may take before the vCPU gives up


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
        # mfn -> the views it is mapped through, latest last (a frame
        # granted under two refs is mapped twice, and unmapped one by one)
        self._mapped: dict[int, list[memoryview]] = {}

    def __call__(self, mfn: int) -> memoryview:
        gfn = self._m2p.get(mfn)
        if gfn is not None:
            return self._raw(gfn)
        views = self._mapped.get(mfn)
        if not views:
            raise LookupError(f"machine frame {mfn:#x} is not this domain's nor mapped into it")
        return views[-1]

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
        """A machine frame that is not the domain's, mapped into it
        through ``view`` (once more, if it is mapped already)."""
        self._mapped.setdefault(mfn, []).append(view)

    def unmap_machine(self, mfn: int, view: memoryview | None = None) -> None:
        """Let go of ``view`` of the frame (the latest, if None)."""
        views = self._mapped.get(mfn)
        if not views:
            return
        index = next((i for i in range(len(views) - 1, -1, -1) if views[i] is view),
                     len(views) - 1)
        del views[index]
        if not views:
            del self._mapped[mfn]


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
        """The kernel's access to its frame ``gfn``: through the MMU. In
        shadow and hap mode a miss the MMU cannot serve alone (a shadow not
        filled yet, an EPT entry not there) would be an exit; the caller may
        be on the event loop, which an exit waits for, so the kernel reads
        its own tables instead (they are the truth in those modes) and
        reaches the frame they name."""
        va = direct_map_va(gfn)
        try:
            return self.frames(self.mmu.translate(va, write=True))
        except (PageFault, NestedFault) as fault:
            if self.mode is PagingMode.DIRECT:
                raise IndexError(f"gfn {gfn} is not mapped: {fault}") from None
        named, code, _ = self.paging.walk(va, write=True)
        if named is None or code:
            raise IndexError(f"gfn {gfn} is not mapped in the direct map")
        return self.frames(self.frames.mfn(named))

    # -- the balloon -------------------------------------------------------------------------
    def release(self, gfns: list[int]) -> None:
        """Before the frames go back to the hypervisor: unmap them."""
        self.space.unmap_many([direct_map_va(gfn) for gfn in gfns])
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


class GrantArea:
    """Where a direct-paging kernel maps the grants it maps: a page of its
    vmalloc area per mapping, whose L1 entry the hypervisor writes
    (GNTMAP_host_map | GNTMAP_contains_pte) and clears at unmap, so that
    the kernel reaches a granted frame through its MMU like any other and
    its PTE never outlives the grant. Slots are reused lowest first; the
    L1 tables under them are made as the area grows (512 pages each) and
    kept. Shadow and HAP guests map grants into their P2M in Xen, which
    this does not do: they have no GrantArea."""

    def __init__(self, service: "KernelPagingService", base: int = KERNEL_VMALLOC):
        self._service = service
        self._paging = service.paging
        self._base = base
        self._free: list[int] = []          # free slots below _top, a heap
        self._top = 0
        self._tables: dict[int, int] = {}   # slot // 512 -> the L1's gfn
        self._reached: dict[int, tuple[int, memoryview]] = {}   # slot -> (mfn, view)
        self._lock = asyncio.Lock()

    def va(self, slot: int) -> int:
        return self._base + (slot << PAGE_SHIFT)

    async def reserve(self, count: int) -> list[tuple[int, int]]:
        """``count`` slots, each (slot, machine address of its PTE)."""
        async with self._lock:
            slots = [heapq.heappop(self._free) for _ in range(min(count, len(self._free)))]
            while len(slots) < count:
                slots.append(self._top)
                self._top += 1
            for chunk in sorted({slot // 512 for slot in slots} - set(self._tables)):
                # a new L1 under the area: made on the vCPU (in direct mode an
                # mmu_update that waits for the hypervisor), once per 512 slots
                space = self._paging.space
                self._tables[chunk] = await self._service.run(space.leaf_table,
                                                              self.va(chunk * 512))
            return [(slot, self._pte_maddr(slot)) for slot in slots]

    def _pte_maddr(self, slot: int) -> int:
        l1 = self._tables[slot // 512]
        return (self._paging.frames.mfn(l1) << PAGE_SHIFT) + va_index(self.va(slot), 1) * 8

    def release(self, slots) -> None:
        """Slots reserved and not used, or whose mapping went."""
        for slot in slots:
            heapq.heappush(self._free, slot)

    def installed(self, slot: int, mfn: int, view: memoryview, writable: bool) -> memoryview:
        """The hypervisor wrote the slot's PTE for ``mfn`` (reached through
        ``view``): the page, as the MMU translates the slot's address."""
        frames = self._paging.frames
        frames.map_machine(mfn, view)
        try:
            reached = self._paging.mmu.translate(self.va(slot), write=writable)
        except (PageFault, NestedFault, GeneralProtection, MachineCheck) as fault:
            frames.unmap_machine(mfn, view)
            raise XenError(errno.EFAULT, f"the grant's PTE at {self.va(slot):#x} is not in "
                                         f"force: {fault}") from None
        if reached != mfn:
            frames.unmap_machine(mfn, view)
            raise XenError(errno.EFAULT, f"the grant's PTE at {self.va(slot):#x} names mfn "
                                         f"{reached:#x}, not {mfn:#x}")
        self._reached[slot] = (mfn, view)
        return frames(mfn)

    def forget(self, slot: int) -> None:
        """The grant is being unmapped: drop the slot's TLB entry and its
        view of the frame. The slot is released once the unmap has cleared
        its PTE."""
        self._paging.mmu.invlpg(self.va(slot))
        held = self._reached.pop(slot, None)
        if held is not None:
            self._paging.frames.unmap_machine(*held)


class LoopBackend:
    """PagingBackend over the kernel's typed hypercalls (``memory``:
    MemoryOps, ``paging``: PagingOps), for MMU work on a worker thread: each
    call is made on the event loop and waited for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, memory, paging):
        self._loop = loop
        self._memory = memory
        self._paging = paging
        self.mmu = None          # the vCPU's MMU, whose TLB an exit may ask to flush
        self.counters: dict[str, int] = {}

    def _call(self, what: str, coro):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError(f"{what} from the event loop's own thread would wait for itself: "
                               "run MMU work with KernelPaging.run")
        self.counters[what] = self.counters.get(what, 0) + 1
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(EXIT_TIMEOUT)

    def mmu_update(self, updates):
        self._call("mmu_update", self._memory.mmu_update(list(updates)))

    def mmuext(self, ops):
        self._call("mmuext_op", self._memory.mmuext(list(ops)))

    def exit_page_fault(self, va, code, value):
        """A write of more than one store's width to a write-protected table
        is emulated as the CPU would run it: store by store (8 bytes, the
        widest the hypervisor's emulation takes), each an exit."""
        if value is None or len(value) <= STORE_BYTES:
            return self._page_fault(va, code, value)
        outcome = "emulated"
        for offset in range(0, len(value), STORE_BYTES):
            outcome = self._page_fault(va + offset, code, value[offset:offset + STORE_BYTES])
            if outcome != "emulated":
                return outcome
        return outcome

    def _page_fault(self, va, code, value):
        outcome, flush = self._call("page_fault", self._paging.page_fault(va, code, value))
        self._flush(flush)
        return outcome

    def exit_cr3(self, gfn):
        return self._call("set_cr3", self._paging.set_cr3(gfn))

    def pagetable_dying(self, gfn):
        self._call("pagetable_dying", self._paging.pagetable_dying(gfn))

    def exit_nested_fault(self, gpa, write):
        _, flush = self._call("nested_fault", self._paging.nested_fault(gpa, write))
        self._flush(flush)

    def _flush(self, flush: bool) -> None:
        """The exit changed entries this vCPU's TLB may hold: the hypervisor
        cannot reach it, so it says so and the vCPU flushes."""
        if flush and self.mmu is not None:
            self.mmu.flush()


class KernelPagingService:
    """What the domain kernel holds: its KernelPaging, and the worker
    thread its MMU work runs on, one piece of work at a time (one vCPU)."""

    def __init__(self, paging: KernelPaging, hypercalls):
        self.paging = paging
        self.mode = paging.mode
        self._hypercalls = hypercalls
        self._lock = asyncio.Lock()
        # One thread: the vCPU the MMU work runs on (made here, at import
        # time of its module, before a domain process gives up its rights).
        self._vcpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmu")

    @classmethod
    async def start(cls, memory, hypercalls, pool=None) -> "KernelPagingService":
        """Turn paging on: the P2M and the paging info from the hypervisor,
        the direct map built and loaded (on the worker thread)."""
        info = await hypercalls.paging.info()
        mm = await hypercalls.memory.memory_map(with_populated=True)
        frames = DomainFrames(memory.raw_frame, dict(zip(mm.populated, mm.mfns)))
        if info.pool_mfns:
            if pool is None:
                raise XenError(errno.EINVAL, f"{info.mode} paging needs its paging pool, and none was "
                                   "handed over")
            for i, mfn in enumerate(info.pool_mfns):
                frames.map_machine(mfn, pool.view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        backend = LoopBackend(asyncio.get_running_loop(), hypercalls.memory, hypercalls.paging)
        paging = KernelPaging(PagingMode(info.mode), frames, backend, memory.alloc_frames,
                              memory.free_frames, eptp=info.eptp or None)
        backend.mmu = paging.mmu
        service = cls(paging, hypercalls)
        await service.run(paging.boot)
        memory.paging = paging
        return service

    async def run(self, work, *args):
        """``work(*args)`` on the worker thread (the vCPU), alone."""
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._vcpu, work, *args)

    def close(self) -> None:
        self._vcpu.shutdown(wait=False, cancel_futures=True)

    async def release(self, gfns: list[int]) -> None:
        await self.run(self.paging.release, gfns)

    async def populate(self, gfns: list[int]) -> None:
        mm = await self._hypercalls.memory.memory_map(with_populated=True)
        p2m = dict(zip(mm.populated, mm.mfns))
        await self.run(self.paging.populate, {g: p2m[g] for g in gfns if g in p2m})

    async def run_workloads(self, pages: int, remap: int, seed: int = 0) -> list[WorkloadResult]:
        loop = asyncio.get_running_loop()

        def stats() -> dict:
            return asyncio.run_coroutine_threadsafe(self._hypercalls.paging.stats(),
                                                    loop).result(EXIT_TIMEOUT)
        return await self.run(self.paging.run_workloads, pages, remap, seed, stats,
                              lambda: {"pool_used": stats()["pool_used"]})
