"""Grant entries in shared memory (xen/include/public/grant_table.h, v1).

A domain's grant table is an array of struct grant_entry_v1 { u16 flags;
u16 domid; u32 frame; } laid over its grant frames, 512 entries a frame.
The frames are pages of the domain's own memory, named to the hypervisor
with GNTTABOP_setup_table; both the domain's kernel and the hypervisor map
them, and neither asks the other to change an entry:

* the granter (Linux's gnttab_grant_foreign_access_ref and
  gnttab_end_foreign_access_ref, drivers/xen/grant-table.c) writes frame
  and domid, then flags with a store that orders them first; it ends access
  by swapping flags to 0 with a compare-and-swap that fails while the
  hypervisor has GTF_reading or GTF_writing set, so a mapped page is never
  taken back;
* the hypervisor (Xen's _set_status_v1 and gnttab_clear_flags,
  common/grant_table.c) pins an entry by compare-and-swapping flags and
  domid together, after checking them, and retries a few times if the
  granter keeps changing the entry; it clears GTF_writing and GTF_reading
  when the last mapping of that kind goes.

``GrantFrames`` is that array over the frames' buffers, with both sides'
operations; ``GrantRefs`` is the granter's free list (gnttab_free_head).
No I/O: the buffers are handed in.
"""
from __future__ import annotations

import heapq
import struct
from typing import Iterator

from xenlab.xen import abi
from xenlab.xen.atomic import AtomicCells
from xenlab.xen.errors import GrantError

ENTRY = abi.GRANT_ENTRY_V1                       # flags u16, domid u16, frame u32
PER_FRAME = abi.GRANT_ENTRIES_PER_FRAME
_DOMID_FRAME = struct.Struct("<HI")              # the entry past its flags
_BUSY = abi.GTF_reading | abi.GTF_writing


