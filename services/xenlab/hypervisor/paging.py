"""Each domain's paging state: its mode, its paging pool, and the shadow
tables or nested P2M the hypervisor keeps for it (xenlab.xen.paging says
what the three modes are).

The paging pool is Xen's per-domain paging mempool (xl.cfg shadow_memory=,
XEN_DOMCTL_set_paging_mempool_size): machine frames the hypervisor takes
from the host's pool for its own use, so the host's free memory drops by
its size while the domain's reservation does not move. Like Xen's p2m and
shadow pages they have no owner and no M2P entry (MEMF_no_owner). Their
bytes live in a memory object of the domain's own, ``dD.paging`` beside its
segment: page i is the pool's i-th frame. The domain's MMU walks its
shadows or its nested P2M there, so the domain is handed the object
read-only (``read_only_fd``: the doorbell's HELLO_PAGING), and it cannot
write a table the hypervisor validated.

The shadow code (ShadowPaging) and the nested P2M (NestedP2M) are pure
cores over the pool; this module gives them their frames and keeps them in
step with the P2M: a HAP domain's nested P2M is filled from its P2M when
it is made, and every populate and decrease_reservation after that reaches
it through MachineMemory's P2M hook, before a populate takes effect (a
pool too small for the new entries refuses the populate, ENOMEM, as Xen's
p2m_set_entry failing fails populate_physmap).
"""
from __future__ import annotations

import collections
import errno
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from xenlab.hypervisor.hap import NestedP2M
from xenlab.hypervisor.memory import MachineMemory
from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.hypervisor.shadow import ShadowPaging
from xenlab.xen import abi
from xenlab.xen.errors import MemoryError_, XenError
from xenlab.xen.paging import EPT_RWX, PagingMode

# Xen's floor on a pool: hap_enable and the shadow code start with 256 pages.
MIN_POOL_PAGES = 256
# A PTE: the most a shadow-mode write exit carries.
MAX_WRITE_VALUE = 8
# The exits, as Stats names them.
EXITS = ("page_fault", "set_cr3", "nested_fault", "pagetable_dying")

# A's page-table core's per-domain counters (mmu_update entries, validations...).
TableStats = Callable[[int], Mapping[str, int]]


@dataclass(eq=False)
class DomainPaging:
    """One domain's paging: direct mode has no pool and nothing else."""
    domid: int
    mode: PagingMode
    mfns: list[int] = field(default_factory=list)      # the pool's frames, in object order
    path: Path | None = None
    fd: int = -1                 # the object, read-write: the hypervisor's
    ro_fd: int = -1              # the same object read-only: the domain's
    mm: mmap.mmap | None = None
    pool: PagingPool | None = None
    shadow: ShadowPaging | None = None
    nested: NestedP2M | None = None
    index: dict[int, int] = field(default_factory=dict)  # pool mfn -> page in the object
    # Views of the frames used so far: every walk of the cores reads through them.
    views: dict[int, memoryview] = field(default_factory=dict)
    # Hypercalls and exits by kind (EXITS, mmu_update, mmuext_op).
    calls: collections.Counter = field(default_factory=collections.Counter)

    def frame(self, mfn: int) -> memoryview:
        """A pool frame's bytes (the cores' FrameView); LookupError for any other."""
        view = self.views.get(mfn)
        if view is not None:
            return view
        page = self.index.get(mfn)
        if page is None or self.mm is None:
            raise LookupError(f"mfn {mfn:#x} is not in d{self.domid}'s paging pool")
        start = page * abi.PAGE_SIZE
        view = self.views[mfn] = memoryview(self.mm)[start:start + abi.PAGE_SIZE]
        return view

    @property
    def traps(self) -> int:
        return sum(self.calls[kind] for kind in EXITS)


