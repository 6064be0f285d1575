"""Shadow paging for one domain (``hap=0``), after Xen's shadow code
(xen/arch/x86/mm/shadow/common.c and multi.c), much simplified: 4-level
guests on 4-level shadows, no superpages, no out-of-sync pages.

The guest's page tables hold guest frame numbers and the guest writes them
in place. The MMU never walks them: it walks shadow tables, kept here in
frames of the domain's paging pool, which hold machine frame numbers in the
plain x86-64 format (xen/paging.py). A shadow is made for a guest table as a
whole (sh_make_shadow: all 512 entries propagated at once) and only when a
fault needs it; a shadow L(n>1) entry names the shadow of the guest's next
table only once that shadow exists, so shadows fill lazily, one guest table
at a time, as the guest touches its address space.

Every #PF of the guest's MMU is a VM exit, answered by ``page_fault``
(sh_page_fault):

* the guest's own tables refuse the access: ``"inject"``, the guest's fault
  handler runs;
* the guest's tables allow it: the missing shadow tables and entries on the
  way are made (``"fixed"``: the guest retries), after setting Accessed at
  every level, and Dirty on the leaf for a write, in the guest's entries,
  as the hardware walker would have;
* the access is a write to a frame the guest uses as a page table: every
  shadow L1 entry that maps such a frame is read-only (sh_remove_write_access
  when it is first shadowed, _sh_propagate's "protect guest page tables"
  after), so the write faults; it is performed here and every shadow of
  that frame resynced (sh_validate_guest_entry): ``"emulated"``.

A/D bits: a shadow entry is present only once the guest's entry has
Accessed, and a shadow L1 entry writable only once the guest's has Dirty
(_sh_propagate); the hypervisor sets them in the guest's entries on the
fault. Every present shadow entry therefore already carries A (and D where
writable), so the MMU, which reads the pool read-only, never has to write a
shadow, and the guest's A/D bits are exact.

Lifetimes follow Xen's: a shadow lives while a shadow entry names it
(``up``) or, for a top-level shadow, while it is pinned: each L4 shadow made
by ``set_cr3`` stays pinned so that switching back to an address space is
cheap. When the pool runs dry, the least recently loaded pinned tops other
than the current one are unpinned first (_shadow_prealloc); if that is not
enough, ``blow_tables`` drops every shadow but the current top, whose
entries are unhooked, and the fault is handled again from scratch.

Hypervisor-initiated removals (write access taken away, mappings of a frame
the balloon moved, unpins, blown tables) set ``tlb_flush_pending``: the
guest's TLB may still hold what was removed. The caller has the domain's
MMU flush its TLB and calls ``take_tlb_flush`` (Xen: flush_tlb_mask after
sh_remove_write_access). Changes the guest made to its own tables need no
such flush: it invalidates what it changed, as on hardware.

A frame that has been shadowed must be written through the MMU (so the
write traps) for as long as it has a shadow: a write that bypasses the MMU
leaves its shadows stale, as a DMA write into a page table would under Xen.
A guest that frees an address space says so with ``pagetable_dying`` (as
Linux does on exit_mmap), after which its frames are plain frames again.

One current CR3: xenlab runs a domain's paging on one vCPU's MMU.
No I/O: frames are reached through the pool's FrameView and ``guest_frame``.
"""
from __future__ import annotations

import errno
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from xenlab.hypervisor.paging_pool import PagingPool, PoolExhausted
from xenlab.xen.abi import PAGE_SIZE
from xenlab.xen.errors import MemoryError_
from xenlab.xen.paging import (
    ENTRIES, LEVELS, PFEC_INSN, PFEC_USER, PFEC_WRITE, PTE_ACCESSED, PTE_DIRTY, PTE_NX,
    PTE_PRESENT, PTE_PSE, PTE_RW, PTE_USER, is_canonical, pte, pte_frame, va_index,
)

_ENTRY = struct.Struct("<Q")
_TABLE = struct.Struct(f"<{ENTRIES}Q")

# Guest flags a shadow entry carries over (_sh_propagate's pass_thru_flags).
_PASS_THRU = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY | PTE_NX


@dataclass
class ShadowPage:
    """A pool frame shadowing guest table ``gfn`` at ``level``."""

    gfn: int
    level: int
    # The shadow entries naming this one: (shadow mfn, index).
    up: set[tuple[int, int]] = field(default_factory=set)
    pinned: bool = False
    # L1 only: index -> the gfn its present entry maps (for the reverse map).
    targets: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestWalkStep:
    level: int
    table: int       # gfn of the guest table
    index: int
    entry: int


