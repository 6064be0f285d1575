"""One guest's paging in this process: frames as bytearrays, a P2M, the
hypervisor's side of the chosen mode behind an in-process backend, and the
guest's MMU and kernel paging (``domain/mmu.py``, ``domain/pagetable.py``).

``PagingMachine(mode, pages=N)`` boots the guest: its kernel address space
maps every guest frame at KERNEL_DIRECT_MAP (built before CR3 is loaded),
then loads CR3. Tests and the paging benchmark's in-process run then make
process address spaces with ``machine.space()`` and touch them through
``machine.kernel``.

The hypervisor's side here is a set of small stand-ins, written to the
interfaces of docs/PAGING.md (the direct-paging validator, the shadow code,
the nested P2M), not Xen's algorithms: ``MiniValidator`` applies
``mmu_update`` and refuses a writable mapping of a page-table frame or an
update outside a pinned table; ``MiniShadow`` rebuilds the whole shadow tree
from the guest's tables on every fill and emulates every write to a guest
table reachable from CR3; ``MiniNestedP2M`` is an EPT table over the P2M.
They are enough to run the guest side in all three modes and to check what
the guest does.

``PagingMachine(mode, pages, cores="xen")`` runs the hypervisor's real cores
instead, as the hypervisor service runs them: the page-table validator
(``hypervisor.pagetables.PageTables``) in direct mode, and the nested P2M
(``hypervisor.hap.NestedP2M``) in a paging pool (``hypervisor.paging_pool``)
in hap mode; shadow mode keeps ``MiniShadow`` until the shadow core is
there. That is what the paging benchmark measures.
"""
from __future__ import annotations

import collections
import errno
import struct

from xenlab.domain.mmu import Mmu
from xenlab.hypervisor.hap import NestedP2M
from xenlab.hypervisor.pagetables import PageTables
from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.domain.pagetable import AddressSpace, GuestPaging
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    ENTRIES, EPT_RWX, KERNEL_DIRECT_MAP, LEVELS, MMU_UPDATE_CMD_MASK, MMUEXT_NAMES,
    MMUEXT_NEW_BASEPTR, MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE, PFEC_PRESENT, PFEC_USER,
    PFEC_WRITE, PTE_ADDR_MASK, PTE_PRESENT, PTE_RW, PTE_USER, PagingMode, pte, va_index,
)

_ENTRY = struct.Struct("<Q")
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


# -- direct ---------------------------------------------------------------------------------
class MiniValidator:
    """The direct-paging hypervisor, reduced to what a guest can be caught
    at: an update outside a pinned tree, a writable mapping of a frame that
    is a table of a pinned tree (at update and at pin). EINVAL, as Xen."""

    def __init__(self, frames: Frames):
        self.frames = frames
        self.pinned: set[int] = set()
        self.baseptr: int | None = None
        self.counters: collections.Counter = collections.Counter()

    def _tables(self) -> dict[int, int]:
        tables: dict[int, int] = {}
        for root in self.pinned:
            tables.update(table_tree(self.frames, root))
        return tables

    def writable_table_mappings(self, tables: dict[int, int] | None = None) -> list[int]:
        """Table frames some L1 of a pinned tree maps writable."""
        tables = self._tables() if tables is None else tables
        bad = []
        for table, level in tables.items():
            if level != 1:
                continue
            for index in range(ENTRIES):
                val = self.frames.entry(table, index)
                if val & PTE_PRESENT and val & PTE_RW and _frame_of(val) in tables:
                    bad.append(_frame_of(val))
        return bad

    def mmu_update(self, updates: list[tuple[int, int]]) -> None:
        self.counters["hypercalls"] += 1
        tables = self._tables()
        for ptr, val in updates:
            maddr = ptr & ~MMU_UPDATE_CMD_MASK
            table, index = maddr >> PAGE_SHIFT, (maddr & (PAGE_SIZE - 1)) // 8
            level = tables.get(table)
            if level is None:
                raise MemoryError_(errno.EINVAL, f"mfn {table:#x} is not a pinned table")
            if level == 1 and val & PTE_PRESENT and val & PTE_RW and _frame_of(val) in tables:
                self.counters["refusals"] += 1
                raise MemoryError_(errno.EINVAL, "a writable mapping of a page-table frame")
            old = self.frames.entry(table, index)
            self.frames.set_entry(table, index, val)
            if level > 1:
                tables = self._tables()
                if self.writable_table_mappings(tables):
                    self.frames.set_entry(table, index, old)
                    self.counters["refusals"] += 1
                    raise MemoryError_(errno.EINVAL, "a table frame linked while mapped writable")
            self.counters["entries"] += 1

    def mmuext(self, ops: list[tuple[int, int]]) -> None:
        self.counters["hypercalls"] += 1
        for cmd, arg in ops:
            self.counters[MMUEXT_NAMES.get(cmd, str(cmd))] += 1
            if cmd == MMUEXT_PIN_L4_TABLE:
                self.pinned.add(arg)
                if self.writable_table_mappings():
                    self.pinned.discard(arg)
                    self.counters["refusals"] += 1
                    raise MemoryError_(errno.EINVAL, "pin: a table frame is mapped writable")
            elif cmd == MMUEXT_UNPIN_TABLE:
                if arg not in self.pinned:
                    raise MemoryError_(errno.EINVAL, f"mfn {arg:#x} is not pinned")
                self.pinned.discard(arg)
            elif cmd == MMUEXT_NEW_BASEPTR:
                if arg not in self.pinned:
                    raise MemoryError_(errno.EINVAL, f"mfn {arg:#x} is not a pinned L4")
                self.baseptr = arg


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


