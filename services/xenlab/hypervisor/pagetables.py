"""PV direct paging: Xen's page types, type counts and the validation of
every page-table entry a guest installs (x86 mm.c: get_page_type,
get_page_from_l1e..l4e, mod_l1_entry..mod_l4_entry, do_mmu_update,
do_mmuext_op).

A frame has one type at a time (``PageType``: a page table of one level,
or writable) and a type count: the references that need it to be that
type. The type changes only when the count is 0. References come from:

* a pin (MMUEXT_PIN_Ln_TABLE) and a base pointer (MMUEXT_NEW_BASEPTR,
  MMUEXT_NEW_USER_BASEPTR): one type ref each;
* an entry of a validated Ln table, n > 1: an L(n-1) type ref on the frame
  it names; taking the first one validates that frame (all its present
  entries, recursively), dropping the last one devalidates it;
* a writable entry of a validated L1 table (or a grant PTE): a WRITABLE
  type ref; a read-only one takes only a general reference, so a page
  table may be mapped read-only, never writable.

So a frame is a page table of one level or writable, never both, and no
entry is ever in force that was not validated. A guest maps (in L1) only
frames it owns or that are granted to it (``foreign``: mfn -> read-only),
and names (in L2..L4) only tables it owns. There are no superpages (PSE is
refused at every level), no linear page tables (an entry naming a table
of its own level: a type conflict, as Xen with ``pv-linear-pt=0``) and no
cache attributes in L1 (a domain without I/O memory may not set them, as
Xen's l1_disallow_mask).

Frames are reached through ``frame`` (mfn -> a writable 4 KiB view). The
guest's process maps its own frames writable (the host cannot take that
away), so the core keeps the authoritative copy of every validated table's
present entries, takes and drops references from that copy only, and
writes each change into the frame for the MMU to walk. A guest that writes
its tables behind the core's back fools its own MMU, not the core's
counts; isolation between domains stays the process boundary.

A refused item changes nothing: every reference it took is given back
before the error is raised. Errors are ``MemoryError_`` with the errno
Xen's mm.c returns for the same refusal. No I/O.
"""
from __future__ import annotations

import errno
import struct
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from xenlab.xen import paging as pg
from xenlab.xen.abi import PAGE_SHIFT, PAGE_SIZE
from xenlab.xen.errors import MemoryError_, XenError

FrameView = Callable[[int], memoryview]
Owner = Callable[[int], "int | None"]

_ENTRIES = struct.Struct(f"<{pg.ENTRIES}Q")
_ENTRY = struct.Struct("<Q")

# get_pte_flags()'s AVAIL (bits 9..11) and AVAIL_HIGH (bits 52..62).
_AVAIL = 0x7 << 9
_AVAIL_HIGH = 0x7FF << 52
# arch_init_memory's base_disallow_mask: what a guest entry may carry.
_GUEST_FLAGS = (pg.PTE_PRESENT | pg.PTE_RW | pg.PTE_USER | pg.PTE_ACCESSED | pg.PTE_DIRTY
                | _AVAIL | _AVAIL_HIGH | pg.PTE_NX)
_BASE_DISALLOW = pg.PTE_FLAGS_MASK & ~_GUEST_FLAGS
# L1_DISALLOW_MASK: GLOBAL allowed, _PAGE_GNTTAB (only a grant map sets it)
# refused; PAT/PCD/PWT refused for a domain with no I/O memory (every one here).
_L1_DISALLOW = (_BASE_DISALLOW | pg.PTE_GNTTAB) & ~pg.PTE_GLOBAL
_DISALLOW = {1: _L1_DISALLOW, 2: _BASE_DISALLOW, 3: _BASE_DISALLOW, 4: _BASE_DISALLOW}
# FASTPATH_FLAG_WHITELIST: flags a guest may change without revalidation;
# without linear page tables a PDE's RW is one of them.
_FAST_L1 = pg.PTE_NX | _AVAIL_HIGH | _AVAIL | pg.PTE_GLOBAL | pg.PTE_AD | pg.PTE_USER
_FAST = {1: _FAST_L1, 2: _FAST_L1 | pg.PTE_RW, 3: _FAST_L1 | pg.PTE_RW,
         4: _FAST_L1 | pg.PTE_RW}