class Paging:
    def __init__(self, memory: MachineMemory, table_stats: TableStats | None = None):
        """``table_stats(domid)``: the direct-mode page-table core's counters,
        where it keeps them (validations)."""
        self.memory = memory
        self._table_stats = table_stats
        self._doms: dict[int, DomainPaging] = {}
        memory.add_p2m_hook(self._p2m_changed)

    # -- domains -------------------------------------------------------------------
    def add_domain(self, domid: int, mode: PagingMode, pool_pages: int) -> DomainPaging:
        """The domain's paging, once it has memory: a pool of ``pool_pages``
        machine frames (none in direct mode), and for HAP its nested P2M,
        filled from its P2M."""
        if domid in self._doms:
            raise MemoryError_(errno.EEXIST, f"d{domid} already has its paging")
        mode = PagingMode(mode)
        if mode is PagingMode.DIRECT:
            if pool_pages:
                raise MemoryError_(errno.EINVAL, f"d{domid}: direct paging has no paging pool "
                                                 f"({pool_pages} pages asked)")
            dom = self._doms[domid] = DomainPaging(domid, mode)
            return dom
        if pool_pages < MIN_POOL_PAGES:
            raise MemoryError_(errno.EINVAL, f"d{domid}: a {mode.value} paging pool of "
                                             f"{pool_pages} pages is below Xen's floor of "
                                             f"{MIN_POOL_PAGES} (1 MiB)")
        dom = DomainPaging(domid, mode)
        try:
            self._make_pool(dom, pool_pages)
            if mode is PagingMode.HAP:
                dom.nested = NestedP2M(dom.pool)
                self._fill_nested(dom)
            else:
                p2m = self.memory.p2m_view(domid)
                dom.shadow = ShadowPaging(domid, dom.pool, p2m.get,
                                          lambda gfn: self.memory.frame(domid, gfn))
        except BaseException:
            self._release(dom)
            raise
        self._doms[domid] = dom
        return dom

    def _make_pool(self, dom: DomainPaging, pages: int) -> None:
        segment = Path(self.memory.segment_path(dom.domid))
        path = segment.with_name(segment.name + ".paging")
        dom.mfns = self.memory.alloc_unowned(pages)
        dom.index = {mfn: i for i, mfn in enumerate(dom.mfns)}
        dom.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        dom.path = path                 # ours to remove from here on
        os.ftruncate(dom.fd, pages * abi.PAGE_SIZE)
        dom.mm = mmap.mmap(dom.fd, pages * abi.PAGE_SIZE)
        # What the domain is handed: this object, opened again read-only, so
        # that neither write() nor a writable mapping can go through it.
        dom.ro_fd = os.open(dom.path, os.O_RDONLY | os.O_CLOEXEC)
        dom.pool = PagingPool(list(dom.mfns), dom.frame)

    def _fill_nested(self, dom: DomainPaging) -> None:
        try:
            for gfn, mfn in sorted(self.memory.p2m_view(dom.domid).items()):
                dom.nested.set(gfn, mfn, EPT_RWX)
        except XenError as err:
            raise MemoryError_(errno.ENOMEM, f"d{dom.domid}: its paging pool of "
                                             f"{len(dom.mfns)} pages cannot hold its nested P2M "
                                             f"({err.message}); raise shadow_memory=") from None

    def remove_domain(self, domid: int) -> None:
        """Destroy: the pool's frames go back to the host."""
        dom = self._doms.pop(domid, None)
        if dom is not None:
            self._release(dom)

    def _release(self, dom: DomainPaging) -> None:
        for core in (dom.nested, dom.shadow):
            if core is not None:
                core.teardown()
        dom.shadow = dom.nested = dom.pool = None
        for view in dom.views.values():
            try:
                view.release()
            except BufferError:         # still exported: it goes with its last user
                pass
        dom.views.clear()
        if dom.mm is not None:
            try:
                dom.mm.close()
            except BufferError:         # a view still exported: it goes with the last one
                pass
            dom.mm = None
        for fd in (dom.fd, dom.ro_fd):
            if fd >= 0:
                os.close(fd)
        dom.fd = dom.ro_fd = -1
        if dom.path is not None:
            dom.path.unlink(missing_ok=True)
        if dom.mfns:
            self.memory.free_unowned(dom.mfns)
            dom.mfns = []
            dom.index = {}

    def get(self, domid: int) -> DomainPaging:
        try:
            return self._doms[domid]
        except KeyError:
            raise MemoryError_(errno.ESRCH, f"d{domid} has no paging state") from None

    def mode(self, domid: int) -> PagingMode:
        return self.get(domid).mode

    def domains(self) -> list[int]:
        return sorted(self._doms)

    def pool_frames(self) -> dict[int, int]:
        """mfn -> domid of every paging pool frame, for the invariant checks."""
        return {mfn: d.domid for d in self._doms.values() for mfn in d.mfns}

    def read_only_fd(self, domid: int) -> int:
        """The domain's pool object, read-only (HELLO_PAGING), left open."""
        dom = self.get(domid)
        if dom.ro_fd < 0:
            raise MemoryError_(errno.ENOENT, f"d{domid} runs on {dom.mode.value} paging: "
                                             "it has no paging pool")
        return dom.ro_fd

    # -- keeping in step with the P2M ----------------------------------------------------
    def _p2m_changed(self, domid: int, changes: list[tuple[int, int | None]]) -> None:
        dom = self._doms.get(domid)
        if dom is None:
            return
        if dom.nested is not None:
            self._nested_follow(dom, changes)
        elif dom.shadow is not None:
            for gfn, _mfn in changes:
                dom.shadow.p2m_changed(gfn)

    @staticmethod
    def _nested_follow(dom: DomainPaging, changes: list[tuple[int, int | None]]) -> None:
        done: list[int] = []
        try:
            for gfn, mfn in changes:
                if mfn is None:
                    dom.nested.clear(gfn)
                else:
                    dom.nested.set(gfn, mfn, EPT_RWX)
                    done.append(gfn)
        except XenError as err:
            for gfn in done:            # a refused populate leaves no entry behind
                dom.nested.clear(gfn)
            raise MemoryError_(errno.ENOMEM, f"d{dom.domid}: its paging pool cannot map "
                                             f"{len(changes)} more frames in its nested P2M "
                                             f"({err.message}); raise shadow_memory=") from None

    # -- the exits -----------------------------------------------------------------
    def _in_mode(self, domid: int, mode: PagingMode, what: str) -> DomainPaging:
        dom = self.get(domid)
        if dom.mode is not mode:
            raise MemoryError_(errno.EINVAL, f"d{domid} runs on {dom.mode.value} paging; "
                                             f"{what} is a {mode.value}-mode exit")
        return dom

    def page_fault(self, domid: int, va: int, code: int, value: bytes | None = None) -> str:
        """Shadow mode's #PF exit: "inject", "fixed" or "emulated" (ShadowPaging)."""
        dom = self._in_mode(domid, PagingMode.SHADOW, "PageFault")
        if value is not None and len(value) > MAX_WRITE_VALUE:
            raise MemoryError_(errno.EINVAL, f"a write of {len(value)} bytes; a page-table "
                                             f"write is at most {MAX_WRITE_VALUE}")
        dom.calls["page_fault"] += 1
        return dom.shadow.page_fault(va, code, value)

    def set_cr3(self, domid: int, gfn: int) -> int:
        """Shadow mode's mov-to-CR3 exit: the mfn of the shadow of L4 ``gfn``."""
        dom = self._in_mode(domid, PagingMode.SHADOW, "SetCr3")
        dom.calls["set_cr3"] += 1
        return dom.shadow.set_cr3(gfn)

    def pagetable_dying(self, domid: int, gpa: int) -> None:
        """HVMOP_pagetable_dying: the guest is done with the address space
        whose L4 is at ``gpa``; its shadows go now. Xen takes it from a
        shadow-mode HVM domain only (EINVAL from any other)."""
        dom = self._in_mode(domid, PagingMode.SHADOW, "PagetableDying")
        dom.calls["pagetable_dying"] += 1
        dom.shadow.pagetable_dying(gpa >> abi.PAGE_SHIFT)

    def nested_fault(self, domid: int, gpa: int, write: bool) -> int:
        """HAP's EPT violation. The nested P2M follows the P2M, so a populated
        frame is mapped already (the entry is made again if not) and the
        guest retries; the mfn is returned. An access to a frame the domain
        does not have is EFAULT: Xen crashes a domain on such a violation,
        and the guest's kernel is told so to do the same."""
        dom = self._in_mode(domid, PagingMode.HAP, "NestedFault")
        dom.calls["nested_fault"] += 1
        gfn = gpa >> abi.PAGE_SHIFT
        mfn = self.memory.p2m_view(domid).get(gfn)
        if mfn is None:
            raise MemoryError_(errno.EFAULT, f"d{domid}: EPT violation at gpa {gpa:#x}: gfn "
                                             f"{gfn:#x} is not populated (Xen crashes the "
                                             "domain)")
        if dom.nested.lookup(gfn) != mfn:
            self._nested_follow(dom, [(gfn, mfn)])
        return mfn

    def take_tlb_flush(self, domid: int) -> bool:
        """Whether the domain's shadows or nested P2M changed in a way its
        TLB may still remember since this was last asked (Xen flushes the
        TLBs itself; the guest's MMU is out of its reach, so it is told)."""
        dom = self.get(domid)
        core = dom.shadow if dom.shadow is not None else dom.nested
        return core.take_tlb_flush() if core is not None else False

    def count(self, domid: int, kind: str) -> None:
        """A paging hypercall of ``domid`` (mmu_update, mmuext_op), for Stats."""
        dom = self._doms.get(domid)
        if dom is not None:
            dom.calls[kind] += 1

    # -- what it reports -------------------------------------------------------------
    def info(self, domid: int) -> dict:
        dom = self.get(domid)
        pool = dom.pool
        return dict(domid=domid, mode=dom.mode.value, pool_pages=len(dom.mfns),
                    pool_used=pool.used if pool is not None else 0, pool_mfns=list(dom.mfns),
                    eptp=dom.nested.root if dom.nested is not None else 0,
                    shadow_root=(dom.shadow.root or 0) if dom.shadow is not None else 0,
                    cr3=(dom.shadow.cr3 or 0) if dom.shadow is not None else 0)

    def stats(self, domid: int) -> dict:
        """The domain's paging counters. Direct mode's come from the
        page-table core where it keeps them (``table_stats``: its
        mmu_update_calls, mmuext_calls and validations win over the calls
        counted here)."""
        dom = self.get(domid)
        counters: dict[str, int] = {}
        if dom.shadow is not None:
            counters.update(dom.shadow.counters)
        elif dom.nested is not None:
            counters.update(dom.nested.counters)
        hypercalls = dict(dom.calls)
        tables = dict(self._table_stats(domid)) if self._table_stats is not None else {}
        for kind, key in (("mmu_update", "mmu_update_calls"), ("mmuext_op", "mmuext_calls")):
            if key in tables:
                hypercalls[kind] = tables.pop(key)
        validations = tables.pop("validations", 0)
        counters.update(tables)
        return dict(domid=domid, mode=dom.mode.value,
                    hypercalls={k: int(v) for k, v in hypercalls.items() if v},
                    traps=dom.traps, validations=int(validations), pool_pages=len(dom.mfns),
                    pool_used=dom.pool.used if dom.pool is not None else 0,
                    counters={k: int(v) for k, v in counters.items()})
