"""What a guest kernel does to its own page tables, in each paging mode,
over the hypervisor as it reaches it (a ``PagingBackend``).

* ``direct`` (PV): entries hold machine frame numbers. A tree is built with
  plain stores while it is unpinned (Linux's xen_set_pte on an unpinned
  pgd); when it is first loaded, every table frame of it is made read-only
  in the kernel's direct map, its L4 pinned and loaded (xen_pgd_pin,
  MMUEXT_PIN_L4_TABLE, MMUEXT_NEW_BASEPTR). From then on its entries change
  only through batched ``mmu_update``; a table added later is zeroed, made
  read-only and linked in one batch (xen_alloc_pte). TLB shootdowns are
  ``mmuext`` INVLPG_LOCAL per page, or one TLB_FLUSH_LOCAL past 32 pages
  (Linux's tlb_single_page_flush_ceiling); the hypervisor counts them and
  this vCPU's MMU flushes.
* ``shadow``: entries hold guest frame numbers and are written in place
  through the kernel's direct map. A write to a table the hypervisor has
  shadowed faults (its shadow maps the frame read-only) and exits; the
  hypervisor emulates it. Every #PF exits; CR3 loads exit.
* ``hap``: entries hold guest frame numbers, written in place; the MMU
  walks them and the nested P2M. An EPT violation exits.

Before paging is on (no CR3 loaded yet) tables are written straight into
their frames, as a kernel builds its first tables.

Address spaces: one for the kernel (the direct map at KERNEL_DIRECT_MAP),
and one per workload ("process") whose L4 shares the kernel's upper-half
entries (Linux's pgd_ctor). ``fork_cow`` copies one as Linux's fork does:
private writable pages become read-only in both, and a write fault on one
copies that page (do_wp_page; a page no longer shared is made writable
again without a copy). ``teardown`` does what Linux's exit does: switch
away, unpin (direct mode, xen_exit_mmap, which makes the zap plain stores),
clear every entry of the process's tables (zap_pte_range, free_pgtables:
each one a trapped write in shadow mode, unless the backend has
``pagetable_dying`` and the shadows are gone first) and free the table
frames.

The MMU protects the guest from its own mistakes; isolation between domains
is the process boundary, not this code.
"""
from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

from xenlab.domain.mmu import Mmu, NestedFault, PageFault
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.paging import (
    ENTRIES, KERNEL_DIRECT_MAP, LEVELS, MAX_MMU_UPDATES, MAX_MMUEXT_OPS,
    MMU_NORMAL_PT_UPDATE, MMUEXT_INVLPG_LOCAL, MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE,
    MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_UNPIN_TABLE, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
    MMUEXT_PIN_L3_TABLE, PFEC_INSN, PFEC_PRESENT, PFEC_USER,
    PFEC_WRITE, PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_NX, PTE_PRESENT, PTE_RW,
    PTE_USER, PagingMode, is_canonical, level_shift, pte, va_index,
)