_NONE: Mapping[int, bool] = MappingProxyType({})
# Tables one mmu_update or mmuext_op call may validate (512 entries each).
# Xen preempts a long validation (-ERESTART and a continuation); a call
# here runs to its end on the hypervisor's one thread, so its work is
# capped instead: 256 tables map 512 MiB; a bigger tree is pinned bottom-up
# (a table whose children are in force already costs its 512 entries only).
MAX_VALIDATIONS_PER_CALL = 256

_TABLES = (pg.PageType.L1, pg.PageType.L2, pg.PageType.L3, pg.PageType.L4)
_FLUSHES = {pg.MMUEXT_TLB_FLUSH_LOCAL, pg.MMUEXT_TLB_FLUSH_MULTI, pg.MMUEXT_TLB_FLUSH_ALL}
_INVLPGS = {pg.MMUEXT_INVLPG_LOCAL, pg.MMUEXT_INVLPG_MULTI, pg.MMUEXT_INVLPG_ALL}


def _refuse(err: int, message: str) -> MemoryError_:
    return MemoryError_(err, message)


@dataclass(slots=True)
class PageInfo:
    """Xen's page_info for one frame, as far as paging needs it."""
    type: pg.PageType = pg.PageType.NONE
    count: int = 0              # type references
    refs: int = 0               # general references: entries naming the frame
    pinned: bool = False
    # The present entries of a validated table (index -> value): the copy
    # the counts follow. None unless the frame is a table with count > 0.
    entries: dict[int, int] | None = None

    @property
    def validated(self) -> bool:
        return self.entries is not None


@dataclass
class _Domain:
    pinned: set[int] = field(default_factory=set)
    baseptr: int | None = None
    user_baseptr: int | None = None
    stats: Counter = field(default_factory=Counter)