# -- hap ----------------------------------------------------------------------------------------
class MiniNestedP2M:
    """The P2M as a 4-level EPT table in pool frames."""

    def __init__(self, frames: Frames):
        self.frames = frames
        self._next = POOL_MFN + 0x8000
        self.root = self._alloc()
        self.counters: collections.Counter = collections.Counter()

    def _alloc(self) -> int:
        self._next += 1
        self.frames.add(self._next)
        return self._next

    def set(self, gfn: int, mfn: int, perms: int = EPT_RWX) -> None:
        table = self.root
        gpa = gfn << PAGE_SHIFT
        for level in range(LEVELS, 1, -1):
            val = self.frames.entry(table, va_index(gpa, level))
            if not val & EPT_RWX:
                val = pte(self._alloc(), EPT_RWX)
                self.frames.set_entry(table, va_index(gpa, level), val)
            table = _frame_of(val)
        self.frames.set_entry(table, va_index(gpa, 1), pte(mfn, perms))
        self.counters["updates"] += 1


# -- the hypervisor's real cores ----------------------------------------------------------------
GUEST_DOMID = 1
POOL_PAGES = 256            # Xen's floor on a paging pool (hap_enable, the shadow code)


class XenDirect:
    """The page-table validator, as the Memory service calls it, raising
    the first refusal as the guest's typed mmu_update does."""

    def __init__(self, frames: Frames, owned: set[int]):
        self.tables = PageTables(frames, lambda mfn: GUEST_DOMID if mfn in owned else None)

    @staticmethod
    def _check(what: str, done: int, statuses: list[int]) -> None:
        if done < len(statuses):
            raise MemoryError_(-statuses[done], f"{what} item {done} refused")

    def mmu_update(self, updates):
        self._check("mmu_update", *self.tables.mmu_update(GUEST_DOMID, list(updates), {}))

    def mmuext(self, ops):
        self._check("mmuext_op", *self.tables.mmuext(GUEST_DOMID, list(ops), {}))

    @property
    def counters(self) -> dict[str, int]:
        return self.tables.stats(GUEST_DOMID)


def _xen_nested(frames: Frames, p2m: dict[int, int]):
    mfns = list(range(POOL_MFN, POOL_MFN + POOL_PAGES))
    for mfn in mfns:
        frames.add(mfn)
    pool = PagingPool(mfns, frames)
    nested = NestedP2M(pool)
    for gfn, mfn in sorted(p2m.items()):
        nested.set(gfn, mfn, EPT_RWX)
    return nested, pool


