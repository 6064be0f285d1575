"""The domain's MMU: an x86-64 4-level page walker, the TLB in front of it,
and the two-dimensional walk of nested paging (the "hardware" of a vCPU).

Frames are reached through a ``FrameView`` (mfn -> a writable 4096-byte
memoryview); the MMU reads page-table entries from them and sets the
Accessed and Dirty bits in them, and does nothing else to memory. What it
models, after the Intel SDM vol. 3A chapter 4 (4-level paging, IA32_EFER.NXE
and CR0.WP set, CR4.SMEP/SMAP/PKE/PGE/PCIDE clear):

* a walk reads one entry per level from CR3 down; a clear P bit faults
  (error code P=0); a reserved bit set faults (P=1, RSVD=1);
* access rights are the AND of every level's R/W and U/S and the OR of
  every level's XD (4.6): a write needs R/W at every level even from
  supervisor mode (CR0.WP), a user access needs U/S at every level, a fetch
  faults if XD is set at any level; the error code's W/R, U/S and I/D bits
  describe the access, not the rights (4.7);
* Accessed is set in every entry the walk used (a protection fault leaves
  the leaf's alone: model-specific, 4.8 footnote), Dirty in the leaf on a
  write; both with a locked OR, as the hardware's updates are atomic, so a
  hypervisor rewriting the entry at the same time loses nothing;
* a translation is cached only when the walk succeeded (4.10.2.1); a TLB
  entry survives changes to the tables until INVLPG, a flush or a CR3 load
  (no PCIDs, no global pages); a hit that does not grant the access (a
  write to a read-only or not yet dirty entry) is dropped and re-walked, so
  a guest never sees a spurious fault and the Dirty bit is always set;
* in ``hap`` mode CR3 holds a guest frame number and every guest-physical
  address (each guest table's and the final one) is translated through the
  nested P2M in EPT's format (SDM 28.2) first: 24 references for a cold walk
  (there are no paging-structure caches here: every miss is a full walk).

No I/O: the MMU is a pure core; ``frame`` is its only way to memory.
"""
from __future__ import annotations

import collections
import struct
from typing import Callable

from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.atomic import AtomicWords
from xenlab.xen.paging import (
    EPT_EXEC, EPT_READ, EPT_RWX, EPT_WRITE, LEVELS, PFEC_INSN, PFEC_PRESENT, PFEC_RSVD,
    PFEC_USER, PFEC_WRITE, PTE_ACCESSED, PTE_ADDR_MASK, PTE_DIRTY, PTE_NX, PTE_PRESENT,
    PTE_PSE, PTE_RW, PTE_USER, PagingMode, is_canonical, level_shift, pfec_names,
)

FrameView = Callable[[int], memoryview]

# The emulated CPU's physical-address width (CPUID 0x80000008 EAX[7:0]): entry
# bits MAXPHYADDR..51 are reserved (SDM 4.5). 46 bits, as most Xeons report.
MAXPHYADDR = 46
_RSVD_ADDR = PTE_ADDR_MASK & ~((1 << MAXPHYADDR) - 1)
# PS is reserved in a PML4E; in a PDPTE or PDE it maps a 1 GiB or 2 MiB page,
# which xenlab's guests never use, so it faults as reserved here too. In a PTE
# bit 7 is PAT, not reserved.
_RSVD = {4: _RSVD_ADDR | PTE_PSE, 3: _RSVD_ADDR | PTE_PSE, 2: _RSVD_ADDR | PTE_PSE,
         1: _RSVD_ADDR}
_SHIFT = {level: level_shift(level) for level in range(1, LEVELS + 1)}
_ENTRY = struct.Struct("<Q")
_PAGE_MASK = PAGE_SIZE - 1
TLB_ENTRIES = 1536        # a second-level TLB's 4 KiB entries (Skylake's STLB)


