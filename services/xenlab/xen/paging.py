"""x86-64 paging as Xen's guests see it: the PTE format, the 4-level walk's
indexes, page-fault error codes, the nested (EPT) entry format, mmu_update
and mmuext_op commands (xen.h) and Xen's page types (x86 mm.h).

Three paging modes a domain can run in, as xl.cfg chooses them:

* ``direct`` (PV, ``type="pv"``): the guest's page tables hold machine frame
  numbers and are the ones the MMU walks. They are read-only to the guest,
  which changes them with ``mmu_update`` and pins them with ``mmuext_op``.
* ``shadow`` (``hap=0``): the guest's tables hold guest frame numbers and are
  writable in its own terms; the hypervisor keeps shadow tables in machine
  terms (the ones the MMU walks) and traps every write to a guest table.
* ``hap`` (``hap=1``, ``type="hvm"`` or ``"pvh"``): the guest's tables hold
  guest frame numbers; the MMU walks them and, for every guest-physical
  address, the nested P2M table (EPT's format), up to 24 references.

No I/O: layouts and pure helpers only.
"""
from __future__ import annotations

import enum

from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE

# -- the PTE (Intel SDM vol. 3, 4.5: 4-level paging) ---------------------------------------
PTE_PRESENT = 1 << 0
PTE_RW = 1 << 1
PTE_USER = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_ACCESSED = 1 << 5
PTE_DIRTY = 1 << 6
PTE_PSE = 1 << 7          # a large page (L2/L3); xenlab's guests never set it
PTE_GLOBAL = 1 << 8
PTE_NX = 1 << 63
# Xen's _PAGE_GNTTAB (bit 22 of get_pte_flags(), bit 62 of the entry): set
# only in the PTEs a grant map installs; a guest's mmu_update may not set it.
PTE_GNTTAB = 1 << 62
PTE_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)    # bits 12..51: the frame
PTE_FLAGS_MASK = ~PTE_ADDR_MASK & ((1 << 64) - 1)
# What a walk's A/D update may change and a validator must not care about.
PTE_AD = PTE_ACCESSED | PTE_DIRTY

LEVELS = 4
ENTRIES = PAGE_SIZE // 8          # 512 entries of 8 bytes per table
ENTRY_SHIFT = 9
VA_BITS = 48                      # canonical: bits 63..47 all equal


def pte(frame: int, flags: int) -> int:
    """An entry naming ``frame`` (an mfn, or a gfn in guest-physical tables)."""
    return ((frame << PAGE_SHIFT) & PTE_ADDR_MASK) | (flags & PTE_FLAGS_MASK)


def pte_frame(val: int) -> int:
    return (val & PTE_ADDR_MASK) >> PAGE_SHIFT


def pte_flags(val: int) -> int:
    return val & PTE_FLAGS_MASK


def level_shift(level: int) -> int:
    """The bit where level ``level``'s index starts (L1: 12, L4: 39)."""
    return PAGE_SHIFT + ENTRY_SHIFT * (level - 1)


def va_index(va: int, level: int) -> int:
    """The index into a level-``level`` table (1..4) of virtual address ``va``."""
    return (va >> level_shift(level)) & (ENTRIES - 1)


def is_canonical(va: int) -> bool:
    top = va >> (VA_BITS - 1)
    return top == 0 or top == (1 << (64 - VA_BITS + 1)) - 1


def canonical(va: int) -> int:
    """Sign-extend bit 47: the canonical form of a 48-bit address."""
    va &= (1 << VA_BITS) - 1
    return va | (((1 << 64) - 1) ^ ((1 << VA_BITS) - 1)) if va >> (VA_BITS - 1) else va


def vpn(va: int) -> int:
    """The virtual page: what a TLB entry is tagged with."""
    return (va & ((1 << 64) - 1)) >> PAGE_SHIFT


# Linux x86-64's direct map of all physical memory (PAGE_OFFSET without KASLR):
# a guest kernel reaches its own frame ``gfn`` at KERNEL_DIRECT_MAP + gfn * 4096.
KERNEL_DIRECT_MAP = 0xFFFF888000000000
# Linux x86-64's vmalloc area (VMALLOC_START without KASLR): where a kernel
# maps frames it does not own, foreign grants among them (alloc_vm_area).
KERNEL_VMALLOC = 0xFFFFC90000000000
# Where user address spaces put what a workload maps (an ordinary mmap base).
USER_BASE = 0x00007F0000000000

# -- page faults (Intel SDM 4.7: the error code pushed on #PF) -----------------------------
PFEC_PRESENT = 1 << 0     # 0: not-present entry; 1: a protection violation
PFEC_WRITE = 1 << 1
PFEC_USER = 1 << 2
PFEC_RSVD = 1 << 3        # a reserved bit was set in an entry
PFEC_INSN = 1 << 4        # an instruction fetch (NX)