_ENTRY = struct.Struct("<Q")
_USER_TOP = 1 << 47                # the lower canonical half: user addresses
_KERNEL_SLOTS = range(ENTRIES // 2, ENTRIES)   # L4 slots of the upper half
FLUSH_CEILING = 32                 # Linux's tlb_single_page_flush_ceiling (33: > 32 flushes)
MAX_EXIT_RETRIES = 16              # exits one access may take before the kernel gives up
_DM_VPN = KERNEL_DIRECT_MAP >> PAGE_SHIFT
_ZERO_PAGE = bytes(PAGE_SIZE)


class PagingBackend(Protocol):
    """The hypervisor, as the guest reaches it (see docs/PAGING.md)."""

    def mmu_update(self, updates: list[tuple[int, int]]) -> None: ...      # direct; XenError

    def mmuext(self, ops: list[tuple[int, int]]) -> None: ...              # direct; XenError

    def exit_page_fault(self, va: int, code: int, value: bytes | None) -> str: ...

    def exit_cr3(self, gfn: int) -> int: ...

    def exit_nested_fault(self, gpa: int, write: bool) -> None: ...


@runtime_checkable
class PagetableDying(Protocol):
    """What a shadow-mode backend may offer besides: HVMOP_pagetable_dying.
    Linux calls it on exit_mmap when Xen has it (xen_hvm_exit_mmap), before
    the zap, so that the zap's writes no longer trap; a backend without it
    is used as Xen without it is (every write of the zap traps)."""

    def pagetable_dying(self, gfn: int) -> None: ...


class GuestPagingError(Exception):
    """The guest kernel cannot go on: an access that keeps exiting, a
    verdict it cannot act on, an address space used after teardown."""


@dataclass(slots=True)
class _Page:
    gfn: int
    writable: bool          # what the mapping allows (the VMA's VM_WRITE)
    nx: bool
    cow: bool = False       # shared after fork_cow: read-only until written


class AddressSpace:
    """One page-table tree: the kernel's own (``user=False``: supervisor
    mappings, the direct map) or a process's (``user=True``: user mappings
    below the canonical hole, the kernel's half shared)."""

    def __init__(self, kernel: "GuestPaging", user: bool):
        self.kernel = kernel
        self.user = user
        self.pinned = False             # direct: its L4 pinned (the hypervisor validated it)
        self.dead = False
        self.pages: dict[int, _Page] = {}
        # (level, va >> level_shift(level + 1)) -> gfn of the level-``level`` table
        self._tables: dict[tuple[int, int], int] = {}
        self.root = kernel._new_table(self)
        if user:
            kernel._processes += 1
        if user and kernel.kernel_space is not None:
            ks = kernel.kernel_space
            for slot in _KERNEL_SLOTS:
                val = kernel._read_entry(ks.root, slot)
                if val:
                    kernel._write_entry(self, self.root, slot, val)
            kernel._commit()
        elif not user and kernel.kernel_space is None:
            kernel.kernel_space = self

    # -- mapping ----------------------------------------------------------------------------
    def map(self, va: int, gfn: int, writable: bool = True, nx: bool = True) -> None:
        self._alive()
        self._set(va, _Page(gfn, writable, nx))
        self.kernel._commit()

    def map_many(self, items) -> None:
        """(va, gfn, writable) or (va, gfn, writable, nx) items, in as few
        batches as the mode allows."""
        self._alive()
        pages = []
        for item in items:          # all checked before any is mapped
            va, gfn, writable = item[0], item[1], item[2]
            self._vpn(va)
            self.kernel._check_gfn(gfn)
            pages.append((va, _Page(gfn, writable, item[3] if len(item) > 3 else True)))
        vpns = {va >> PAGE_SHIFT for va, _ in pages}
        if not self.kernel.paging_on and not self.pinned and len(vpns) == len(pages) \
                and vpns.isdisjoint(self.pages):
            self._fill(pages)
        else:
            for va, page in pages:
                self._set(va, page)
        self.kernel._commit()

    def _fill(self, pages: list[tuple[int, _Page]]) -> None:
        """map_many before paging is on (the boot's direct map): no entry
        is in force and no TLB holds one, so each leaf is a plain store
        into its L1 (made once per 512 pages) and nothing is flushed or
        batched. What _set does, without its per-page checks."""
        kernel = self.kernel
        l2_shift = level_shift(2)
        l1_key = l1_view = None
        for va, page in pages:
            key = va >> l2_shift
            if key != l1_key:
                l1_key, l1_view = key, kernel._frame(self._table_for(va))
            self.pages[va >> PAGE_SHIFT] = page
            _ENTRY.pack_into(l1_view, va_index(va, 1) * 8, self._leaf_entry(va, page))
            kernel._add_ref(self, page.gfn)
        kernel.counters["pt_writes"] += len(pages)

    def unmap(self, va: int) -> None:
        self.unmap_many([va])

    def unmap_many(self, vas) -> None:
        """Unmap pages in one batch (direct: one mmu_update, then the
        flushes); every address is checked mapped before any goes."""
        self._alive()
        vas = list(vas)
        for va in vas:
            if self.pages.get(self._vpn(va)) is None:
                raise KeyError(f"{va:#x} is not mapped")
        if len({va >> PAGE_SHIFT for va in vas}) != len(vas):
            raise ValueError("a page is named twice")
        gone = []
        for va in vas:
            gone.append(self.pages.pop(va >> PAGE_SHIFT))
            l1, idx = self._leaf_slot(va)
            self.kernel._write_entry(self, l1, idx, 0)
            self.kernel._invlpg(self, va)
        self.kernel._commit()
        for page in gone:
            self.kernel._drop_ref(self, page.gfn)

    def protect(self, va: int, writable: bool) -> None:
        """mprotect of one page. A copy-on-write page stays read-only; its
        first write copies it (or reuses it when it is no longer shared)."""
        self._alive()
        page = self.pages.get(self._vpn(va))
        if page is None:
            raise KeyError(f"{va:#x} is not mapped")
        page.writable = writable
        self._write_leaf(va, page)
        self.kernel._invlpg(self, va)
        self.kernel._commit()

    def lookup(self, va: int) -> tuple[int, bool] | None:
        """(gfn, writable) as this space's bookkeeping has it."""
        page = self.pages.get(self._vpn(va))
        return None if page is None else (page.gfn, page.writable)

    def fork_cow(self) -> "AddressSpace":
        """A copy of this space: every page shared; private writable pages
        read-only in both until written (Linux's copy_page_range)."""
        self._alive()
        if not self.user:
            raise GuestPagingError("only a process address space forks")
        kernel = self.kernel
        child = AddressSpace(kernel, self.user)
        items = []
        for vpn, page in self.pages.items():
            va = _va(vpn)
            if page.writable and not page.cow:
                page.cow = True
                self._write_leaf(va, page)
            kernel._add_ref(self, page.gfn)
            items.append((va, _Page(page.gfn, page.writable, page.nx, page.cow)))
        for va, page in items:
            child._set(va, page, fresh=True)
        if kernel.active is self:
            kernel._flush_all(self)     # the parent's entries lost RW: flush_tlb_mm
        kernel._commit()
        return child

    def activate(self) -> None:
        """Load this space's root into CR3."""
        self._alive()
        self.kernel._activate(self)

    def teardown(self) -> None:
        """Drop every mapping, unpin and free every table frame, flush."""
        if self.dead:
            return
        self.kernel._teardown(self)

    # -- internals --------------------------------------------------------------------------
    def _alive(self) -> None:
        if self.dead:
            raise GuestPagingError("this address space was torn down")

    def _vpn(self, va: int) -> int:
        if not is_canonical(va) or va < 0:
            raise ValueError(f"{va:#x} is not a canonical address")
        if self.user and va >= _USER_TOP:
            raise ValueError(f"{va:#x} is in the kernel's half: a process maps below "
                             f"{_USER_TOP:#x}")
        return va >> PAGE_SHIFT

    def _set(self, va: int, page: _Page, fresh: bool = False) -> None:
        """Map one page; ``fresh``: fork_cow counted its reference already."""
        vpn = self._vpn(va)
        self.kernel._check_gfn(page.gfn)
        old = self.pages.get(vpn)
        self.pages[vpn] = page
        self._write_leaf(va, page)
        if not fresh:
            self.kernel._add_ref(self, page.gfn)
        if old is not None:
            self.kernel._invlpg(self, va)
            self.kernel._drop_ref(self, old.gfn)

    def _write_leaf(self, va: int, page: _Page) -> None:
        l1 = self._table_for(va)
        self.kernel._write_entry(self, l1, va_index(va, 1), self._leaf_entry(va, page))

    def _leaf_entry(self, va: int, page: _Page) -> int:
        """The L1 entry that maps ``page`` at ``va`` in this space."""
        kernel = self.kernel
        rw = page.writable and not page.cow
        if rw and self is kernel.kernel_space and kernel._maps_table(va, page.gfn):
            rw = False      # a page-table frame is read-only in the direct map (direct)
        flags = PTE_PRESENT | PTE_ACCESSED | (PTE_RW if rw else 0) | (
            PTE_NX if page.nx else 0) | (PTE_USER if self.user else PTE_DIRTY)
        return pte(kernel._entry_frame(page.gfn), flags)

    def _table_for(self, va: int) -> int:
        """The gfn of the L1 covering ``va``, made (down from the root) if missing."""
        parent = self.root
        for level in range(LEVELS, 1, -1):
            key = (level - 1, va >> level_shift(level))
            child = self._tables.get(key)
            if child is None:
                child = self.kernel._new_table(self)
                self._tables[key] = child
                flags = PTE_PRESENT | PTE_RW | PTE_ACCESSED | (PTE_USER if self.user else 0)
                self.kernel._write_entry(self, parent, va_index(va, level),
                                         pte(self.kernel._entry_frame(child), flags))
            parent = child
        return parent

    def _leaf_slot(self, va: int) -> tuple[int, int]:
        l1 = self._tables.get((1, va >> level_shift(2)))
        if l1 is None:
            raise KeyError(f"{va:#x} has no L1 table")
        return l1, va_index(va, 1)

    def leaf_table(self, va: int) -> int:
        """The gfn of the L1 table covering ``va``, made (and in direct
        mode validated into the tree) if it is missing: where a PTE the
        hypervisor writes for us goes (GNTMAP_contains_pte)."""
        self._alive()
        self._vpn(va)
        l1 = self._table_for(va)
        self.kernel._commit()
        return l1

    def table_frames(self) -> list[int]:
        """The gfns of this space's own table frames, root first."""
        return [self.root, *self._tables.values()]


# A tree of this many tables below its L4 is pinned bottom-up (see _activate):
# well under the hypervisor's cap on the tables one call validates (256).
PREPIN_TABLES = 128
PIN_BY_LEVEL = {1: MMUEXT_PIN_L1_TABLE, 2: MMUEXT_PIN_L2_TABLE, 3: MMUEXT_PIN_L3_TABLE}


def _va(vpn: int) -> int:
    return vpn << PAGE_SHIFT


class GuestPaging:
    """The guest kernel's paging: its mode, its vCPU's MMU, its frame
    allocator, its address spaces and its page-fault handler."""

    def __init__(self, mode: PagingMode | str, mmu: Mmu, backend: PagingBackend,
                 p2m: Callable[[int], int], alloc_frame: Callable[[], int],
                 free_frame: Callable[[int], None]):
        self.mode = PagingMode(mode)
        self.mmu = mmu
        self.backend = backend
        self.p2m = p2m
        self.alloc_frame = alloc_frame
        self.free_frame = free_frame
        self.kernel_space: AddressSpace | None = None
        self.active: AddressSpace | None = None
        self.counters: collections.Counter = collections.Counter()
        self.faults: list[tuple[int, int]] = []       # guest-visible #PFs: (va, error code)
        self._direct = self.mode is PagingMode.DIRECT
        self._shadow = self.mode is PagingMode.SHADOW
        self._updates: list[tuple[int, int]] = []     # direct: the mmu_update batch
        self._flushes: list[int] = []                 # vas to invlpg at commit
        self._local_flushes: list[int] = []           # ... with no hypercall
        self._flush_all_pending = False
        self._refs: collections.Counter = collections.Counter()   # mappings per gfn
        self._owned: set[int] = set()                 # frames this kernel copied into
        self._table_gfns: set[int] = set()
        self._processes = 0                           # live user address spaces

    @property
    def paging_on(self) -> bool:
        return self.active is not None

    # -- the guest's memory accesses --------------------------------------------------------
    def access(self, va: int, length: int, write: bool, user: bool | None = None) -> memoryview:
        """``length`` bytes at ``va`` (one page at most) through the MMU,
        handling what faults: shadow exits, EPT violations, copy-on-write;
        a real fault raises PageFault. ``user`` defaults to the half ``va``
        is in."""
        if user is None:
            user = 0 <= va < _USER_TOP
        mmu = self.mmu
        for _ in range(MAX_EXIT_RETRIES):
            try:
                return mmu.view(va, length, write, user)
            except PageFault as pf:
                value = self._written(va, length) if write and self._shadow else None
                if not self._page_fault(pf, value):
                    # Emulated: a write to a frame the hypervisor still shadows
                    # (a recycled table). The access is handed over as a write
                    # of the bytes the range holds; the caller's own bytes land
                    # directly. That frame is no table of the guest's now, and
                    # becomes one again only through _new_table, whose
                    # full-page write through the direct map resyncs it.
                    gfn = self.walk(va, True, user)[0]
                    offset = va & (PAGE_SIZE - 1)
                    return self._frame(gfn)[offset:offset + length]
            except NestedFault as nf:
                self._nested_fault(nf)
        raise GuestPagingError(f"an access at {va:#x} still faults after "
                               f"{MAX_EXIT_RETRIES} exits")

    def _written(self, va: int, length: int) -> bytes | None:
        """What a write access at ``va`` would write if it wrote nothing new:
        the bytes there now, by the guest's own walk (None if it faults)."""
        gfn, code, _ = self.walk(va)
        if code or gfn is None:
            return None
        offset = va & (PAGE_SIZE - 1)
        if length <= 0 or offset + length > PAGE_SIZE:
            return None
        return bytes(self._frame(gfn)[offset:offset + length])

    def read(self, va: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += self.access(va, n, False)
            va, length = va + n, length - n
        return bytes(out)

    def write(self, va: int, data) -> None:
        data = memoryview(data).cast("B")
        done = 0
        while done < len(data):
            n = min(len(data) - done, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            self.access(va, n, True)[:] = data[done:done + n]
            va, done = va + n, done + n

    def walk(self, va: int, write: bool = False, user: bool = False,
             fetch: bool = False) -> tuple[int | None, int, int]:
        """The active space's tables read by software, as the guest's
        fault handler reads them: (the frame the leaf names, an mfn in
        direct mode and a gfn otherwise, or None; the error code; the level
        that refused, 0 when the access is allowed)."""
        access = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0) | (
            PFEC_INSN if fetch else 0)
        if self.active is None:
            raise GuestPagingError("paging is off")
        frame = self._entry_frame(self.active.root)
        refused = 0
        for level in range(LEVELS, 0, -1):
            entry = _ENTRY.unpack_from(self._named_frame(frame), va_index(va, level) * 8)[0]
            if not entry & PTE_PRESENT:
                return None, access, level
            if not refused and ((write and not entry & PTE_RW)
                                or (user and not entry & PTE_USER)
                                or (fetch and entry & PTE_NX)):
                refused = level
            frame = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
        if refused:
            return frame, access | PFEC_PRESENT, refused
        return frame, 0, 0

    def _page_fault(self, pf: PageFault, value: bytes | None, table_write: bool = False) -> bool:
        """True when the access should be retried, False when the hypervisor
        emulated it; raises for a real fault. ``value``: the bytes written
        (shadow's emulation); ``table_write``: the kernel writing its tables."""
        code, level = pf.code, pf.level
        if self._shadow:
            self.counters["shadow_exits"] += 1
            verdict = self.backend.exit_page_fault(pf.va, code, value)
            self.counters[f"exits_{verdict}"] += 1
            if verdict == "fixed":
                return True
            if verdict == "emulated":
                if value is None:
                    raise GuestPagingError(f"the hypervisor emulated a write at {pf.va:#x} "
                                           f"it was not given")
                return False
            if verdict != "inject":
                raise GuestPagingError(f"unknown shadow verdict {verdict!r}")
            # Xen injects the error code of the guest's own walk
            _, code, level = self.walk(pf.va, bool(code & PFEC_WRITE), bool(code & PFEC_USER),
                                       bool(code & PFEC_INSN))
            if level == 0:
                return True     # the guest's tables allow it: a spurious fault
        self.counters["page_faults"] += 1
        self.faults.append((pf.va, code))
        if not table_write and self._cow_fault(pf.va, code):
            return True
        raise PageFault(pf.va, code, level)

    def _nested_fault(self, nf: NestedFault) -> None:
        self.counters["nested_exits"] += 1
        self.backend.exit_nested_fault(nf.gpa, nf.write)

    def _cow_fault(self, va: int, code: int) -> bool:
        if code & (PFEC_PRESENT | PFEC_WRITE) != PFEC_PRESENT | PFEC_WRITE:
            return False
        space = self.active
        page = space.pages.get(va >> PAGE_SHIFT)
        if page is None or not page.cow or not page.writable:
            return False
        old = page.gfn
        if self._refs[old] > 1:
            new = self.alloc_frame()
            self._frame(new)[:] = self._frame(old)
            self._owned.add(new)
            self._refs[new] += 1
            self._drop_ref(space, old)
            page.gfn = new
            self.counters["cow_copies"] += 1
        else:
            self.counters["cow_reuses"] += 1
        page.cow = False
        space._write_leaf(va, page)
        self._invlpg(space, va)
        self._commit()
        return True

    # -- entries ----------------------------------------------------------------------------
    def _frame(self, gfn: int) -> memoryview:
        return self.mmu.frame(self.p2m(gfn))

    def _entry_frame(self, gfn: int) -> int:
        """What an entry names: the mfn (direct) or the gfn."""
        return self.p2m(gfn) if self._direct else gfn

    def _check_gfn(self, gfn: int) -> None:
        try:
            mfn = self.p2m(gfn)
        except LookupError:
            mfn = None
        if mfn is None:
            raise ValueError(f"gfn {gfn:#x} is not a frame of this guest")

    def _named_frame(self, frame: int) -> memoryview:
        """The frame an entry names: an mfn (direct) or a gfn."""
        return self.mmu.frame(frame) if self._direct else self._frame(frame)

    def _read_entry(self, table_gfn: int, index: int) -> int:
        return _ENTRY.unpack_from(self._frame(table_gfn), index * 8)[0]

    def _write_entry(self, space: AddressSpace, table_gfn: int, index: int, val: int) -> None:
        if self._direct and space.pinned:
            maddr = (self.p2m(table_gfn) << PAGE_SHIFT) + index * 8
            self._updates.append((maddr | MMU_NORMAL_PT_UPDATE, val))
            return
        self.counters["pt_writes"] += 1
        self._store(table_gfn, index, val)

    def _store(self, table_gfn: int, index: int, val: int) -> None:
        self._store_bytes(table_gfn, index * 8, _ENTRY.pack(val))

    def _store_bytes(self, gfn: int, offset: int, data: bytes) -> None:
        """A plain store into a table frame: through the direct map once
        paging is on (where shadow mode traps it), straight into the frame
        before."""
        dm = KERNEL_DIRECT_MAP + (gfn << PAGE_SHIFT) + offset
        ks = self.kernel_space
        if not self.paging_on or ks is None or (dm >> PAGE_SHIFT) not in ks.pages:
            self._frame(gfn)[offset:offset + len(data)] = data
            return
        for _ in range(MAX_EXIT_RETRIES):
            try:
                self.mmu.view(dm, len(data), True, False)[:] = data
                return
            except PageFault as pf:
                if not self._page_fault(pf, data, table_write=True):
                    return          # emulated by the hypervisor
            except NestedFault as nf:
                self._nested_fault(nf)
        raise GuestPagingError(f"a table write at {dm:#x} still faults after "
                               f"{MAX_EXIT_RETRIES} exits")

    def _maps_table(self, va: int, gfn: int) -> bool:
        return (self._direct and gfn in self._table_gfns
                and va >> PAGE_SHIFT == _DM_VPN + gfn)

    def _new_table(self, space: AddressSpace) -> int:
        gfn = self.alloc_frame()
        self._table_gfns.add(gfn)
        self.counters["tables"] += 1
        # Cleared through the direct map: in shadow mode a frame the
        # hypervisor still shadows (it was a table before) traps, and the
        # emulated write resyncs its shadow.
        if self._shadow or self._frame(gfn) != _ZERO_PAGE:
            self._store_bytes(gfn, 0, _ZERO_PAGE)
        if self._direct and space.pinned:
            self._set_dm_writable(gfn, False)
        return gfn

    def _set_dm_writable(self, gfn: int, writable: bool) -> None:
        """Direct mode: the kernel's direct-map entry of frame ``gfn``."""
        ks = self.kernel_space
        if ks is None:
            return
        va = KERNEL_DIRECT_MAP + (gfn << PAGE_SHIFT)
        page = ks.pages.get(va >> PAGE_SHIFT)
        if page is None:
            return
        if writable:
            self._table_gfns.discard(gfn)
        ks._write_leaf(va, page)
        # No INVLPG hypercall: Xen flushes stale writable mappings itself
        # when a frame's type changes (the tlbflush_timestamp check of
        # get_page_type); here that flush is this vCPU's own TLB.
        self._local_flushes.append(va)

    # -- references to data frames ----------------------------------------------------------
    # Process mappings per frame (Linux's mapcount): the direct map is not
    # counted, so a frame shared by two processes after fork has 2.
    def _add_ref(self, space: AddressSpace, gfn: int) -> None:
        if space.user:
            self._refs[gfn] += 1

    def _drop_ref(self, space: AddressSpace, gfn: int) -> None:
        if not space.user:
            return
        self._refs[gfn] -= 1
        if self._refs[gfn] <= 0:
            del self._refs[gfn]
            if gfn in self._owned:
                self._owned.discard(gfn)
                self.free_frame(gfn)

    # -- the TLB and the batches ------------------------------------------------------------
    def _invlpg(self, space: AddressSpace, va: int) -> None:
        if space is not None and (space is self.active or not space.user):
            # the kernel's half is in every space: flush it wherever we run
            self._flushes.append(va)

    def _flush_all(self, space: AddressSpace) -> None:
        self._flush_all_pending = True

    def _commit(self) -> None:
        """Send the pending mmu_update batch, then flush what changed."""
        updates, self._updates = self._updates, []
        for start in range(0, len(updates), MAX_MMU_UPDATES):
            chunk = updates[start:start + MAX_MMU_UPDATES]
            self.counters["hypercalls"] += 1
            self.counters["mmu_update_entries"] += len(chunk)
            self.backend.mmu_update(chunk)
        for va in self._local_flushes:
            self.mmu.invlpg(va)
        self._local_flushes = []
        flushes, self._flushes = self._flushes, []
        flush_all, self._flush_all_pending = self._flush_all_pending, False
        if not self.paging_on or not (flushes or flush_all):
            return
        if flush_all or len(flushes) > FLUSH_CEILING:
            self._mmuext([(MMUEXT_TLB_FLUSH_LOCAL, 0)])
            self.mmu.flush()
            return
        self._mmuext([(MMUEXT_INVLPG_LOCAL, va) for va in flushes])
        for va in flushes:
            self.mmu.invlpg(va)

    def _mmuext(self, ops: list[tuple[int, int]]) -> None:
        if not self._direct:
            return      # shadow/hap: INVLPG and CR3 are the vCPU's own (no hypercall)
        for start in range(0, len(ops), MAX_MMUEXT_OPS):
            self.counters["hypercalls"] += 1
            self.counters["mmuext_ops"] += len(ops[start:start + MAX_MMUEXT_OPS])
            self.backend.mmuext(ops[start:start + MAX_MMUEXT_OPS])

    # -- CR3 and teardown -------------------------------------------------------------------
    def _activate(self, space: AddressSpace) -> None:
        self._commit()
        if self._direct:
            root_mfn = self.p2m(space.root)
            if not space.pinned:
                # xen_pgd_pin: every table frame read-only in the direct map, then pin
                for gfn in space.table_frames():
                    self._table_gfns.add(gfn)
                    self._set_dm_writable(gfn, False)
                self._commit()
                lower = sorted((lvl, gfn) for (lvl, _key), gfn in space._tables.items())
                if len(lower) >= PREPIN_TABLES:
                    # The hypervisor validates at most MAX_VALIDATIONS_PER_CALL
                    # tables in one call (Xen would preempt and continue the
                    # pin): pin the tree bottom-up, a few tables per call, so
                    # the L4's pin finds them validated, then drop those pins
                    # (the tree's own references keep them validated).
                    self._mmuext([(PIN_BY_LEVEL[lvl], self.p2m(gfn)) for lvl, gfn in lower])
                self._mmuext([(MMUEXT_PIN_L4_TABLE, root_mfn), (MMUEXT_NEW_BASEPTR, root_mfn)])
                if len(lower) >= PREPIN_TABLES:
                    self._mmuext([(MMUEXT_UNPIN_TABLE, self.p2m(gfn)) for _lvl, gfn in lower])
                space.pinned = True
            else:
                self._mmuext([(MMUEXT_NEW_BASEPTR, root_mfn)])
            self.mmu.load_cr3(root_mfn)
        elif self._shadow:
            self.counters["cr3_exits"] += 1
            self.mmu.load_cr3(self.backend.exit_cr3(space.root))
        else:
            self.mmu.load_cr3(space.root)
        self.active = space

    def _zap(self, space: AddressSpace) -> None:
        """Clear every entry of a process's tables, leaves first, as Linux's
        exit does (zap_pte_range, then free_pgtables); the kernel's half of
        its L4 is left, as pgd_free leaves it."""
        for level in range(1, LEVELS):
            for (lvl, _key), gfn in space._tables.items():
                if lvl == level:
                    self._clear_entries(gfn, range(ENTRIES))
        self._clear_entries(space.root, range(ENTRIES // 2))

    def _clear_entries(self, gfn: int, indexes) -> None:
        frame = self._frame(gfn)
        for index in indexes:
            if _ENTRY.unpack_from(frame, index * 8)[0]:
                self.counters["pt_writes"] += 1
                self._store(gfn, index, 0)

    def _teardown(self, space: AddressSpace) -> None:
        ks = self.kernel_space
        if space is ks and self._processes:
            raise GuestPagingError(f"{self._processes} process address spaces still share "
                                   f"the kernel's tables")
        if space.user:
            self._processes -= 1
        if self.active is space and ks is not None and ks is not space:
            self._activate(ks)
        for vpn in list(space.pages):
            self._drop_ref(space, space.pages.pop(vpn).gfn)
        frames = space.table_frames()
        if self._direct and space.pinned:
            # xen_exit_mmap: unpin first, so that the zap below is plain stores
            self._commit()
            self._mmuext([(MMUEXT_UNPIN_TABLE, self.p2m(space.root))])
            space.pinned = False
            if space is not ks:
                for gfn in frames:
                    self._set_dm_writable(gfn, True)
                self._commit()
        if self._shadow and space is not ks and isinstance(self.backend, PagetableDying):
            self.counters["pagetable_dying"] += 1
            self.backend.pagetable_dying(space.root)
        if space is not ks:
            self._zap(space)
        for gfn in frames:
            self._table_gfns.discard(gfn)
            self.free_frame(gfn)
        space._tables.clear()
        space.dead = True
        if self.active is space:
            self.active = None
        if ks is space:
            self.kernel_space = None
        self.mmu.flush()