def _refusing_level(used, access: int) -> int:
    """The highest level whose entry refuses ``access`` (0: none does)."""
    for level, _view, _offset, entry, _table, _perms in used:
        if ((access & PFEC_WRITE and not entry & PTE_RW)
                or (access & PFEC_USER and not entry & PTE_USER)
                or (access & PFEC_INSN and entry & PTE_NX)):
            return level
    return 0


class PageFault(Exception):
    """A #PF: ``va`` is CR2, ``code`` the error code (PFEC_*), ``level``
    the table level (4..1) whose entry refused."""

    def __init__(self, va: int, code: int, level: int):
        self.va, self.code, self.level = va, code, level
        super().__init__(f"#PF at {va:#x}: {pfec_names(code)} (L{level} entry)")


class NestedFault(Exception):
    """An EPT violation: guest-physical ``gpa`` has no nested entry, or
    one without the rights the access needs."""

    def __init__(self, gpa: int, write: bool, present: bool = False):
        self.gpa, self.write, self.present = gpa, write, present
        what = "not permitted" if present else "not mapped"
        super().__init__(f"EPT violation at gpa {gpa:#x} ({'write' if write else 'read'}, "
                         f"{what})")


class MachineCheck(Exception):
    """An entry named a frame this domain cannot reach (``frame`` raised
    LookupError): on hardware, a bus error during the walk."""

    def __init__(self, mfn: int):
        self.mfn = mfn
        super().__init__(f"machine check: frame {mfn:#x} is not reachable")


class GeneralProtection(Exception):
    """A non-canonical address: a #GP, not a #PF (SDM 3.3.7.1)."""

    def __init__(self, va: int):
        self.va = va
        super().__init__(f"#GP: {va:#x} is not canonical")


class Tlb:
    """vpn -> (mfn, deny). ``deny`` holds the PFEC bits of the accesses a hit
    may not serve: PFEC_WRITE (read-only somewhere, or the leaf not yet
    dirty), PFEC_USER (supervisor somewhere), PFEC_INSN (XD somewhere).
    FIFO eviction at ``capacity``."""

    def __init__(self, capacity: int = TLB_ENTRIES):
        if capacity < 1:
            raise ValueError(f"a TLB needs at least one entry, not {capacity}")
        self.capacity = capacity
        self.entries: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        self.hits = self.misses = self.flushes = self.invlpgs = self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, vpn: int) -> tuple[int, int] | None:
        return self.entries.get(vpn)

    def insert(self, vpn: int, mfn: int, deny: int) -> None:
        entries = self.entries
        if vpn not in entries and len(entries) >= self.capacity:
            entries.popitem(last=False)
            self.evictions += 1
        entries[vpn] = (mfn, deny)

    def flush(self) -> None:
        self.entries.clear()
        self.flushes += 1

    def invlpg(self, va: int) -> None:
        self.entries.pop((va & ((1 << 64) - 1)) >> PAGE_SHIFT, None)
        self.invlpgs += 1


