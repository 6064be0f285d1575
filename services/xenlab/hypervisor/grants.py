"""Grant tables, v1 semantics (xen/include/public/grant_table.h).

Each domain's grant entries live in grant frames of its own memory, which
its kernel names with GNTTABOP_setup_table (up to ``max_frames``, 512
entries a frame; GNTTABOP_query_size tells both). The kernel grants and
ends access by writing those entries itself (xen/grant_table.py); the
hypervisor is not asked. On GNTTABOP_map_grant_ref and GNTTABOP_copy the
hypervisor reads the entry from the granter's frame, checks it and pins it
with a compare-and-swap that sets GTF_reading (and GTF_writing), as Xen's
_set_status_v1 does; from then on it works from its own active entry (the
frame it read, the pin counts), never from the shared entry again, and
clears the flags when the last pin goes. The granter cannot end access to
a pinned entry (its compare-and-swap fails) nor free a pinned frame (the
memory core asks ``_frame_busy``).

A granted frame may be mapped by the grantee, which hands it the place of
that one page in the granter's segment, or copied to and from without
mapping. Each mapper holds its mappings in a maptrack table of bounded
size: 1024 handles for a domU, more for a privileged domain, whose
backends may keep a vif's buffer pages mapped (netback's persistent
grants: 512 per vif).

No operation costs more than its own ops: every batched call is capped, and
the counts that answer "is this frame mapped?" (per granter, by gfn) and
"what may this mapper's PTEs name?" (per mapper, by mfn) are kept exact on
every map and unmap, so neither question scans a table.
"""
from __future__ import annotations

import errno
import heapq
from collections import Counter
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from xenlab.hypervisor.caller import Caller
from xenlab.xen import abi
from xenlab.xen.doorbell import MAX_COPY_BATCH
from xenlab.xen.errors import GrantError, XenError
from xenlab.xen.grant_table import GrantFrames

if TYPE_CHECKING:       # the memory is handed in; the core maps nothing itself
    from xenlab.hypervisor.memory import MachineMemory

DEFAULT_MAX_MAPTRACK = 1024
# Domain-0's maptrack: Xen's own default (max_maptrack_frames=1024, 512k
# handles), room for 1,000 vifs' persistent grants and their rings. Handles
# are made as they are used, so the limit costs nothing until then.
PRIVILEGED_MAX_MAPTRACK = 512 * 1024
# Ops in one MapBatch / UnmapBatch call: netback maps a vif's 512 buffers in
# a few calls.
MAX_MAP_BATCH = 1024
# Ops in one GNTTABOP_copy call, gRPC or doorbell: the doorbell's COPY size.
MAX_COPY_OPS = MAX_COPY_BATCH


@dataclass(frozen=True)
class Mapping:
    handle: int
    granter: int
    ref: int
    shm_path: str
    offset: int          # byte offset of the one granted page in shm_path
    length: int
    readonly: bool
    mfn: int
    # GNTMAP_contains_pte: the machine address of the L1 entry the map
    # installed in a validated table of the mapper's (cleared at unmap).
    pte_addr: int | None = None


@dataclass(frozen=True)
class CopyPtr:
    domid: int
    ref: int = 0
    gfn: int = 0
    use_gref: bool = False
    offset: int = 0


@dataclass(frozen=True)
class CopyOp:
    source: CopyPtr
    dest: CopyPtr
    length: int


@dataclass(frozen=True)
class GrantEntry:
    """A snapshot of one grant_entry_v1 in use, as the granter's frame has it."""
    ref: int
    flags: int
    domid: int           # the grantee
    frame: int           # the granter's gfn


class _Ids:
    """Lowest-free id allocator over [first, limit)."""

    def __init__(self, first: int, limit: int):
        self.limit = limit
        self.high = first            # ids below this have been handed out before
        self._freed: list[int] = []

    def alloc(self) -> int | None:
        if self._freed:
            return heapq.heappop(self._freed)
        if self.high >= self.limit:
            return None
        self.high += 1
        return self.high - 1

    def free(self, ident: int) -> None:
        heapq.heappush(self._freed, ident)