# -- the backend the guest calls --------------------------------------------------------------
class InProcessBackend:
    """PagingBackend over the hypervisor's side in this process."""

    def __init__(self, direct=None, shadow=None, nested=None, p2m=None):
        self.direct, self.shadow, self.nested, self._p2m = direct, shadow, nested, p2m
        self.counters: collections.Counter = collections.Counter()

    def mmu_update(self, updates):
        self.counters["mmu_update"] += 1
        self.direct.mmu_update(updates)

    def mmuext(self, ops):
        self.counters["mmuext"] += 1
        self.direct.mmuext(ops)

    def exit_page_fault(self, va, code, value):
        self.counters["exit_page_fault"] += 1
        return self.shadow.page_fault(va, code, value)

    def exit_cr3(self, gfn):
        self.counters["exit_cr3"] += 1
        return self.shadow.set_cr3(gfn)

    def exit_nested_fault(self, gpa, write):
        self.counters["exit_nested_fault"] += 1
        gfn = gpa >> PAGE_SHIFT
        if gfn not in self._p2m:
            raise MemoryError_(errno.EFAULT, f"gpa {gpa:#x} is not in the guest's P2M")
        self.nested.set(gfn, self._p2m[gfn])


class PagingMachine:
    """A booted guest in ``mode`` with ``pages`` frames; its kernel's direct
    map covers them all."""

    def __init__(self, mode: PagingMode | str, pages: int = 256, tlb_entries: int = 1536,
                 cores: str = "mini"):
        if cores not in ("mini", "xen"):
            raise ValueError(f"cores must be mini or xen, not {cores!r}")
        self.mode = PagingMode(mode)
        self.frames = Frames()
        # a shuffled P2M, so that a gfn taken for an mfn (or back) shows
        step = 7 if pages % 7 else 11
        self.p2m = {gfn: FIRST_MFN + (gfn * step) % pages for gfn in range(pages)}
        for mfn in self.p2m.values():
            self.frames.add(mfn)
        self._free = list(range(pages - 1, -1, -1))
        self.direct = self.shadow = self.nested = self.pool = None
        if self.mode is PagingMode.DIRECT:
            self.direct = (XenDirect(self.frames, set(self.p2m.values())) if cores == "xen"
                           else MiniValidator(self.frames))
        elif self.mode is PagingMode.SHADOW:
            self.shadow = MiniShadow(self.frames, self.p2m)
        elif cores == "xen":
            self.nested, self.pool = _xen_nested(self.frames, self.p2m)
        else:
            self.nested = MiniNestedP2M(self.frames)
            for gfn, mfn in self.p2m.items():
                self.nested.set(gfn, mfn)
        self.backend = InProcessBackend(self.direct, self.shadow, self.nested, self.p2m)
        self.mmu = Mmu(self.mode, self.frames, tlb_entries)
        if self.nested is not None:
            self.mmu.eptp = self.nested.root
        self.kernel = GuestPaging(self.mode, self.mmu, self.backend, self.p2m.__getitem__,
                                  self.alloc_frame, self.free_frame)
        self.kernel_space = AddressSpace(self.kernel, user=False)
        self.kernel_space.map_many([(KERNEL_DIRECT_MAP + (gfn << PAGE_SHIFT), gfn, True)
                                    for gfn in range(pages)])
        self.kernel_space.activate()

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

    @property
    def pool_used(self) -> int:
        """Pages the hypervisor's bookkeeping holds now: shadow tables or
        nested P2M tables (none in direct mode)."""
        if self.pool is not None:
            return self.pool.used
        if self.shadow is not None:
            return len(self.shadow._used) + (self.shadow.root is not None)
        if self.nested is not None:
            return self.nested._next - (POOL_MFN + 0x8000)
        return 0

    def space(self) -> AddressSpace:
        """A new process address space."""
        return AddressSpace(self.kernel, user=True)

    def counters(self) -> collections.Counter:
        """The guest's, the MMU's and the hypervisor side's counters."""
        c = collections.Counter()
        c.update({f"mmu.{k}": v for k, v in self.mmu.counters.items()})
        c.update({f"kernel.{k}": v for k, v in self.kernel.counters.items()})
        c.update({f"backend.{k}": v for k, v in self.backend.counters.items()})
        for name in ("direct", "shadow", "nested"):
            core = getattr(self, name)
            if core is not None:
                c.update({f"{name}.{k}": v for k, v in core.counters.items()})
        return c


__all__ = ["PagingMachine", "Frames", "MiniValidator", "MiniShadow", "MiniNestedP2M",
           "InProcessBackend", "table_tree"]