class PageTables:
    """Every frame's type and counts, and every domain's pins and base
    pointers. ``owner(mfn)`` is the domid owning a frame (None if free or a
    gone domain's); ``ram(mfn)`` says whether the frame is RAM at all (Xen's
    own frames and addresses past the host are not)."""

    def __init__(self, frame: FrameView, owner: Owner,
                 ram: Callable[[int], bool] = lambda mfn: True,
                 max_validations: int = MAX_VALIDATIONS_PER_CALL):
        self.max_validations = max_validations
        self._budget = max_validations
        self._frame = frame
        self._owner = owner
        self._ram = ram
        self._info: dict[int, PageInfo] = {}
        self._doms: dict[int, _Domain] = {}
        # mfn -> {(L1 table, index)} of the L1 entries naming it (revoke_foreign).
        self._sites: dict[int, set[tuple[int, int]]] = {}
        # (L1 table, index) -> domid of the grant PTEs the grant core installed.
        self._grant_ptes: dict[tuple[int, int], int] = {}
        # mfn -> writable grant mappings holding a WRITABLE type ref on it.
        self._grant_writable: Counter[int] = Counter()

    # -- page_info -----------------------------------------------------------
    def info(self, mfn: int) -> PageInfo:
        """The frame's state (a fresh PageInfo if nothing references it)."""
        return self._info.get(mfn) or PageInfo()

    def _pi(self, mfn: int) -> PageInfo:
        pi = self._info.get(mfn)
        if pi is None:
            pi = self._info[mfn] = PageInfo()
        return pi

    def _tidy(self, mfn: int, pi: PageInfo) -> None:
        if not (pi.count or pi.refs or pi.pinned):
            self._info.pop(mfn, None)

    def _view(self, mfn: int) -> memoryview:
        try:
            return self._frame(mfn)
        except LookupError:
            raise _refuse(errno.EINVAL, f"mfn {mfn:#x} is not reachable") from None

    def _clear(self, table: int, index: int) -> None:
        """Zero an entry that no longer holds anything (its frame may be gone)."""
        try:
            _ENTRY.pack_into(self._frame(table), index * 8, 0)
        except LookupError:
            pass

    def _dom(self, domid: int) -> _Domain:
        dom = self._doms.get(domid)
        if dom is None:
            dom = self._doms[domid] = _Domain()
        return dom

    # -- type references (get_page_type / put_page_type) ------------------------
    def _get_type(self, mfn: int, want: pg.PageType, domid: int,
                  foreign: Mapping[int, bool] = _NONE) -> None:
        """Take a ``want`` type reference, validating on the 0 -> 1 edge.
        A type conflict is EINVAL, as _get_page_type; a failed validation
        raises the failing entry's errno, with nothing taken."""
        pi = self._pi(mfn)
        if pi.count:
            if pi.type != want:
                self._tidy(mfn, pi)
                raise _refuse(errno.EINVAL, f"mfn {mfn:#x} is {pi.type.name}, not {want.name}")
            pi.count += 1
            return
        if want in _TABLES and self._budget <= 0:
            self._tidy(mfn, pi)
            raise _refuse(errno.E2BIG, f"more than {self.max_validations} tables to "
                                       "validate in one call; pin the lower levels first")
        pi.type, pi.count = want, 1
        if want in _TABLES:
            self._budget -= 1
            try:
                pi.entries = self._validate(mfn, int(want), domid, foreign)
            except XenError:
                pi.type, pi.count = pg.PageType.NONE, 0
                self._tidy(mfn, pi)
                raise
            self._dom(domid).stats["validations"] += 1

    def _put_type(self, mfn: int) -> None:
        pi = self._info[mfn]
        pi.count -= 1
        if pi.count:
            return
        entries, pi.entries = pi.entries, None
        level = int(pi.type)
        pi.type = pg.PageType.NONE
        if entries is not None:
            # Devalidation (free_page_type): drop what the entries held.
            for index, val in entries.items():
                self._drop_entry(mfn, level, index, val)
        self._tidy(mfn, pi)

    def _validate(self, mfn: int, level: int, domid: int,
                  foreign: Mapping[int, bool]) -> dict[int, int]:
        """promote_lN_table: take every present entry's reference, or none."""
        vals = _ENTRIES.unpack(bytes(self._view(mfn)))
        entries: dict[int, int] = {}
        try:
            if level == 1:
                self._validate_l1(mfn, domid, foreign, vals, entries)
            else:
                for index, val in enumerate(vals):
                    if val & pg.PTE_PRESENT:
                        self._take_entry(domid, mfn, level, index, val, foreign)
                        entries[index] = val
        except XenError as err:
            for index, val in entries.items():
                self._drop_entry(mfn, level, index, val)
            raise _refuse(err.errno, f"L{level} table {mfn:#x}: {err.message}") from None
        return entries

    def _validate_l1(self, mfn: int, domid: int, foreign: Mapping[int, bool],
                     vals: tuple[int, ...], entries: dict[int, int]) -> None:
        """promote_l1_table's loop: the common entry (allowed flags, a RAM
        frame of the domain's own, read-only or writable and not a table)
        has its references taken here inline; any other goes through
        _take_entry, which refuses it or takes what it needs. A whole
        direct map (65,536 entries for 256 MiB) is validated at boot, so
        this is the loop that pays for it."""
        info, owner, ram = self._info, self._owner, self._ram
        present, rw, addr = pg.PTE_PRESENT, pg.PTE_RW, pg.PTE_ADDR_MASK
        writable = pg.PageType.WRITABLE
        for index, val in enumerate(vals):
            if not val & present:
                continue
            target = (val & addr) >> PAGE_SHIFT
            pi = info.get(target)
            if (val & _L1_DISALLOW or owner(target) != domid or not ram(target)
                    or (val & rw and pi is not None and pi.count and pi.type is not writable)):
                self._take_entry(domid, mfn, 1, index, val, foreign)
                self._link(mfn, index, val)
            else:
                if pi is None:
                    pi = info[target] = PageInfo()
                if val & rw:
                    if pi.count:
                        pi.count += 1
                    else:
                        pi.type, pi.count = writable, 1
                pi.refs += 1
            entries[index] = val

    # -- one entry's references (get_page_from_lNe / put_page_from_lNe) ------------
    def _take_entry(self, domid: int, table: int, level: int, index: int, val: int,
                    foreign: Mapping[int, bool], grant: bool = False) -> None:
        flags = val & pg.PTE_FLAGS_MASK
        bad = flags & _DISALLOW[level] & ~(pg.PTE_GNTTAB if grant else 0)
        if bad:
            raise _refuse(errno.EINVAL, f"bad L{level} flags {bad:#x}")
        target = pg.pte_frame(val)
        if level == 1:
            self._check_l1_target(domid, target, bool(val & pg.PTE_RW), foreign, grant)
        elif self._owner(target) != domid:
            # get_page_from_mfn: an L2..L4 entry names only its owner's frames.
            raise _refuse(errno.EINVAL, f"L{level} entry names mfn {target:#x}, "
                                        f"not a frame of d{domid}")
        if level > 1:
            self._get_type(target, pg.PageType.table(level - 1), domid, foreign)
        elif val & pg.PTE_RW:
            try:
                self._get_type(target, pg.PageType.WRITABLE, domid)
            except XenError:
                # get_page_from_l1e's could_not_pin.
                raise _refuse(errno.EBUSY, f"mfn {target:#x} is a page table "
                                           f"({self.info(target).type.name}); it may only be "
                                           "mapped read-only") from None
        self._pi(target).refs += 1

    def _check_l1_target(self, domid: int, mfn: int, writable: bool,
                         foreign: Mapping[int, bool], grant: bool) -> None:
        if not self._ram(mfn):
            # Not RAM: MMIO space a domain without I/O memory may not map.
            raise _refuse(errno.EPERM, f"mfn {mfn:#x} is not RAM")
        if grant:
            return
        owner = self._owner(mfn)
        if owner == domid:
            return
        if mfn in foreign and not (writable and foreign[mfn]):
            return
        # could_not_pin: a free frame, or another domain's not granted (so).
        what = ("granted read-only" if mfn in foreign else
                "free" if owner is None else "neither its own nor granted to it")
        raise _refuse(errno.EBUSY, f"d{domid} may not map mfn {mfn:#x}"
                                   f"{' writable' if writable else ''}: {what}")

    def _link(self, table: int, index: int, val: int) -> None:
        """Index an L1 entry in force by the foreign frame it names
        (revoke_foreign). A domain's own frames are not indexed: a frame
        named by an entry is never freed, so it stays its owner's."""
        target = pg.pte_frame(val)
        if self._owner(target) != self._owner(table):
            self._sites.setdefault(target, set()).add((table, index))

    def _drop_entry(self, table: int, level: int, index: int, val: int) -> None:
        target = pg.pte_frame(val)
        if level == 1:
            sites = self._sites.get(target)
            if sites is not None:
                sites.discard((table, index))
                if not sites:
                    del self._sites[target]
            if self._grant_ptes.pop((table, index), None) is not None:
                # A grant PTE never outlives its validation: clear it in the frame.
                self._clear(table, index)
        pi = self._info[target]
        pi.refs -= 1
        if level > 1 or val & pg.PTE_RW:
            self._put_type(target)
        else:
            self._tidy(target, pi)

    # -- mmu_update ------------------------------------------------------------
    def mmu_update(self, domid: int, updates: list[tuple[int, int]],
                   foreign: Mapping[int, bool]) -> tuple[int, list[int]]:
        """HYPERVISOR_mmu_update: stop at the first failure, as Xen does.
        (done, one 0 or -errno per item tried)."""
        stats = self._dom(domid).stats
        stats["mmu_update_calls"] += 1
        self._budget = self.max_validations
        done, statuses = _batch(updates, lambda u: self._update(domid, u[0], u[1], foreign))
        stats["entries"] += done
        stats["refusals"] += len(statuses) - done
        return done, statuses

    def _update(self, domid: int, ptr: int, val: int, foreign: Mapping[int, bool]) -> None:
        cmd = ptr & pg.MMU_UPDATE_CMD_MASK
        if cmd == pg.MMU_MACHPHYS_UPDATE:
            # xenlab's M2P is the hypervisor's alone (the P2M is its inverse).
            raise _refuse(errno.ENOSYS, "MMU_MACHPHYS_UPDATE is not supported")
        if cmd not in (pg.MMU_NORMAL_PT_UPDATE, pg.MMU_PT_UPDATE_PRESERVE_AD,
                       pg.MMU_PT_UPDATE_NO_TRANSLATE):
            raise _refuse(errno.ENOSYS, f"bad mmu_update command {cmd}")
        table = ptr >> PAGE_SHIFT
        index = (ptr & (PAGE_SIZE - 1)) >> 3
        if self._owner(table) != domid:
            raise _refuse(errno.EINVAL, f"mfn {table:#x} is not a frame of d{domid}")
        view = self._view(table)
        if cmd == pg.MMU_PT_UPDATE_PRESERVE_AD:
            val |= _ENTRY.unpack_from(view, index * 8)[0] & pg.PTE_AD
        pi = self._info.get(table)
        if pi is None or not pi.validated:
            # A frame that is no table in force: a plain write, as Xen's
            # writable_mmu_updates.
            _ENTRY.pack_into(view, index * 8, val)
            return
        self._mod_entry(domid, table, int(pi.type), pi.entries, index, val, foreign)
        _ENTRY.pack_into(view, index * 8, val)

    def _mod_entry(self, domid: int, table: int, level: int, entries: dict[int, int],
                   index: int, val: int, foreign: Mapping[int, bool]) -> None:
        """mod_lN_entry: take the new entry's references, then drop the old's."""
        old = entries.get(index, 0)
        if val & pg.PTE_PRESENT:
            bad = val & pg.PTE_FLAGS_MASK & _DISALLOW[level]
            if bad:
                raise _refuse(errno.EINVAL, f"bad L{level} flags {bad:#x}")
            if old and not (old ^ val) & ~_FAST[level]:
                # Same frame, only flags that need no revalidation changed.
                entries[index] = val
                return
            self._take_entry(domid, table, level, index, val, foreign)
        if old:
            del entries[index]
            self._drop_entry(table, level, index, old)
        if val & pg.PTE_PRESENT:
            entries[index] = val
            if level == 1:
                self._link(table, index, val)

    # -- mmuext_op ---------------------------------------------------------------
    def mmuext(self, domid: int, ops: list[tuple[int, int]],
               foreign: Mapping[int, bool] | None = None) -> tuple[int, list[int]]:
        """HYPERVISOR_mmuext_op over (cmd, arg): arg an mfn (pins, unpin,
        base pointers) or a linear address (invlpg). Flushes and invlpgs
        are validated and counted; the caller's own MMU does them."""
        stats = self._dom(domid).stats
        stats["mmuext_calls"] += 1
        self._budget = self.max_validations
        foreign = _NONE if foreign is None else foreign
        done, statuses = _batch(ops, lambda op: self._mmuext_one(domid, op[0], op[1], foreign))
        stats["mmuext_ops"] += done
        stats["refusals"] += len(statuses) - done
        return done, statuses

    def _mmuext_one(self, domid: int, cmd: int, arg: int, foreign: Mapping[int, bool]) -> None:
        dom = self._dom(domid)
        if cmd in pg.PIN_LEVEL:
            self._pin(domid, arg, pg.PageType.table(pg.PIN_LEVEL[cmd]), foreign)
        elif cmd == pg.MMUEXT_UNPIN_TABLE:
            self._unpin(domid, arg)
        elif cmd == pg.MMUEXT_NEW_BASEPTR:
            dom.baseptr = self._swap_base(domid, dom.baseptr, arg, foreign)
        elif cmd == pg.MMUEXT_NEW_USER_BASEPTR:
            dom.user_baseptr = self._swap_base(domid, dom.user_baseptr, arg or None, foreign)
        elif cmd in _FLUSHES:
            dom.stats["tlb_flushes"] += 1
        elif cmd in _INVLPGS:
            # A non-canonical address flushes nothing (__addr_ok), and is no error.
            if pg.is_canonical(arg):
                dom.stats["invlpgs"] += 1
        elif cmd == pg.MMUEXT_FLUSH_CACHE:
            raise _refuse(errno.EACCES, "no domain here may flush caches (it has no I/O memory)")
        else:
            raise _refuse(errno.ENOSYS, f"mmuext op {pg.MMUEXT_NAMES.get(cmd, cmd)} "
                                        "is not supported")

    def _own(self, domid: int, mfn: int, what: str) -> None:
        if self._owner(mfn) != domid:
            # get_page_from_gfn fails: not the caller's, free, or not RAM.
            raise _refuse(errno.EINVAL, f"{what} mfn {mfn:#x} is not a frame of d{domid}")

    def _pin(self, domid: int, mfn: int, level: pg.PageType,
             foreign: Mapping[int, bool]) -> None:
        self._own(domid, mfn, "pinned")
        pi = self._info.get(mfn)
        if pi is not None and pi.pinned:
            raise _refuse(errno.EINVAL, f"mfn {mfn:#x} is already pinned")
        self._get_type(mfn, level, domid, foreign)
        self._info[mfn].pinned = True
        self._dom(domid).pinned.add(mfn)

    def _unpin(self, domid: int, mfn: int) -> None:
        self._own(domid, mfn, "unpinned")
        pi = self._info.get(mfn)
        if pi is None or not pi.pinned:
            raise _refuse(errno.EINVAL, f"mfn {mfn:#x} is not pinned")
        pi.pinned = False
        self._dom(domid).pinned.discard(mfn)
        self._put_type(mfn)

    def _swap_base(self, domid: int, old: int | None, new: int | None,
                   foreign: Mapping[int, bool]) -> int | None:
        """new_guest_cr3: the new root takes an L4 type ref, the old gives its back."""
        if new == old:
            return old
        if new is not None:
            self._own(domid, new, "base pointer")
            self._get_type(new, pg.PageType.L4, domid, foreign)
        if old is not None:
            self._put_type(old)
        return new

    def baseptr(self, domid: int) -> int | None:
        """The mfn of the L4 loaded by MMUEXT_NEW_BASEPTR."""
        dom = self._doms.get(domid)
        return dom.baseptr if dom else None

    def user_baseptr(self, domid: int) -> int | None:
        dom = self._doms.get(domid)
        return dom.user_baseptr if dom else None

    # -- grants ------------------------------------------------------------------
    def revoke_foreign(self, domid: int, mfn: int, keep_readonly: bool = False) -> int:
        """``domid`` may no longer map foreign frame ``mfn`` (its last grant
        mapping of it went; with ``keep_readonly``, its last writable one):
        clear the L1 entries of its validated tables that name it (only the
        writable ones, with ``keep_readonly``). How many went."""
        cleared = 0
        for table, index in list(self._sites.get(mfn, ())):
            if self._owner(table) != domid:
                continue
            entries = self._info[table].entries
            val = entries[index]
            if keep_readonly and not val & pg.PTE_RW:
                continue
            del entries[index]
            self._drop_entry(table, 1, index, val)
            self._clear(table, index)
            cleared += 1
        return cleared

    def hold_writable(self, mfn: int) -> None:
        """A writable grant mapping of ``mfn``: a WRITABLE type reference, as
        map_grant_ref's get_page_type(PGT_writable_page). EBUSY if the frame
        is a page table."""
        try:
            self._get_type(mfn, pg.PageType.WRITABLE, -1)
        except XenError:
            raise _refuse(errno.EBUSY, f"mfn {mfn:#x} is a page table "
                                       f"({self.info(mfn).type.name})") from None
        self._grant_writable[mfn] += 1

    def release_writable(self, mfn: int) -> None:
        self._grant_writable[mfn] -= 1
        if not self._grant_writable[mfn]:
            del self._grant_writable[mfn]
        self._put_type(mfn)

    def grant_writable(self) -> dict[int, int]:
        """mfn -> writable grant mappings of it (each a WRITABLE type ref)."""
        return dict(self._grant_writable)

    def map_grant_pte(self, domid: int, pte_maddr: int, mfn: int, readonly: bool,
                      user: bool = False) -> int:
        """GNTMAP_host_map | GNTMAP_contains_pte: install the entry at machine
        address ``pte_maddr``, an empty slot of a validated L1 table of
        ``domid``, mapping granted frame ``mfn``. The grant core has checked
        the grant; the frame must still not be a page table when writable.
        Returns the entry written."""
        table, index = self._grant_slot(domid, pte_maddr)
        entries = self._info[table].entries
        if index in entries:
            raise _refuse(errno.EBUSY, f"L1 entry {index} of mfn {table:#x} is in use")
        val = pg.pte(mfn, pg.PTE_PRESENT | pg.PTE_ACCESSED | pg.PTE_NX | pg.PTE_GNTTAB
                     | (0 if readonly else pg.PTE_RW | pg.PTE_DIRTY)
                     | (pg.PTE_USER if user else 0))
        view = self._view(table)
        self._take_entry(domid, table, 1, index, val, _NONE, grant=True)
        entries[index] = val
        self._link(table, index, val)
        self._grant_ptes[(table, index)] = domid
        _ENTRY.pack_into(view, index * 8, val)
        return val

    def unmap_grant_pte(self, domid: int, pte_maddr: int) -> bool:
        """Clear the grant PTE at ``pte_maddr``. False if it is no longer
        there (the guest overwrote it with mmu_update, or its table was
        devalidated: either way the entry is gone already)."""
        table, index = pte_maddr >> PAGE_SHIFT, (pte_maddr & (PAGE_SIZE - 1)) >> 3
        if self._grant_ptes.get((table, index)) != domid:
            return False
        entries = self._info[table].entries
        val = entries.pop(index)
        self._drop_entry(table, 1, index, val)
        self._clear(table, index)
        return True

    def _grant_slot(self, domid: int, pte_maddr: int) -> tuple[int, int]:
        table = pte_maddr >> PAGE_SHIFT
        if pte_maddr & 7:
            raise _refuse(errno.EINVAL, f"PTE address {pte_maddr:#x} is not 8-byte aligned")
        pi = self._info.get(table)
        if (self._owner(table) != domid or pi is None or not pi.validated
                or pi.type != pg.PageType.L1):
            raise _refuse(errno.EINVAL, f"mfn {table:#x} is not a validated L1 table "
                                        f"of d{domid}")
        return table, (pte_maddr & (PAGE_SIZE - 1)) >> 3

    def grant_ptes(self, domid: int | None = None) -> dict[int, int]:
        """PTE machine address -> mapper of the grant PTEs installed."""
        return {table << PAGE_SHIFT | index * 8: d
                for (table, index), d in self._grant_ptes.items()
                if domid is None or d == domid}

    # -- a frame's life ------------------------------------------------------------
    def is_table(self, mfn: int) -> bool:
        """Whether the frame is a page table in force (validated)."""
        pi = self._info.get(mfn)
        return pi is not None and pi.validated

    def busy(self, mfn: int) -> str | None:
        """Why the frame may not be freed or ballooned now, or None."""
        pi = self._info.get(mfn)
        if pi is None:
            return None
        if pi.pinned:
            return f"is a pinned {pi.type.name} page table"
        if pi.count:
            return f"has {pi.count} {pi.type.name} type reference(s)"
        if pi.refs:
            return f"is mapped by {pi.refs} page-table entr{'y' if pi.refs == 1 else 'ies'}"
        return None

    def forget_domain(self, domid: int) -> None:
        """Domain destruction (relinquish_memory): drop its base pointers and
        pins; the tables they held devalidate, and with them every entry
        the domain's tables held."""
        dom = self._doms.pop(domid, None)
        if dom is None:
            return
        for base in (dom.baseptr, dom.user_baseptr):
            if base is not None:
                self._put_type(base)
        for mfn in sorted(dom.pinned):
            self._info[mfn].pinned = False
            self._put_type(mfn)

    # -- views -------------------------------------------------------------------
    def stats(self, domid: int) -> dict[str, int]:
        """Counters for the paging benchmark: hypercalls (mmu_update_calls
        + mmuext_calls), entries updated, mmuext ops done, frames validated,
        refusals, TLB flushes and invlpgs asked for."""
        dom = self._doms.get(domid)
        out = dict.fromkeys(("mmu_update_calls", "mmuext_calls", "entries", "mmuext_ops",
                             "validations", "refusals", "tlb_flushes", "invlpgs"), 0)
        if dom:
            out.update(dom.stats)
        out["hypercalls"] = out["mmu_update_calls"] + out["mmuext_calls"]
        return out

    def pinned(self, domid: int | None = None) -> dict[int, int]:
        """mfn -> owner of every pinned table (of ``domid`` only, if given)."""
        return {mfn: d for d, dom in self._doms.items() if domid in (None, d)
                for mfn in dom.pinned}

    def tables(self) -> dict[int, tuple[pg.PageType, dict[int, int]]]:
        """mfn -> (level, present entries) of every validated table."""
        return {mfn: (pi.type, dict(pi.entries)) for mfn, pi in self._info.items()
                if pi.entries is not None}

    def frames(self) -> dict[int, PageInfo]:
        """mfn -> PageInfo of every frame with a type, a count or a pin."""
        return dict(self._info)

    def base_pointers(self) -> dict[int, tuple[int | None, int | None]]:
        """domid -> (baseptr, user baseptr) of the domains that loaded one."""
        return {d: (dom.baseptr, dom.user_baseptr) for d, dom in self._doms.items()
                if (dom.baseptr, dom.user_baseptr) != (None, None)}


def _batch(items, apply) -> tuple[int, list[int]]:
    statuses: list[int] = []
    for item in items:
        try:
            apply(item)
        except XenError as err:
            statuses.append(-err.errno)
            return len(statuses) - 1, statuses
        statuses.append(0)
    return len(statuses), statuses