@dataclass
class _Active:
    """Xen's active_grant_entry: a pinned entry as the hypervisor read it
    when the first pin took it; the shared entry is not read again."""
    domid: int           # the grantee that pinned it
    gfn: int
    readers: int = 0
    writers: int = 0


@dataclass
class _Table:
    domid: int
    max_frames: int
    handles: _Ids
    shared: GrantFrames = field(default_factory=GrantFrames)
    gfns: list[int] = field(default_factory=list)      # the grant frames, in order
    frame_set: set[int] = field(default_factory=set)
    active: dict[int, _Active] = field(default_factory=dict)   # pinned refs
    # The mappings this domain holds, each with the entry it pins and that
    # entry's table: objects, not (granter, ref), since a granter's domid
    # may come back.
    maptrack: dict[int, tuple[Mapping, _Active, "_Table"]] = field(default_factory=dict)
    # Mappings other domains hold of this domain's frames: gfn -> ref -> count.
    mapped_gfns: dict[int, Counter] = field(default_factory=dict)
    # Frames of other domains this domain has mapped: mfn -> [read-only
    # mappings, writable mappings].
    foreign: dict[int, list[int]] = field(default_factory=dict)
    nr_mapped: int = 0          # mappings of this table's entries, all told
    dead: bool = False          # the domain is gone; its frames with it


class ForeignFrames(MappingABC):
    """mfn -> readonly for the frames a domain has mapped through grants (a
    frame mapped both ways counts as writable): a live view, O(1) a lookup."""

    def __init__(self, foreign: dict[int, list[int]]):
        self._foreign = foreign

    def __getitem__(self, mfn: int) -> bool:
        return not self._foreign[mfn][1]

    def __contains__(self, mfn: object) -> bool:
        return mfn in self._foreign

    def __iter__(self) -> Iterator[int]:
        return iter(self._foreign)

    def __len__(self) -> int:
        return len(self._foreign)