class ShadowPaging:
    """One shadow-mode domain's shadows; see the module docstring."""

    def __init__(self, domid: int, pool: PagingPool, p2m: Callable[[int], int | None],
                 guest_frame: Callable[[int], memoryview]):
        if pool.size < LEVELS:
            # One walk needs a shadow of each level (shadow_min_acceptable_pages).
            raise MemoryError_(errno.EINVAL,
                               f"a shadow pool needs at least {LEVELS} frames, not {pool.size}")
        self.domid = domid
        self.pool = pool
        self.p2m = p2m
        self.guest_frame = guest_frame
        self.counters: Counter[str] = Counter()
        self.tlb_flush_pending = False
        self._hash: dict[tuple[int, int], int] = {}       # (gfn, level) -> shadow mfn
        self._pages: dict[int, ShadowPage] = {}           # shadow mfn -> its page
        self._levels_of: Counter[int] = Counter()         # gfn -> how many shadows it has
        self._rmap: dict[int, set[tuple[int, int]]] = {}  # gfn -> shadow L1 entries mapping it
        self._tops: OrderedDict[int, int] = OrderedDict()  # pinned L4 shadows, oldest first
        self._cr3: int | None = None

    # -- what callers read -----------------------------------------------------------
    @property
    def cr3(self) -> int | None:
        """The gfn of the guest L4 last loaded."""
        return self._cr3

    @property
    def root(self) -> int | None:
        """The mfn of the shadow L4 the MMU walks."""
        return None if self._cr3 is None else self._tops[self._cr3]

    def is_shadowed(self, gfn: int) -> bool:
        """Is guest frame ``gfn`` shadowed as a page table (and so write-protected)?"""
        return self._levels_of[gfn] > 0

    def take_tlb_flush(self) -> bool:
        pending, self.tlb_flush_pending = self.tlb_flush_pending, False
        return pending

    # -- the VM exits ----------------------------------------------------------------
    def set_cr3(self, gfn: int) -> int:
        """A mov to CR3: the shadow L4 of guest L4 ``gfn`` (made and pinned if needed)."""
        if self.p2m(gfn) is None:
            raise MemoryError_(errno.EINVAL, f"CR3 names gfn {gfn:#x}, which is not populated")
        self.counters["cr3_loads"] += 1
        smfn = self._tops.get(gfn)
        if smfn is None:
            try:
                smfn = self._make_shadow(gfn, LEVELS)
            except PoolExhausted:
                self.blow_tables()
                smfn = self._make_shadow(gfn, LEVELS)
            self._pages[smfn].pinned = True
            self._tops[gfn] = smfn
        else:
            self._tops.move_to_end(gfn)
        self._cr3 = gfn
        return smfn

    def page_fault(self, va: int, code: int, value: bytes | None = None) -> str:
        """A #PF exit: "inject", "fixed" or "emulated" (``value`` is what a write wrote)."""
        self.counters["traps"] += 1
        if self._cr3 is None:
            raise MemoryError_(errno.EINVAL, "page fault before any CR3 was loaded")
        if not is_canonical(va):
            raise MemoryError_(errno.EINVAL, f"non-canonical address {va:#x} (a #GP, not a #PF)")
        try:
            return self._sh_page_fault(va, code, value)
        except PoolExhausted:
            # Everything but the current top goes, and the fault is handled afresh:
            # one walk needs at most LEVELS - 1 new shadows, and the pool has more.
            self.blow_tables()
            return self._sh_page_fault(va, code, value)

    def p2m_changed(self, gfn: int) -> None:
        """The P2M entry of ``gfn`` changed (the balloon): nothing may map its old frame."""
        # sh_remove_all_mappings
        for smfn, index in list(self._rmap.get(gfn, ())):
            self._set_entry(smfn, 1, index, 0)
            self.tlb_flush_pending = True
        if self._levels_of[gfn]:
            self._remove_shadows(gfn)
        self.counters["p2m_changes"] += 1

    def pagetable_dying(self, gfn: int) -> None:
        """The guest is done with the address space whose L4 is ``gfn`` (Linux's
        xen_hvm_exit_mmap, HVMOP_pagetable_dying): its shadows go now, and with
        them every shadow only it kept, so the frames can be reused as anything
        (sh_pagetable_dying)."""
        self.counters["pagetable_dying"] += 1
        if self._levels_of[gfn]:
            self._remove_shadows(gfn)

    def blow_tables(self) -> None:
        """Drop every shadow but the current top, whose entries are unhooked (shadow_blow_tables)."""
        self.counters["blow_tables"] += 1
        for gfn in [g for g in self._tops if g != self._cr3]:
            self._unpin(gfn)
        if self._cr3 is not None:
            top = self._tops[self._cr3]
            for index in range(ENTRIES):
                self._set_entry(top, LEVELS, index, 0)
        self.tlb_flush_pending = True

    def teardown(self) -> None:
        """Give every shadow frame back to the pool (shadow_teardown); no CR3 after."""
        for gfn in list(self._tops):
            self._unpin(gfn)
        self._cr3 = None
        self.tlb_flush_pending = True

    # -- the fault -------------------------------------------------------------------
    def _sh_page_fault(self, va: int, code: int, value: bytes | None) -> str:
        write, user, fetch = code & PFEC_WRITE, code & PFEC_USER, code & PFEC_INSN
        walk = self.walk_guest(va)
        if walk is None or not _permitted(walk, write, user, fetch):
            self.counters["injected"] += 1
            return "inject"
        leaf = pte_frame(walk[-1].entry)
        if self.p2m(leaf) is None:
            # A mapping of a frame the domain does not have: no device model
            # answers it here (Xen would take it to MMIO emulation).
            raise MemoryError_(errno.EFAULT, f"va {va:#x} maps gfn {leaf:#x}, which is not populated")
        self._set_guest_ad(walk, write)
        for step in walk[:-1]:
            child = pte_frame(step.entry)
            if (child, step.level - 1) not in self._hash:
                self._make_shadow(child, step.level - 1)
            self._validate_guest_entry(step.table, step.index)
        self._validate_guest_entry(walk[-1].table, walk[-1].index)
        if write and self._levels_of[leaf]:
            return self._emulate_write(leaf, va, value)
        self.counters["fills"] += 1
        return "fixed"

    def walk_guest(self, va: int) -> list[GuestWalkStep] | None:
        """The guest's own walk of ``va`` in its tables (guest-physical), or None if
        an entry on the way is not present, reserved, or in a frame it does not have."""
        table, walk = self._cr3, []
        for level in range(LEVELS, 0, -1):
            frame = self._guest_table(table)
            if frame is None:
                return None
            index = va_index(va, level)
            entry = _ENTRY.unpack_from(frame, index * 8)[0]
            if not entry & PTE_PRESENT or (level > 1 and entry & PTE_PSE):
                return None
            walk.append(GuestWalkStep(level, table, index, entry))
            table = pte_frame(entry)
        return walk

    def _guest_table(self, gfn: int) -> memoryview | None:
        if self.p2m(gfn) is None:
            return None
        try:
            return self.guest_frame(gfn)
        except LookupError:
            return None

    def _set_guest_ad(self, walk: list[GuestWalkStep], write: bool) -> None:
        for step in walk:
            want = step.entry | PTE_ACCESSED | (PTE_DIRTY if step.level == 1 and write else 0)
            if want != step.entry:
                _ENTRY.pack_into(self.guest_frame(step.table), step.index * 8, want)
                self._validate_guest_entry(step.table, step.index)

    def _emulate_write(self, gfn: int, va: int, value: bytes | None) -> str:
        offset = va & (PAGE_SIZE - 1)
        if not value or offset + len(value) > PAGE_SIZE:
            raise MemoryError_(errno.EINVAL,
                               "an emulated write needs its bytes, within one page")
        self.guest_frame(gfn)[offset:offset + len(value)] = value
        for index in range(offset // 8, (offset + len(value) - 1) // 8 + 1):
            self._validate_guest_entry(gfn, index)
        self.counters["emulated_writes"] += 1
        return "emulated"

    # -- propagation (_sh_propagate, sh_validate_guest_entry) -------------------------
    def _propagate(self, level: int, gentry: int) -> int:
        """The shadow entry for guest entry ``gentry`` of a level-``level`` table."""
        if not gentry & PTE_PRESENT or not gentry & PTE_ACCESSED:
            return 0
        if level > 1 and gentry & PTE_PSE:
            return 0          # reserved here (no superpages): the fault path injects
        gfn = pte_frame(gentry)
        flags = gentry & _PASS_THRU
        if level == 1:
            mfn = self.p2m(gfn)
            if mfn is None:
                return 0
            if not gentry & PTE_DIRTY or self._levels_of[gfn]:
                flags &= ~PTE_RW
            return pte(mfn, flags)
        child = self._hash.get((gfn, level - 1))
        if child is None:
            return 0
        # Higher levels carry A and D so the MMU never writes a shadow.
        return pte(child, flags | PTE_ACCESSED | PTE_DIRTY)

    def _validate_guest_entry(self, gfn: int, index: int) -> None:
        """Resync entry ``index`` of every shadow of guest table ``gfn``."""
        if not self._levels_of[gfn]:
            return
        for level in range(1, LEVELS + 1):
            smfn = self._hash.get((gfn, level))
            if smfn is None:
                continue
            gentry = _ENTRY.unpack_from(self.guest_frame(gfn), index * 8)[0]
            self._set_entry(smfn, level, index, self._propagate(level, gentry))

    def _set_entry(self, smfn: int, level: int, index: int, new: int) -> None:
        """Write a shadow entry, keeping the reverse map and the shadows' up-sets."""
        frame = self.pool.frame(smfn)
        old = _ENTRY.unpack_from(frame, index * 8)[0]
        if old == new:
            return
        if level == 1:
            page = self._pages[smfn]
            if old & PTE_PRESENT:
                self._rmap_remove(page.targets.pop(index), smfn, index)
            if new & PTE_PRESENT:
                target = self._gfn_of_l1e(smfn, index)
                page.targets[index] = target
                self._rmap.setdefault(target, set()).add((smfn, index))
            _ENTRY.pack_into(frame, index * 8, new)
            return
        old_child = pte_frame(old) if old & PTE_PRESENT else None
        new_child = pte_frame(new) if new & PTE_PRESENT else None
        if new_child is not None:
            self._pages[new_child].up.add((smfn, index))
        _ENTRY.pack_into(frame, index * 8, new)
        if old_child is not None and old_child != new_child:
            self._put(old_child, (smfn, index))

    def _gfn_of_l1e(self, smfn: int, index: int) -> int:
        page = self._pages[smfn]
        gentry = _ENTRY.unpack_from(self.guest_frame(page.gfn), index * 8)[0]
        return pte_frame(gentry)

    def _rmap_remove(self, gfn: int, smfn: int, index: int) -> None:
        users = self._rmap[gfn]
        users.discard((smfn, index))
        if not users:
            del self._rmap[gfn]

    def _remove_write_access(self, gfn: int) -> None:
        """sh_remove_write_access: no shadow L1 entry may map ``gfn`` writable."""
        for smfn, index in self._rmap.get(gfn, ()):
            frame = self.pool.frame(smfn)
            entry = _ENTRY.unpack_from(frame, index * 8)[0]
            if entry & PTE_RW:
                _ENTRY.pack_into(frame, index * 8, entry & ~PTE_RW)
                self.tlb_flush_pending = True
                self.counters["write_protects"] += 1

    # -- shadow pages ----------------------------------------------------------------
    def _make_shadow(self, gfn: int, level: int) -> int:
        """sh_make_shadow: shadow guest table ``gfn`` as a level-``level`` table, whole."""
        smfn = self._alloc()
        page = ShadowPage(gfn, level)
        self._pages[smfn] = page
        self._hash[(gfn, level)] = smfn
        self._levels_of[gfn] += 1
        self.counters["shadow_pages"] = len(self._pages)
        if self._levels_of[gfn] == 1:
            self._remove_write_access(gfn)     # shadow_promote
        guest = _TABLE.unpack_from(self.guest_frame(gfn))
        shadow = [0] * ENTRIES
        for index, gentry in enumerate(guest):
            if not gentry & PTE_PRESENT:
                continue
            entry = self._propagate(level, gentry)
            if not entry:
                continue
            shadow[index] = entry
            if level == 1:
                target = pte_frame(gentry)
                page.targets[index] = target
                self._rmap.setdefault(target, set()).add((smfn, index))
            else:
                self._pages[pte_frame(entry)].up.add((smfn, index))
        _TABLE.pack_into(self.pool.frame(smfn), 0, *shadow)
        self.counters["shadows_made"] += 1
        return smfn

    def _alloc(self) -> int:
        while True:
            try:
                smfn = self.pool.alloc()
            except PoolExhausted:
                # _shadow_prealloc, stage one: unpin the oldest top not in use.
                victim = next((g for g in self._tops if g != self._cr3), None)
                if victim is None:
                    raise
                self._unpin(victim)
                continue
            return smfn

    def _unpin(self, gfn: int) -> None:
        smfn = self._tops.pop(gfn)
        page = self._pages[smfn]
        page.pinned = False
        self.counters["unpins"] += 1
        self.tlb_flush_pending = True
        if not page.up:
            self._destroy(smfn)

    def _put(self, smfn: int, ref: tuple[int, int]) -> None:
        page = self._pages[smfn]
        page.up.discard(ref)
        if not page.up and not page.pinned:
            self._destroy(smfn)

    def _destroy(self, smfn: int) -> None:
        """sh_destroy_shadow: drop its entries (and what only they kept), free the frame."""
        page = self._pages.pop(smfn)
        del self._hash[(page.gfn, page.level)]
        self._levels_of[page.gfn] -= 1
        if not self._levels_of[page.gfn]:
            del self._levels_of[page.gfn]
        if page.level == 1:
            for index, target in page.targets.items():
                self._rmap_remove(target, smfn, index)
        else:
            for index, entry in enumerate(_TABLE.unpack_from(self.pool.frame(smfn))):
                if entry & PTE_PRESENT:
                    self._put(pte_frame(entry), (smfn, index))
        self.pool.free(smfn)
        self.counters["shadow_pages"] = len(self._pages)

    def _remove_shadows(self, gfn: int) -> None:
        """sh_remove_shadows: every shadow of ``gfn`` goes (the current top is resynced)."""
        for level in range(1, LEVELS + 1):
            smfn = self._hash.get((gfn, level))
            if smfn is None:
                continue
            if level == LEVELS and gfn == self._cr3:
                # The MMU's CR3 names it: keep the frame, make it agree again.
                for index in range(ENTRIES):
                    self._set_entry(smfn, LEVELS, index, 0)
                continue
            page = self._pages[smfn]
            if page.pinned:
                self._unpin(gfn)
            for parent, index in list(page.up):
                self._set_entry(parent, level + 1, index, 0)
        self.tlb_flush_pending = True

    # -- checking (shadow_audit_tables) ---------------------------------------------
    def audit(self) -> list[str]:
        """Every way the shadows disagree with the guest's tables or with their own
        bookkeeping; empty when all is well. For tests and debugging."""
        problems: list[str] = []
        if len(self._pages) != self.pool.used:
            problems.append(f"{len(self._pages)} shadows but {self.pool.used} pool frames used")
        rmap: dict[int, set[tuple[int, int]]] = {}
        for smfn, page in self._pages.items():
            where = f"shadow {smfn:#x} (gfn {page.gfn:#x} L{page.level})"
            if self._hash.get((page.gfn, page.level)) != smfn:
                problems.append(f"{where} is not in the hash")
            if not page.up and not page.pinned:
                problems.append(f"{where} is neither named nor pinned")
            for parent, index in page.up:
                entry = _ENTRY.unpack_from(self.pool.frame(parent), index * 8)[0]
                if not entry & PTE_PRESENT or pte_frame(entry) != smfn:
                    problems.append(f"{where}: up ({parent:#x}, {index}) does not name it")
            guest = _TABLE.unpack_from(self.guest_frame(page.gfn))
            shadow = _TABLE.unpack_from(self.pool.frame(smfn))
            for index, (gentry, entry) in enumerate(zip(guest, shadow)):
                if not entry & PTE_PRESENT:
                    continue          # a missing entry only costs a fault
                want = self._propagate(page.level, gentry)
                if entry != want and not (page.level == 1 and entry == want & ~PTE_RW):
                    problems.append(f"{where}[{index}] is {entry:#x}, the guest's entry "
                                    f"{gentry:#x} gives {want:#x}")
                if page.level == 1:
                    target = pte_frame(gentry)
                    rmap.setdefault(target, set()).add((smfn, index))
                    if entry & PTE_RW and self._levels_of[target]:
                        problems.append(f"{where}[{index}] maps page table {target:#x} writable")
                elif (smfn, index) not in self._pages[pte_frame(entry)].up:
                    problems.append(f"{where}[{index}] is missing from its child's up-set")
        if rmap != self._rmap:
            problems.append("the reverse map disagrees with the shadow L1 entries")
        return problems


def _permitted(walk: list[GuestWalkStep], write: int, user: int, fetch: int) -> bool:
    """The SDM's rights over a whole walk, CR0.WP set: every level must allow it."""
    for step in walk:
        if write and not step.entry & PTE_RW:
            return False
        if user and not step.entry & PTE_USER:
            return False
        if fetch and step.entry & PTE_NX:
            return False
    return True