class GrantFrames:
    """The grant_entry_v1 array of one domain, over buffers of its frames
    (writable, page-sized, in order). One instance per thread: an instance
    keeps scratch cells for its compare-and-swaps."""

    def __init__(self, frames=()):
        self._cells: list[AtomicCells] = []
        self._views: list[memoryview] = []
        for buf in frames:
            self.add_frame(buf)

    def add_frame(self, buf) -> None:
        view = memoryview(buf)
        if view.nbytes != abi.PAGE_SIZE or view.readonly:
            raise ValueError("a grant frame is one writable page")
        self._views.append(view)
        self._cells.append(AtomicCells(view))

    def release(self) -> None:
        """Let go of the frames' buffers (their mmap may then close)."""
        for cells in self._cells:
            cells.release()
        for view in self._views:
            view.release()
        self._cells, self._views = [], []

    @property
    def nr_frames(self) -> int:
        return len(self._cells)

    @property
    def nr_entries(self) -> int:
        return len(self._cells) * PER_FRAME

    def _at(self, ref: int) -> tuple[AtomicCells, int]:
        if not 0 <= ref < self.nr_entries:
            raise GrantError(abi.GNTST_bad_gntref,
                             f"grant ref {ref} is past a table of {self.nr_entries} entries")
        frame, index = divmod(ref, PER_FRAME)
        return self._cells[frame], index * ENTRY.size

    def read(self, ref: int) -> tuple[int, int, int]:
        """(flags, domid, frame) as they are now; fields may be torn
        against a concurrent writer, as a plain read in C would be."""
        offset = self._at(ref)[1]
        return ENTRY.unpack_from(self._views[ref // PER_FRAME], offset)

    def in_use(self) -> Iterator[tuple[int, int, int, int]]:
        """(ref, flags, domid, frame) of every entry whose type is not
        GTF_invalid or which is pinned."""
        ref = 0
        for view in self._views:
            for flags, domid, frame in ENTRY.iter_unpack(view):
                if flags & (abi.GTF_type_mask | _BUSY):
                    yield ref, flags, domid, frame
                ref += 1

    def clear(self) -> None:
        """Zero every entry (a new table, before anyone uses it)."""
        for view in self._views:
            view[:] = bytes(abi.PAGE_SIZE)

    # -- the granter (Linux's gnttab_*_foreign_access_ref) ----------------------------
    def grant(self, ref: int, domid: int, frame: int, readonly: bool) -> None:
        """gnttab_update_entry_v1: frame and domid first, then flags, so
        that the hypervisor never sees GTF_permit_access with a stale
        frame or grantee (the flags store is sequentially consistent: it is
        the wmb() between them)."""
        cells, offset = self._at(ref)
        if not 0 <= domid <= 0xFFFF or not 0 <= frame <= 0xFFFFFFFF:
            raise GrantError(abi.GNTST_general_error,
                             f"d{domid} / frame {frame:#x} does not fit grant_entry_v1")
        _DOMID_FRAME.pack_into(self._views[ref // PER_FRAME], offset + 2, domid, frame)
        cells.store16(offset, abi.GTF_permit_access | (abi.GTF_readonly if readonly else 0))

    def end_access(self, ref: int) -> bool:
        """gnttab_end_foreign_access_ref_v1: clear flags unless the entry is
        mapped or being copied; False (and the entry unchanged) if it is."""
        cells, offset = self._at(ref)
        flags = cells.load16(offset)
        while True:
            if flags & _BUSY:
                return False
            found = cells.cmpxchg16(offset, flags, 0)
            if found == flags:
                return True
            flags = found

    # -- the hypervisor (Xen's _set_status_v1 / gnttab_clear_flags) -------------------
    def pin(self, ref: int, domid: int, readonly: bool, first: bool) -> None:
        """Set GTF_reading (and GTF_writing unless ``readonly``) on ``ref``
        for the grantee ``domid``. ``first``: nobody has the entry pinned,
        so its type and grantee are checked too. The check and the update
        are one compare-and-swap of flags and domid; a granter that keeps
        rewriting the entry fails the pin after GNTTABOP_SETUP_RETRIES
        retries, with GNTST_general_error as in Xen."""
        cells, offset = self._at(ref)
        combo = cells.load32(offset)
        retries = 0
        while True:
            flags, grantee = combo & 0xFFFF, combo >> 16
            if first and ((flags & abi.GTF_type_mask) != abi.GTF_permit_access
                          or grantee != domid):
                raise GrantError(abi.GNTST_general_error,
                                 f"grant ref {ref} is not granted to d{domid}")
            new = flags | abi.GTF_reading
            if not readonly:
                if flags & abi.GTF_readonly:
                    raise GrantError(abi.GNTST_general_error,
                                     f"grant ref {ref} is read-only")
                new |= abi.GTF_writing
            found = cells.cmpxchg32(offset, combo, new | grantee << 16)
            if found == combo:
                return
            if retries == abi.GNTTABOP_SETUP_RETRIES:
                raise GrantError(abi.GNTST_general_error,
                                 f"grant ref {ref} keeps changing under the hypervisor")
            retries += 1
            combo = found

    def frame(self, ref: int) -> int:
        """The entry's frame, read once (after a pin, as Xen reads it)."""
        view = self._views[ref // PER_FRAME]
        return ENTRY.unpack_from(view, (ref % PER_FRAME) * ENTRY.size)[2]

    def unpin(self, ref: int, writing: bool, reading: bool) -> None:
        """Clear GTF_writing and/or GTF_reading (the last writable pin, the
        last pin of any kind went), leaving whatever else the granter has
        written since."""
        cells, offset = self._at(ref)
        bits = (abi.GTF_writing if writing else 0) | (abi.GTF_reading if reading else 0)
        if bits:
            cells.fetch_and16(offset, ~bits)


class GrantRefs:
    """The granter's free grant refs, lowest first; refs below
    GNTTAB_NR_RESERVED_ENTRIES belong to the toolstack."""

    def __init__(self, nr_entries: int = 0):
        self.limit = abi.GNTTAB_NR_RESERVED_ENTRIES
        self._free: list[int] = []
        self.in_use: set[int] = set()
        self.grow(nr_entries)

    def grow(self, nr_entries: int) -> None:
        for ref in range(self.limit, nr_entries):
            heapq.heappush(self._free, ref)
        self.limit = max(self.limit, nr_entries)

    @property
    def free(self) -> int:
        return len(self._free)

    def alloc(self, count: int) -> list[int]:
        if count > len(self._free):
            raise GrantError(abi.GNTST_no_space, f"{count} grant refs wanted, "
                                                 f"{len(self._free)} free")
        refs = [heapq.heappop(self._free) for _ in range(count)]
        self.in_use.update(refs)
        return refs

    def release(self, refs) -> None:
        for ref in refs:
            self.in_use.discard(ref)
            heapq.heappush(self._free, ref)