class GrantTables:
    def __init__(self, memory: MachineMemory, max_maptrack: int = DEFAULT_MAX_MAPTRACK):
        self.memory = memory
        self.max_maptrack = max_maptrack
        self._tables: dict[int, _Table] = {}
        memory.add_busy_check(self._frame_busy)
        memory.add_held_frames(self._mapped_frames)

    # -- domains ---------------------------------------------------------------
    def add_domain(self, domid: int, max_frames: int = abi.DEFAULT_MAX_GRANT_FRAMES,
                   max_maptrack: int | None = None) -> None:
        if domid in self._tables:
            raise XenError(errno.EEXIST, f"d{domid} already has a grant table")
        self._tables[domid] = _Table(domid, max_frames,
                                     _Ids(0, max_maptrack or self.max_maptrack))

    def maptrack_limit(self, domid: int) -> int:
        return self._own(domid).handles.limit

    def remove_domain(self, domid: int) -> None:
        table = self._own(domid)
        for handle in list(table.maptrack):
            self._release(table, handle)
        # Mappings other domains hold of this table's frames stay in their
        # maptrack until they unmap: their mmaps keep the pages alive.
        table.dead = True
        table.shared.release()
        del self._tables[domid]

    def _own(self, domid: int) -> _Table:
        try:
            return self._tables[domid]
        except KeyError:
            raise XenError(errno.ESRCH, f"no domain d{domid}") from None

    def _table(self, domid: int) -> _Table:
        try:
            return self._tables[domid]
        except KeyError:
            raise GrantError(abi.GNTST_bad_domain, f"no domain d{domid}") from None

    # -- GNTTABOP_setup_table / GNTTABOP_query_size ------------------------------------
    def setup_table(self, domid: int, gfns: list[int]) -> int:
        """Make ``gfns`` (frames of the domain's own) its grant frames, in
        order: the frames it has already, then new ones, which are zeroed.
        A table grows and never shrinks or moves, as in Xen. The number of
        frames."""
        table = self._own(domid)
        have = len(table.gfns)
        if len(gfns) > table.max_frames:
            raise GrantError(abi.GNTST_general_error,
                             f"d{domid} asks for {len(gfns)} grant frames; at most "
                             f"{table.max_frames}")
        if list(gfns[:have]) != table.gfns:
            raise GrantError(abi.GNTST_general_error,
                             f"d{domid}'s grant frames {table.gfns} cannot move")
        new = list(gfns[have:])
        if len(set(new)) != len(new):
            raise GrantError(abi.GNTST_bad_page, "a grant frame is named twice")
        for gfn in new:
            if not self.memory.is_populated(domid, gfn) or gfn in table.frame_set:
                raise GrantError(abi.GNTST_bad_page, f"gfn {gfn:#x} of d{domid} cannot be a "
                                                     "grant frame: not populated, or one already")
            if gfn in table.mapped_gfns:
                raise GrantError(abi.GNTST_bad_page, f"gfn {gfn:#x} of d{domid} is mapped by "
                                                     "another domain")
        for gfn in new:
            view = self.memory.frame(domid, gfn)
            view[:] = bytes(abi.PAGE_SIZE)
            table.shared.add_frame(view)
            table.gfns.append(gfn)
            table.frame_set.add(gfn)
        return len(table.gfns)

    def query_size(self, domid: int) -> tuple[int, int]:
        """(nr_frames, max_nr_frames), as GNTTABOP_query_size answers."""
        table = self._own(domid)
        return len(table.gfns), table.max_frames

    def _frame_busy(self, domid: int, gfn: int) -> str | None:
        table = self._tables.get(domid)
        if table is None:
            return None
        if gfn in table.frame_set:
            return f"is a frame of d{domid}'s grant table"
        refs = table.mapped_gfns.get(gfn)
        if not refs:
            return None
        ref = next(iter(refs))
        return f"is mapped by d{table.active[ref].domid} through grant ref {ref}"

    # -- pins (Xen's _set_status and the active entry) ------------------------------------
    def _pin(self, table: _Table, ref: int, domid: int, readonly: bool) -> _Active:
        """Pin ``ref`` of ``table`` for ``domid``, as map_grant_ref and
        acquire_grant_for_copy do: a ref past the table is GNTST_bad_gntref;
        an entry that is unused, granted to someone else or read-only when
        written is GNTST_general_error, the same answer whether or not the
        ref is live, so that a failed map tells nobody which refs another
        domain uses; a frame the granter does not have is GNTST_bad_page."""
        if not 0 <= ref < table.shared.nr_entries:
            raise GrantError(abi.GNTST_bad_gntref, f"grant ref {ref} is past d{table.domid}'s "
                                                   f"table of {table.shared.nr_entries} entries")
        act = table.active.get(ref)
        if act is not None and act.domid != domid:
            raise GrantError(abi.GNTST_general_error,
                             f"grant ref {ref} of d{table.domid} is not granted to d{domid}")
        if act is None or (not readonly and not act.writers):
            try:
                table.shared.pin(ref, domid, readonly, first=act is None)
            except GrantError as err:
                raise GrantError(err.status, f"d{table.domid}: {err.message}") from None
            if act is None:
                gfn = table.shared.frame(ref)
                if not self.memory.is_populated(table.domid, gfn) or gfn in table.frame_set:
                    table.shared.unpin(ref, writing=not readonly, reading=True)
                    raise GrantError(abi.GNTST_bad_page, f"grant ref {ref} of d{table.domid} "
                                                         "names a frame it cannot grant")
                act = table.active[ref] = _Active(domid, gfn)
        if readonly:
            act.readers += 1
        else:
            act.writers += 1
        return act

    @staticmethod
    def _unpin(table: _Table, ref: int, act: _Active, readonly: bool) -> None:
        if readonly:
            act.readers -= 1
        else:
            act.writers -= 1
        writing = not readonly and not act.writers
        reading = not act.readers and not act.writers
        if reading:
            del table.active[ref]
        if not table.dead:
            table.shared.unpin(ref, writing, reading)

    # -- the grantee -------------------------------------------------------------
    def map(self, mapper: Caller, granter: int, ref: int, readonly: bool,
            pte_addr: int | None = None) -> Mapping:
        """GNTTABOP_map_grant_ref with GNTMAP_host_map; with ``pte_addr``
        also GNTMAP_contains_pte: the hypervisor writes the L1 entry at that
        machine address (in a validated L1 table of the mapper's) and clears
        it at unmap, so that the PTE never outlives the grant. A writable
        mapping holds a WRITABLE type reference on the frame, as Xen's
        map_grant_ref takes one: a granter's page table is never mapped
        writable, and a frame mapped writable cannot become one."""
        mine = self._own(mapper.domid)
        table = self._table(granter)
        handle = mine.handles.alloc()
        if handle is None:
            raise GrantError(abi.GNTST_no_device_space,
                             f"d{mapper.domid} holds {mine.handles.limit} mappings already")
        try:
            act = self._pin(table, ref, mapper.domid, readonly)
        except GrantError:
            mine.handles.free(handle)
            raise
        mfn = self.memory.gfn_to_mfn(granter, act.gfn)
        try:
            self._hold_frame(mapper.domid, mfn, readonly, pte_addr)
        except XenError as err:
            self._unpin(table, ref, act, readonly)
            mine.handles.free(handle)
            raise GrantError(abi.GNTST_general_error,
                             f"grant ref {ref} of d{granter}: {err.message}") from None
        # Only a privileged mapper (Domain-0, which may map any page, as
        # Xen's privcmd does) is told the granter's segment: the host cannot
        # hand out one page of it, and an unprivileged domain is never handed
        # another domain's memory. An unprivileged backend reaches the page
        # through the hypervisor, with GNTTABOP_copy on the ref.
        path = self.memory.segment_path(granter) if mapper.privileged else ""
        mapping = Mapping(handle, granter, ref, path,
                          self.memory.frame_offset(granter, act.gfn), abi.PAGE_SIZE,
                          readonly, mfn, pte_addr)
        mine.maptrack[handle] = (mapping, act, table)
        table.mapped_gfns.setdefault(act.gfn, Counter())[ref] += 1
        table.nr_mapped += 1
        mine.foreign.setdefault(mapping.mfn, [0, 0])[not readonly] += 1
        return mapping

    def _hold_frame(self, mapper: int, mfn: int, readonly: bool, pte_addr: int | None) -> None:
        """The type reference a writable mapping holds, and its PTE if asked."""
        pagetables = self.memory.pagetables
        if not readonly:
            pagetables.hold_writable(mfn)
        if pte_addr is None:
            return
        try:
            pagetables.map_grant_pte(mapper, pte_addr, mfn, readonly)
        except XenError:
            if not readonly:
                pagetables.release_writable(mfn)
            raise

    def map_batch(self, mapper: Caller, ops) -> list[Mapping | GrantError]:
        """GNTTABOP_map_grant_ref over an array of (granter, ref, readonly)
        or (granter, ref, readonly, pte_addr): each op succeeds or fails on
        its own, as in Xen."""
        self._own(mapper.domid)
        _check_batch(len(ops))
        out: list[Mapping | GrantError] = []
        for op in ops:
            try:
                out.append(self.map(mapper, *op))
            except GrantError as err:
                out.append(err)
        return out

    def unmap_batch(self, mapper: Caller, handles: list[int]) -> list[int]:
        """GNTTABOP_unmap_grant_ref over an array: one GNTST_* per handle."""
        mine = self._own(mapper.domid)
        _check_batch(len(handles))
        statuses = []
        for handle in handles:
            if handle in mine.maptrack:
                self._release(mine, handle)
                statuses.append(abi.GNTST_okay)
            else:
                statuses.append(abi.GNTST_bad_handle)
        return statuses

    def unmap(self, mapper: Caller, handle: int) -> None:
        mine = self._own(mapper.domid)
        if handle not in mine.maptrack:
            raise GrantError(abi.GNTST_bad_handle,
                             f"d{mapper.domid} has no grant mapping with handle {handle}")
        self._release(mine, handle)

    def _release(self, mine: _Table, handle: int) -> None:
        mapping, act, table = mine.maptrack.pop(handle)
        mine.handles.free(handle)
        pagetables = self.memory.pagetables
        if mapping.pte_addr is not None:
            # False when the mapper overwrote the entry itself (Xen lets it,
            # and warns): it is gone either way.
            pagetables.unmap_grant_pte(mine.domid, mapping.pte_addr)
        if not mapping.readonly:
            pagetables.release_writable(mapping.mfn)
        self._unpin(table, mapping.ref, act, mapping.readonly)
        table.nr_mapped -= 1
        refs = table.mapped_gfns[act.gfn]
        refs[mapping.ref] -= 1
        if not refs[mapping.ref]:
            del refs[mapping.ref]
            if not refs:
                del table.mapped_gfns[act.gfn]
        counts = mine.foreign[mapping.mfn]
        counts[not mapping.readonly] -= 1
        if not counts[1]:
            # Xen's unmap of a GNTMAP_host_map mapping clears the PTE it
            # made: the mapper's PTEs may no longer name the frame (or no
            # longer writably, when only read-only mappings remain).
            if not counts[0]:
                del mine.foreign[mapping.mfn]
            self.memory.revoke_foreign(mine.domid, mapping.mfn, keep_readonly=bool(counts[0]))

    # -- GNTTABOP_copy -----------------------------------------------------------
    def copy(self, caller: Caller, ops: list[CopyOp]) -> list[int]:
        """One GNTST_* per op; a failed op does not stop the batch."""
        return self.copy_gnttab(caller, [_gnttab_copy(op) for op in ops])

    def copy_gnttab(self, caller: Caller, ops) -> list[int]:
        """GNTTABOP_copy on struct gnttab_copy values: tuples of (source ptr,
        source domid, source offset, dest ptr, dest domid, dest offset, len,
        flags), each ptr a grant ref where GNTCOPY_source_gref/dest_gref says
        so, else a gfn of the caller's own (domid DOMID_SELF). One GNTST_*
        per op; a failed op does not stop the batch.

        A batch pins each (domain, ref) once, as acquire_grant_for_copy
        does, and lets go of them all when it ends: nothing else runs in
        between, so every op gets the status it would get alone."""
        self._own(caller.domid)
        ops = list(ops)
        if len(ops) > MAX_COPY_OPS:
            raise XenError(errno.E2BIG, f"{len(ops)} copy ops in one call; at most {MAX_COPY_OPS}")
        batch = _CopyBatch(self, caller)
        try:
            return [batch.copy(*op) for op in ops]
        finally:
            batch.release()

    # -- views -------------------------------------------------------------------
    def domains(self) -> list[int]:
        """The domains that have a grant table."""
        return sorted(self._tables)

    def _mapped_frames(self) -> set[int]:
        """Every machine frame some domain holds a grant mapping of: Xen's
        map takes a page reference, so the frame stays its granter's (and
        out of the free pool) until the last mapping goes."""
        return {mfn for table in self._tables.values() for mfn in table.foreign}

    def mapped_by(self, domid: int) -> ForeignFrames:
        """mfn -> readonly for the frames `domid` has mapped; a frame mapped
        both ways counts as writable."""
        return ForeignFrames(self._own(domid).foreign)

    def query(self, domid: int) -> dict:
        table = self._own(domid)
        return {
            "domid": domid,
            "nr_frames": len(table.gfns),
            "max_frames": table.max_frames,
            "entries_in_use": sum(1 for _, flags, _, _ in table.shared.in_use()
                                  if flags & abi.GTF_type_mask),
            "max_entries": table.max_frames * abi.GRANT_ENTRIES_PER_FRAME,
            "active_maps": table.nr_mapped,
        }

    def grant_frames(self, domid: int) -> list[int]:
        """The gfns of ``domid``'s grant frames, in order."""
        return list(self._own(domid).gfns)

    def entries(self, domid: int) -> list[GrantEntry]:
        """The entries in use in ``domid``'s frames, as they are now."""
        return [GrantEntry(ref, flags, peer, frame)
                for ref, flags, peer, frame in self._own(domid).shared.in_use()]

    def entry(self, domid: int, ref: int) -> GrantEntry | None:
        """One entry of ``domid``'s frames as it is now; None past the table."""
        shared = self._own(domid).shared
        if not 0 <= ref < shared.nr_entries:
            return None
        return GrantEntry(ref, *shared.read(ref))

    def pinned(self, domid: int) -> dict[int, tuple[int, int, int, int]]:
        """ref -> (grantee, gfn, read pins, write pins) of ``domid``'s
        pinned entries, as the hypervisor holds them."""
        return {ref: (a.domid, a.gfn, a.readers, a.writers)
                for ref, a in self._own(domid).active.items()}

    def maptrack_count(self, mapper: int) -> int:
        """How many mappings ``mapper`` holds."""
        return len(self._own(mapper).maptrack)

    def mappings(self, mapper: int | None = None) -> list[Mapping]:
        tables = [self._own(mapper)] if mapper is not None else self._tables.values()
        return [m for t in tables for m, _, _ in t.maptrack.values()]