def pfec_names(code: int) -> str:
    """The error code as Linux's oops prints it."""
    parts = ["protection" if code & PFEC_PRESENT else "not-present",
             "write" if code & PFEC_WRITE else "read",
             "user" if code & PFEC_USER else "kernel"]
    if code & PFEC_RSVD:
        parts.append("reserved-bit")
    if code & PFEC_INSN:
        parts.append("instruction-fetch")
    return " ".join(parts)


# -- the nested P2M in EPT's format (Intel SDM 28.2.2) -------------------------------------
EPT_READ = 1 << 0
EPT_WRITE = 1 << 1
EPT_EXEC = 1 << 2
EPT_MT_WB = 6 << 3        # memory type write-back, in leaf entries
EPT_ACCESSED = 1 << 8
EPT_DIRTY = 1 << 9
EPT_RWX = EPT_READ | EPT_WRITE | EPT_EXEC


def ept_present(val: int) -> bool:
    return bool(val & EPT_RWX)


# -- mmu_update (xen.h): the low bits of ptr select the command ----------------------------
MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3
MMU_UPDATE_CMD_MASK = 7           # sizeof(l1_pgentry_t) - 1

# -- mmuext_op (xen.h) ---------------------------------------------------------------------
MMUEXT_PIN_L1_TABLE = 0
MMUEXT_PIN_L2_TABLE = 1
MMUEXT_PIN_L3_TABLE = 2
MMUEXT_PIN_L4_TABLE = 3
MMUEXT_UNPIN_TABLE = 4
MMUEXT_NEW_BASEPTR = 5
MMUEXT_TLB_FLUSH_LOCAL = 6
MMUEXT_INVLPG_LOCAL = 7
MMUEXT_TLB_FLUSH_MULTI = 8
MMUEXT_INVLPG_MULTI = 9
MMUEXT_TLB_FLUSH_ALL = 10
MMUEXT_INVLPG_ALL = 11
MMUEXT_FLUSH_CACHE = 12
MMUEXT_SET_LDT = 13
MMUEXT_NEW_USER_BASEPTR = 15
MMUEXT_CLEAR_PAGE = 16
MMUEXT_COPY_PAGE = 17

MMUEXT_NAMES = {
    MMUEXT_PIN_L1_TABLE: "pin_l1", MMUEXT_PIN_L2_TABLE: "pin_l2",
    MMUEXT_PIN_L3_TABLE: "pin_l3", MMUEXT_PIN_L4_TABLE: "pin_l4",
    MMUEXT_UNPIN_TABLE: "unpin", MMUEXT_NEW_BASEPTR: "new_baseptr",
    MMUEXT_TLB_FLUSH_LOCAL: "tlb_flush_local", MMUEXT_INVLPG_LOCAL: "invlpg_local",
    MMUEXT_TLB_FLUSH_MULTI: "tlb_flush_multi", MMUEXT_INVLPG_MULTI: "invlpg_multi",
    MMUEXT_TLB_FLUSH_ALL: "tlb_flush_all", MMUEXT_INVLPG_ALL: "invlpg_all",
    MMUEXT_FLUSH_CACHE: "flush_cache", MMUEXT_SET_LDT: "set_ldt",
    MMUEXT_NEW_USER_BASEPTR: "new_user_baseptr", MMUEXT_CLEAR_PAGE: "clear_page",
    MMUEXT_COPY_PAGE: "copy_page",
}
PIN_LEVEL = {MMUEXT_PIN_L1_TABLE: 1, MMUEXT_PIN_L2_TABLE: 2,
             MMUEXT_PIN_L3_TABLE: 3, MMUEXT_PIN_L4_TABLE: 4}


# -- page types (x86 mm.h, PGT_*): what a frame is used as ---------------------------------
class PageType(enum.IntEnum):
    NONE = 0
    L1 = 1
    L2 = 2
    L3 = 3
    L4 = 4
    SEG_DESC = 5
    WRITABLE = 7

    @classmethod
    def table(cls, level: int) -> "PageType":
        return cls(level)


class PagingMode(str, enum.Enum):
    DIRECT = "direct"
    SHADOW = "shadow"
    HAP = "hap"


# Memory references a TLB miss costs: 4 for a 1-D walk; for the 2-D walk of
# nested paging, (levels + 1) * (nested levels + 1) - 1 = 24 (Bhargava et al.,
# ASPLOS 2008).
WALK_REFS_1D = LEVELS
WALK_REFS_2D = (LEVELS + 1) * (LEVELS + 1) - 1

# -- xenlab's caps on one mmu_update / mmuext_op call --------------------------------------
# Xen itself has no cap (long batches continue through hypercall continuations);
# the lab's hypervisor refuses longer batches with E2BIG, and a guest splits its
# batches at these sizes.
MAX_MMU_UPDATES = 1024
MAX_MMUEXT_OPS = 16
