"""The nested P2M of a hardware-assisted-paging domain: its gfn -> mfn map as
the 4-level table the MMU's second dimension walks (Intel EPT's format, SDM
28.2.2; Xen's p2m-ept.c), in frames of the domain's paging pool.

Entries are little-endian u64s, 512 a table, indexed by the guest-physical
address exactly as a virtual address is at each level (``va_index``). A
middle entry names the next table's frame with R, W and X all set, as
ept_set_middle_entry does; a leaf names the machine frame with the access
rights asked for and write-back memory type. No superpages.

Unlike Xen, which keeps a middle table until p2m teardown, ``clear`` gives a
table frame back to the pool as soon as its last entry goes, so the pool's
use is what the map costs now (what the paging benchmark reports).

Removing or narrowing a mapping the guest's TLB may hold sets
``tlb_flush_pending`` (Xen's ept_sync_domain: INVEPT on every CPU that ran
the domain); the caller flushes the domain's TLB and calls
``take_tlb_flush``. No I/O: frames are reached through the pool.
"""
from __future__ import annotations

import errno
import struct
from collections import Counter

from xenlab.hypervisor.paging_pool import PagingPool, PoolExhausted
from xenlab.xen.abi import PAGE_SHIFT
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    EPT_MT_WB, EPT_READ, EPT_RWX, EPT_WRITE, LEVELS, PTE_ADDR_MASK, ept_present, va_index,
)

_ENTRY = struct.Struct("<Q")
# 48-bit guest-physical addresses (a 4-level EPT) and 52-bit machine ones.
GFN_LIMIT = 1 << (48 - PAGE_SHIFT)
MFN_LIMIT = 1 << (52 - PAGE_SHIFT)


def ept_entry(frame: int, flags: int) -> int:
    """An EPT entry: the frame in bits 12..51, as in a PTE."""
    return ((frame << PAGE_SHIFT) & PTE_ADDR_MASK) | flags


def ept_frame(val: int) -> int:
    return (val & PTE_ADDR_MASK) >> PAGE_SHIFT


class NestedP2M:
    """gfn -> (mfn, access) as an EPT table; ``root`` is the EPTP's frame."""

    def __init__(self, pool: PagingPool):
        self.pool = pool
        self.counters: Counter[str] = Counter()
        self.root = pool.alloc()
        # Present entries per table frame: a table whose count drops to 0 is freed.
        self._present: dict[int, int] = {self.root: 0}
        self.counters["table_pages"] = 1
        self.tlb_flush_pending = False

    # -- entries in frames ----------------------------------------------------------
    def _read(self, table: int, index: int) -> int:
        return _ENTRY.unpack_from(self.pool.frame(table), index * 8)[0]

    def _write(self, table: int, index: int, val: int) -> None:
        _ENTRY.pack_into(self.pool.frame(table), index * 8, val)

    def _path(self, gfn: int) -> list[tuple[int, int]]:
        """The (table, index) pairs from the root down as far as the map goes."""
        gpa = gfn << PAGE_SHIFT
        table, path = self.root, []
        for level in range(LEVELS, 0, -1):
            index = va_index(gpa, level)
            path.append((table, index))
            if level == 1:
                break
            entry = self._read(table, index)
            if not ept_present(entry):
                break
            table = ept_frame(entry)
        return path

    # -- the map --------------------------------------------------------------------
    def set(self, gfn: int, mfn: int, perms: int = EPT_RWX) -> None:
        """Map ``gfn`` to ``mfn`` (ept_set_entry), making middle tables as needed."""
        _check_gfn(gfn)
        if not 0 <= mfn < MFN_LIMIT:
            raise MemoryError_(errno.EINVAL, f"mfn {mfn:#x} is beyond 52-bit machine addresses")
        if not perms or perms & ~EPT_RWX or (perms & EPT_WRITE and not perms & EPT_READ):
            # Write without read is an EPT misconfiguration (SDM 28.2.3.1).
            raise MemoryError_(errno.EINVAL, f"bad EPT access rights {perms:#x}")
        path = self._path(gfn)
        missing = LEVELS - len(path)
        if missing > self.pool.available:
            # Checked first so that a failed set leaves no empty middle table behind.
            raise PoolExhausted(self.pool.size)
        table, index = path[-1]
        gpa = gfn << PAGE_SHIFT
        level = LEVELS - len(path) + 1
        while level > 1:
            child = self.pool.alloc()
            self._present[child] = 0
            self.counters["table_pages"] += 1
            self._write(table, index, ept_entry(child, EPT_RWX))
            self._present[table] += 1
            level -= 1
            table, index = child, va_index(gpa, level)
        old = self._read(table, index)
        new = ept_entry(mfn, perms | EPT_MT_WB)
        if old == new:
            return
        if ept_present(old):
            if ept_frame(old) != mfn or old & EPT_RWX & ~perms:
                self.tlb_flush_pending = True
        else:
            self._present[table] += 1
        self._write(table, index, new)
        self.counters["updates"] += 1

    def clear(self, gfn: int) -> None:
        """Unmap ``gfn``; middle tables left empty go back to the pool."""
        _check_gfn(gfn)
        path = self._path(gfn)
        if len(path) < LEVELS:
            return
        table, index = path[-1]
        if not ept_present(self._read(table, index)):
            return
        self._write(table, index, 0)
        self._present[table] -= 1
        self.counters["updates"] += 1
        self.tlb_flush_pending = True
        for parent, pindex in reversed(path[:-1]):
            if self._present[table]:
                break
            del self._present[table]
            self.pool.free(table)
            self.counters["table_pages"] -= 1
            self._write(parent, pindex, 0)
            self._present[parent] -= 1
            table = parent

    def get_entry(self, gfn: int) -> tuple[int, int] | None:
        """(mfn, access rights) of ``gfn``, or None (ept_get_entry)."""
        _check_gfn(gfn)
        path = self._path(gfn)
        if len(path) < LEVELS:
            return None
        entry = self._read(*path[-1])
        if not ept_present(entry):
            return None
        return ept_frame(entry), entry & EPT_RWX

    def lookup(self, gfn: int) -> int | None:
        found = self.get_entry(gfn)
        return found[0] if found else None

    def take_tlb_flush(self) -> bool:
        pending, self.tlb_flush_pending = self.tlb_flush_pending, False
        return pending

    def teardown(self) -> None:
        """Give every table frame back to the pool (p2m_teardown); unusable after."""
        for table in list(self._present):
            self.pool.free(table)
        self._present.clear()
        self.counters["table_pages"] = 0


def _check_gfn(gfn: int) -> None:
    if not 0 <= gfn < GFN_LIMIT:
        raise MemoryError_(errno.EINVAL, f"gfn {gfn:#x} is beyond 48-bit guest-physical addresses")