def _check_batch(n: int) -> None:
    if n > MAX_MAP_BATCH:
        raise XenError(errno.E2BIG, f"{n} ops in one call; at most {MAX_MAP_BATCH}")


def _gnttab_copy(op: CopyOp) -> tuple:
    src, dst = op.source, op.dest
    flags = ((abi.GNTCOPY_source_gref if src.use_gref else 0)
             | (abi.GNTCOPY_dest_gref if dst.use_gref else 0))
    return (src.ref if src.use_gref else src.gfn, src.domid, src.offset,
            dst.ref if dst.use_gref else dst.gfn, dst.domid, dst.offset, op.length, flags)


class _CopyBatch:
    """The frames one GNTTABOP_copy batch touches, each resolved (or
    refused) and pinned once; the pins and views are released when the
    batch is done."""

    __slots__ = ("grants", "caller", "pages", "views", "pins")

    def __init__(self, grants: GrantTables, caller: Caller):
        self.grants = grants
        self.caller = caller
        self.pages: dict[tuple, memoryview | int] = {}     # -> the frame, or a GNTST_*
        self.views: list[memoryview] = []
        self.pins: list[tuple[_Table, int, _Active, bool]] = []

    def copy(self, sptr: int, sdom: int, soff: int, dptr: int, ddom: int, doff: int,
             length: int, flags: int) -> int:
        if (length < 0 or soff < 0 or doff < 0 or soff + length > abi.PAGE_SIZE
                or doff + length > abi.PAGE_SIZE):
            return abi.GNTST_bad_copy_arg
        src = self.page(sdom, sptr, bool(flags & abi.GNTCOPY_source_gref), False)
        if type(src) is int:
            return src
        dst = self.page(ddom, dptr, bool(flags & abi.GNTCOPY_dest_gref), True)
        if type(dst) is int:
            return dst
        dst[doff:doff + length] = src[soff:soff + length]
        return abi.GNTST_okay

    def page(self, domid: int, ptr: int, use_gref: bool, write: bool) -> memoryview | int:
        key = (domid, ptr, use_gref, write)
        page = self.pages.get(key)
        if page is None:
            try:
                where = self.frame(domid, ptr, use_gref, write)
                if write and self.grants.memory.pagetables.is_table(
                        self.grants.memory.gfn_to_mfn(*where)):
                    # The destination takes a WRITABLE type ref in Xen: a
                    # page table in force is never written behind its validation.
                    raise GrantError(abi.GNTST_general_error)
                page = self.grants.memory.frame(*where)
                self.views.append(page)
            except GrantError as err:
                page = err.status
            except XenError:
                page = abi.GNTST_general_error
            self.pages[key] = page
        return page

    def frame(self, domid: int, ptr: int, use_gref: bool, write: bool) -> tuple[int, int]:
        caller = self.caller
        if not use_gref:
            # gnttab_copy_lock_domain: "Only DOMID_SELF may reference via frame".
            if domid != abi.DOMID_SELF:
                raise GrantError(abi.GNTST_permission_denied)
            if not self.grants.memory.is_populated(caller.domid, ptr):
                raise GrantError(abi.GNTST_bad_page)
            return caller.domid, ptr
        domid = caller.domid if domid == abi.DOMID_SELF else domid
        table = self.grants._table(domid)
        act = self.grants._pin(table, ptr, caller.domid, readonly=not write)
        self.pins.append((table, ptr, act, not write))
        return domid, act.gfn

    def release(self) -> None:
        for view in self.views:
            view.release()
        for table, ref, act, readonly in self.pins:
            GrantTables._unpin(table, ref, act, readonly)
