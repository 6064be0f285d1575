"""Grant tables, v1 semantics (xen/include/public/grant_table.h).

Each domain has a table of ``max_frames * 512`` grant entries (flags, domid,
frame); refs 0..7 are reserved for the toolstack. A granted frame may be
mapped by the grantee (GNTTABOP_map_grant_ref), which hands it the place of
that one page in the granter's segment, or copied to and from
(GNTTABOP_copy) without mapping. While mapped an entry carries GTF_reading or
GTF_writing and cannot be ended; the granter cannot free the frame either.
Each mapper holds its mappings in a maptrack table of bounded size: 1024
handles for a domU, more for a privileged domain, whose backends may keep a
vif's buffer pages mapped (netback's persistent grants: 512 per vif).

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

if TYPE_CHECKING:       # the memory is handed in; the core maps nothing itself
    from xenlab.hypervisor.memory import MachineMemory

DEFAULT_MAX_MAPTRACK = 1024
# Domain-0's maptrack: room for 64 vifs' persistent grants and their rings
# (Xen's own default, max_maptrack_frames=1024, is 512k handles).
PRIVILEGED_MAX_MAPTRACK = 64 * 1024
# Entries in one GrantAccess / EndAccess call and ops in one MapBatch /
# UnmapBatch call: netfront grants its 2 rings and 512 buffers in one call.
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
    """A snapshot of one grant_entry_v1 in use."""
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
class _Entry:
    flags: int
    peer: int
    gfn: int
    readers: int = 0
    writers: int = 0

    @property
    def mapped(self) -> bool:
        return bool(self.readers or self.writers)


@dataclass
class _Table:
    domid: int
    max_frames: int
    refs: _Ids
    handles: _Ids
    entries: dict[int, _Entry] = field(default_factory=dict)
    # The mappings this domain holds, each with the entry it pins and that
    # entry's table: objects, not (granter, ref), since a granter's domid
    # may come back.
    maptrack: dict[int, tuple[Mapping, _Entry, "_Table"]] = field(default_factory=dict)
    # Mappings other domains hold of this domain's frames: gfn -> ref -> count.
    mapped_gfns: dict[int, Counter] = field(default_factory=dict)
    # Frames of other domains this domain has mapped: mfn -> [read-only
    # mappings, writable mappings].
    foreign: dict[int, list[int]] = field(default_factory=dict)
    active: int = 0             # mappings of this table's entries, all told


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

    # -- domains ---------------------------------------------------------------
    def add_domain(self, domid: int, max_frames: int = abi.DEFAULT_MAX_GRANT_FRAMES,
                   max_maptrack: int | None = None) -> None:
        if domid in self._tables:
            raise XenError(errno.EEXIST, f"d{domid} already has a grant table")
        limit = max_frames * abi.GRANT_ENTRIES_PER_FRAME
        self._tables[domid] = _Table(domid, max_frames,
                                     _Ids(abi.GNTTAB_NR_RESERVED_ENTRIES, limit),
                                     _Ids(0, max_maptrack or self.max_maptrack))

    def maptrack_limit(self, domid: int) -> int:
        return self._own(domid).handles.limit

    def remove_domain(self, domid: int) -> None:
        table = self._own(domid)
        for handle in list(table.maptrack):
            self._release(table, handle)
        # Mappings other domains hold of this table's frames stay in their
        # maptrack until they unmap: their mmaps keep the pages alive.
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

    def _entry(self, table: _Table, ref: int) -> _Entry:
        entry = table.entries.get(ref)
        if entry is None:
            raise GrantError(abi.GNTST_bad_gntref, f"d{table.domid} has no grant ref {ref}")
        return entry

    @staticmethod
    def _granted_entry(table: _Table, ref: int, caller: int, write: bool) -> _Entry:
        """The entry behind ``ref`` of another domain, as map_grant_ref and
        acquire_grant_for_copy check it: a ref past the table is
        GNTST_bad_gntref; an entry that is unused, granted to someone else
        or read-only when written is GNTST_general_error ("Bad flags or
        dom"), the same answer and words whether or not the ref is live, so
        that a failed map tells nobody which refs another domain uses."""
        if not 0 <= ref < table.refs.limit:
            raise GrantError(abi.GNTST_bad_gntref, f"grant ref {ref} is past d{table.domid}'s "
                                                   f"table of {table.refs.limit} entries")
        entry = table.entries.get(ref)
        if entry is None or entry.peer != caller:
            raise GrantError(abi.GNTST_general_error,
                             f"grant ref {ref} of d{table.domid} is not granted to d{caller}")
        if write and entry.flags & abi.GTF_readonly:
            raise GrantError(abi.GNTST_general_error,
                             f"grant ref {ref} of d{table.domid} is read-only")
        return entry

    # -- the granter -------------------------------------------------------------
    def grant_access(self, domid: int, peer: int, gfn: int, readonly: bool) -> int:
        table = self._own(domid)
        if peer not in self._tables:
            raise GrantError(abi.GNTST_bad_domain, f"cannot grant to d{peer}: no such domain")
        if not self.memory.is_populated(domid, gfn):
            raise GrantError(abi.GNTST_bad_page, f"gfn {gfn:#x} of d{domid} is not populated")
        ref = table.refs.alloc()
        if ref is None:
            raise GrantError(abi.GNTST_no_device_space,
                             f"d{domid}'s grant table is full ({table.refs.limit} entries)")
        flags = abi.GTF_permit_access | (abi.GTF_readonly if readonly else 0)
        table.entries[ref] = _Entry(flags, peer, gfn)
        return ref

    def grant_access_all(self, domid: int, entries: list[tuple[int, int, bool]]) -> list[int]:
        """Grant every (peer, gfn, readonly) or, if any is refused, none."""
        self._own(domid)
        _check_batch(len(entries))
        refs: list[int] = []
        try:
            for peer, gfn, readonly in entries:
                refs.append(self.grant_access(domid, peer, gfn, readonly))
        except XenError:
            self.end_access_all(domid, refs)
            raise
        return refs

    def end_access(self, domid: int, ref: int) -> None:
        self.end_access_all(domid, [ref])

    def end_access_all(self, domid: int, refs: list[int]) -> None:
        """End every ref or, if any cannot be ended, none."""
        table = self._own(domid)
        _check_batch(len(refs))
        if len(set(refs)) != len(refs):
            raise GrantError(abi.GNTST_bad_gntref, "a grant ref appears twice")
        for ref in refs:
            entry = self._entry(table, ref)
            if entry.mapped:
                # gnttab_end_foreign_access_ref fails while GTF_reading/writing is set.
                raise XenError(errno.EBUSY, f"grant ref {ref} of d{domid} is still mapped "
                                            f"by d{entry.peer}")
        for ref in refs:
            del table.entries[ref]
            table.refs.free(ref)

    def _frame_busy(self, domid: int, gfn: int) -> str | None:
        table = self._tables.get(domid)
        refs = table.mapped_gfns.get(gfn) if table is not None else None
        if not refs:
            return None
        ref = next(iter(refs))
        return f"is mapped by d{table.entries[ref].peer} through grant ref {ref}"

    # -- the grantee -------------------------------------------------------------
    def map(self, mapper: Caller, granter: int, ref: int, readonly: bool) -> Mapping:
        mine = self._own(mapper.domid)
        table = self._table(granter)
        entry = self._granted_entry(table, ref, mapper.domid, write=not readonly)
        if not self.memory.is_populated(granter, entry.gfn):
            raise GrantError(abi.GNTST_bad_page, f"grant ref {ref} of d{granter} names an "
                                                 "unpopulated frame")
        handle = mine.handles.alloc()
        if handle is None:
            raise GrantError(abi.GNTST_no_device_space,
                             f"d{mapper.domid} holds {mine.handles.limit} mappings already")
        # Only a privileged mapper (Domain-0, which may map any page, as
        # Xen's privcmd does) is told the granter's segment: the host cannot
        # hand out one page of it, and an unprivileged domain is never handed
        # another domain's memory. An unprivileged backend reaches the page
        # through the hypervisor, with GNTTABOP_copy on the ref.
        path = self.memory.segment_path(granter) if mapper.privileged else ""
        mapping = Mapping(handle, granter, ref, path,
                          self.memory.frame_offset(granter, entry.gfn), abi.PAGE_SIZE,
                          readonly, self.memory.gfn_to_mfn(granter, entry.gfn))
        mine.maptrack[handle] = (mapping, entry, table)
        self._count(entry, readonly, +1)
        table.mapped_gfns.setdefault(entry.gfn, Counter())[ref] += 1
        table.active += 1
        mine.foreign.setdefault(mapping.mfn, [0, 0])[not readonly] += 1
        return mapping

    def map_batch(self, mapper: Caller, ops: list[tuple[int, int, bool]]) -> list[Mapping | GrantError]:
        """GNTTABOP_map_grant_ref over an array of (granter, ref, readonly):
        each op succeeds or fails on its own, as in Xen."""
        self._own(mapper.domid)
        _check_batch(len(ops))
        out: list[Mapping | GrantError] = []
        for granter, ref, readonly in ops:
            try:
                out.append(self.map(mapper, granter, ref, readonly))
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

    @staticmethod
    def _count(entry: _Entry, readonly: bool, delta: int) -> None:
        if readonly:
            entry.readers += delta
        else:
            entry.writers += delta
        entry.flags &= ~(abi.GTF_reading | abi.GTF_writing)
        if entry.readers:
            entry.flags |= abi.GTF_reading
        if entry.writers:
            entry.flags |= abi.GTF_writing

    def unmap(self, mapper: Caller, handle: int) -> None:
        mine = self._own(mapper.domid)
        if handle not in mine.maptrack:
            raise GrantError(abi.GNTST_bad_handle,
                             f"d{mapper.domid} has no grant mapping with handle {handle}")
        self._release(mine, handle)

    def _release(self, mine: _Table, handle: int) -> None:
        mapping, entry, table = mine.maptrack.pop(handle)
        mine.handles.free(handle)
        self._count(entry, mapping.readonly, -1)
        table.active -= 1
        refs = table.mapped_gfns[entry.gfn]
        refs[mapping.ref] -= 1
        if not refs[mapping.ref]:
            del refs[mapping.ref]
            if not refs:
                del table.mapped_gfns[entry.gfn]
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
        so, else a gfn. One GNTST_* per op; a failed op does not stop the batch.

        A batch looks each (domain, ptr) up once: nothing changes the tables
        while it runs, so every op gets the status it would get alone."""
        self._own(caller.domid)
        ops = list(ops)
        if len(ops) > MAX_COPY_OPS:
            raise XenError(errno.E2BIG, f"{len(ops)} copy ops in one call; at most {MAX_COPY_OPS}")
        batch = _CopyBatch(self, caller)
        try:
            return [batch.copy(*op) for op in ops]
        finally:
            batch.release()

    def _copy_frame(self, caller: Caller, domid: int, ptr: int, use_gref: bool,
                    write: bool) -> tuple[int, int]:
        domid = caller.domid if domid == abi.DOMID_SELF else domid
        table = self._table(domid)
        if use_gref:
            gfn = self._granted_entry(table, ptr, caller.domid, write).gfn
        else:
            # A frame named by gfn must be the caller's own, unless the
            # caller is privileged (as dom0 may name any domain's frame).
            if domid != caller.domid and not caller.privileged:
                raise GrantError(abi.GNTST_permission_denied)
            gfn = ptr
        if not self.memory.is_populated(domid, gfn):
            raise GrantError(abi.GNTST_bad_page)
        return domid, gfn

    # -- views -------------------------------------------------------------------
    def domains(self) -> list[int]:
        """The domains that have a grant table."""
        return sorted(self._tables)

    def mapped_by(self, domid: int) -> ForeignFrames:
        """mfn -> readonly for the frames `domid` has mapped; a frame mapped
        both ways counts as writable."""
        return ForeignFrames(self._own(domid).foreign)

    def query(self, domid: int) -> dict:
        table = self._own(domid)
        per_frame = abi.GRANT_ENTRIES_PER_FRAME
        return {
            "domid": domid,
            "nr_frames": max(1, -(-table.refs.high // per_frame)),
            "max_frames": table.max_frames,
            "entries_in_use": len(table.entries),
            "max_entries": table.refs.limit,
            "active_maps": table.active,
        }

    def entries(self, domid: int) -> list[GrantEntry]:
        table = self._own(domid)
        return [GrantEntry(ref, e.flags, e.peer, e.gfn)
                for ref, e in sorted(table.entries.items())]

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
    refused) once; the views are released when the batch is done."""

    __slots__ = ("grants", "caller", "pages", "views")

    def __init__(self, grants: GrantTables, caller: Caller):
        self.grants = grants
        self.caller = caller
        self.pages: dict[tuple, memoryview | int] = {}     # -> the frame, or a GNTST_*
        self.views: list[memoryview] = []

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
                page = self.grants.memory.frame(
                    *self.grants._copy_frame(self.caller, domid, ptr, use_gref, write))
                self.views.append(page)
            except GrantError as err:
                page = err.status
            except XenError:
                page = abi.GNTST_general_error
            self.pages[key] = page
        return page

    def release(self) -> None:
        for view in self.views:
            view.release()