class Mmu:
    """One vCPU's MMU. ``cr3``: in direct and shadow modes the mfn of the L4
    the MMU walks (the guest's own, or its shadow); in hap mode the gfn of
    the guest's L4. ``eptp``: in hap mode the mfn of the nested P2M's root."""

    def __init__(self, mode: PagingMode | str, frame: FrameView,
                 tlb_entries: int = TLB_ENTRIES):
        self.mode = PagingMode(mode)
        self.frame = frame
        self.tlb = Tlb(tlb_entries)
        self._entries = self.tlb.entries
        self.cr3: int | None = None
        self.eptp: int | None = None
        self._counts: collections.Counter = collections.Counter()
        self._hap = self.mode is PagingMode.HAP

    @property
    def counters(self) -> collections.Counter:
        """A snapshot: tlb_hits, tlb_misses, tlb_flushes, tlb_invlpgs,
        tlb_evictions, walks, walk_refs, page_faults, nested_faults,
        ad_updates, cr3_loads, machine_checks."""
        c = collections.Counter(self._counts)
        tlb = self.tlb
        c["tlb_hits"], c["tlb_misses"] = tlb.hits, tlb.misses
        c["tlb_flushes"], c["tlb_invlpgs"], c["tlb_evictions"] = (
            tlb.flushes, tlb.invlpgs, tlb.evictions)
        return c

    # -- control ----------------------------------------------------------------------------
    def load_cr3(self, frame: int) -> None:
        """MOV to CR3: without PCIDs it flushes every TLB entry."""
        if frame < 0:
            raise ValueError(f"CR3 cannot hold frame {frame}")
        self.cr3 = frame
        self._counts["cr3_loads"] += 1
        self.tlb.flush()

    def flush(self) -> None:
        self.tlb.flush()

    def invlpg(self, va: int) -> None:
        self.tlb.invlpg(va)

    # -- translation ------------------------------------------------------------------------
    def translate(self, va: int, write: bool = False, user: bool = False,
                  fetch: bool = False) -> int:
        """The mfn ``va`` maps to for this access; raises PageFault,
        NestedFault, GeneralProtection or MachineCheck."""
        # The hit path is a dict lookup and a flag check: write/user/fetch
        # shifted to PFEC_WRITE (1 << 1), PFEC_USER (1 << 2), PFEC_INSN (1 << 4).
        hit = self._entries.get(va >> PAGE_SHIFT)
        if hit is not None and not hit[1] & (write << 1 | user << 2 | fetch << 4):
            self.tlb.hits += 1
            return hit[0]
        return self._miss(va, write, user, fetch)

    def _miss(self, va: int, write: bool, user: bool, fetch: bool) -> int:
        self.tlb.misses += 1
        if not is_canonical(va) or va < 0:
            raise GeneralProtection(va)
        if self.cr3 is None:
            raise RuntimeError("paging is off: CR3 was never loaded")
        access = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0) | (
            PFEC_INSN if fetch else 0)
        vpn = va >> PAGE_SHIFT
        self._counts["walks"] += 1
        try:
            mfn, deny = self._walk(va, access)
        except PageFault:
            # A #PF invalidates the faulting address's TLB entries (SDM 4.10.4.1).
            self._entries.pop(vpn, None)
            self._counts["page_faults"] += 1
            raise
        except NestedFault:
            self._entries.pop(vpn, None)
            self._counts["nested_faults"] += 1
            raise
        self.tlb.insert(vpn, mfn, deny)
        return mfn

    def _table(self, mfn: int) -> memoryview:
        try:
            return self.frame(mfn)
        except LookupError as exc:
            self._counts["machine_checks"] += 1
            raise MachineCheck(mfn) from exc

    def _walk(self, va: int, access: int) -> tuple[int, int]:
        # (level, view, offset, entry, frame of the table, EPT rights of that frame)
        used: list[tuple[int, memoryview, int, int, int, int]] = []
        rw = us = PTE_RW | PTE_USER
        nx = 0
        table = self.cr3
        refs = 0
        try:
            for level in range(LEVELS, 0, -1):
                if self._hap:
                    mfn, perms, nrefs = self._nested(table, 0)
                    refs += nrefs
                else:
                    mfn, perms = table, EPT_RWX
                view = self._table(mfn)
                offset = (va >> _SHIFT[level] & 511) * 8
                entry = _ENTRY.unpack_from(view, offset)[0]
                refs += 1
                if not entry & PTE_PRESENT:
                    self._set_accessed(used)
                    raise PageFault(va, access, level)
                if entry & _RSVD[level]:
                    self._set_accessed(used)
                    raise PageFault(va, access | PFEC_PRESENT | PFEC_RSVD, level)
                used.append((level, view, offset, entry, table, perms))
                rw &= entry
                us &= entry
                nx |= entry
                table = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
            refused = _refusing_level(used, access)
            if refused:
                self._set_accessed(used[:-1])
                raise PageFault(va, access | PFEC_PRESENT, refused)
            dirty = bool(used[-1][3] & PTE_DIRTY)
            if access & PFEC_WRITE and not dirty:
                self._set_accessed(used[:-1])
                dirty = self._set_bits(used[-1], PTE_ACCESSED | PTE_DIRTY)
            else:
                self._set_accessed(used)
            ept = EPT_RWX
            if self._hap:
                table, ept, nrefs = self._nested(table, access)
                refs += nrefs
        finally:
            self._counts["walk_refs"] += refs
        # The TLB entry caches the combined rights (guest and EPT), as hardware does.
        deny = ((0 if rw & PTE_RW and dirty and ept & EPT_WRITE else PFEC_WRITE)
                | (0 if us & PTE_USER else PFEC_USER)
                | (PFEC_INSN if nx & PTE_NX or not ept & EPT_EXEC else 0))
        return table, deny

    def _nested(self, gfn: int, access: int) -> tuple[int, int, int]:
        """Guest frame ``gfn`` through the nested P2M: (mfn, the EPT rights
        of the walk, references made). Raises NestedFault."""
        gpa = gfn << PAGE_SHIFT
        write = bool(access & PFEC_WRITE)
        if self.eptp is None:
            raise RuntimeError("hap mode: the EPTP was never set")
        table = self.eptp
        perms = EPT_RWX
        for level in range(LEVELS, 0, -1):
            view = self._table(table)
            entry = _ENTRY.unpack_from(view, (gpa >> _SHIFT[level] & 511) * 8)[0]
            if not entry & EPT_RWX:
                self._counts["walk_refs"] += LEVELS - level + 1
                raise NestedFault(gpa, write)
            perms &= entry
            table = (entry & PTE_ADDR_MASK) >> PAGE_SHIFT
        need = EPT_READ | (EPT_WRITE if write else 0) | (EPT_EXEC if access & PFEC_INSN else 0)
        if perms & need != need:
            self._counts["walk_refs"] += LEVELS
            raise NestedFault(gpa, write, present=True)
        return table, perms, LEVELS

    # -- Accessed and Dirty ----------------------------------------------------------------
    def _set_accessed(self, used) -> None:
        for item in used:
            if not item[3] & PTE_ACCESSED:
                self._set_bits(item, PTE_ACCESSED)

    def _set_bits(self, item, bits: int) -> bool:
        """OR ``bits`` into the entry with a locked OR. A table mapped
        read-only to this domain (a shadow in its hypervisor's pool) is left
        alone: the shadow code keeps its A/D (as Xen's shadows are made
        with them already set)."""
        _level, view, offset, _entry, table, perms = item
        if view.readonly:
            self._counts["ad_readonly"] += 1
            return True
        if not perms & EPT_WRITE:
            # Setting A/D writes the guest's table: EPT must allow the write.
            raise NestedFault(table << PAGE_SHIFT, True, present=True)
        words = AtomicWords(view, offset, 1)
        try:
            words.fetch_or(0, bits)
        finally:
            words.release()
        self._counts["ad_updates"] += 1
        return True

    # -- memory access ----------------------------------------------------------------------
    def view(self, va: int, length: int, write: bool = False, user: bool = False) -> memoryview:
        """``length`` bytes at ``va``, within one page."""
        offset = va & _PAGE_MASK
        if length < 0 or offset + length > PAGE_SIZE:
            raise ValueError(f"{length} bytes at {va:#x} cross a page boundary")
        mfn = self.translate(va, write, user)
        return self._table(mfn)[offset:offset + length]

    def read(self, va: int, length: int, user: bool = False) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, PAGE_SIZE - (va & _PAGE_MASK))
            out += self.view(va, n, False, user)
            va += n
            length -= n
        return bytes(out)

    def write(self, va: int, data, user: bool = False) -> None:
        data = memoryview(data).cast("B")
        done = 0
        while done < len(data):
            n = min(len(data) - done, PAGE_SIZE - (va & _PAGE_MASK))
            self.view(va, n, True, user)[:] = data[done:done + n]
            va += n
            done += n
