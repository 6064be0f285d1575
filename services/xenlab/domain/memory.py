"""A domain's view of its own memory: the shared-memory segment the
hypervisor allocated for it, mapped into this process.

Page 0 is shared_info; guest frame N is page 1 + N (MemoryMap says where).
A frame that is not populated (never given to the domain, or given back by
the balloon) is mapped PROT_NONE, so that touching it faults, as touching a
page that is gone from a PV guest's P2M does; the domain gets it back
readable and writable when the hypervisor populates it again.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os

from xenlab.domain.pagemap import PageMap
from xenlab.xen import abi

# Frames 0..15 stand for the guest kernel's own text and data: never handed out.
RESERVED_FRAMES = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_PROT_NONE = 0            # <sys/mman.h>; Python's mmap module does not name it
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE


def map_memory_object(fd: int) -> PageMap:
    """Map the whole memory object a launcher handed over, and close it:
    from then on the process holds the mapping only (PageMap keeps no
    descriptor, where mmap.mmap would keep a duplicate), so it can no longer
    resize the object under the hypervisor and Domain-0 (a shrunk segment
    would fault them with SIGBUS) nor pass it on."""
    try:
        return PageMap(fd, 0, writable=True, length=os.fstat(fd).st_size, populate=False)
    finally:
        os.close(fd)


def map_paging_pool(fd: int) -> PageMap:
    """Map the paging pool the doorbell's OK brought (HELLO_PAGING), read
    only, and close it: the shadow tables or nested P2M this domain's MMU
    walks, which the hypervisor alone writes. The descriptor is read-only,
    so a writable mapping (or mprotect to one) of it fails with EACCES."""
    try:
        return PageMap(fd, 0, writable=False, length=os.fstat(fd).st_size, populate=False)
    finally:
        os.close(fd)


class GuestMemory:
    def __init__(self, shm_path: str, segment_pages: int, first_frame_offset: int,
                 mapping: PageMap | None = None):
        """The segment at ``shm_path``, or ``mapping`` when the launcher
        handed the memory object over (map_memory_object)."""
        self._mapping = mapping
        if mapping is None:
            fd = os.open(shm_path, os.O_RDWR)
            try:
                self.mm = mmap.mmap(fd, segment_pages * abi.PAGE_SIZE)
            finally:
                os.close(fd)
        elif mapping.length < segment_pages * abi.PAGE_SIZE:
            raise ValueError(f"the memory object handed over has {mapping.length} bytes; the "
                             f"hypervisor says {segment_pages} pages")
        else:
            self.mm = mapping.view
        self.path = shm_path
        self.first_frame_offset = first_frame_offset
        self.nr_frames = segment_pages - first_frame_offset // abi.PAGE_SIZE
        self._address = mapping.addr if mapping is not None else _address_of(self.mm)
        self._populated: set[int] = set(range(self.nr_frames))
        self.paging = None       # the kernel's paging (KernelPaging), once it is on
        self._allocated: set[int] = set()
        self._free: list[int] = []

    def set_populated(self, gfns) -> None:
        """The frames the hypervisor says are populated (GetMemoryMap); the
        others become inaccessible."""
        populated = {g for g in gfns if 0 <= g < self.nr_frames}
        self._protect(self._populated - populated, _PROT_NONE)
        self._protect(populated - self._populated, _PROT_RW)
        self._populated = populated
        self._free = sorted(populated - self._allocated - set(range(RESERVED_FRAMES)))

    def counts(self) -> tuple[int, int]:
        """(frames populated, frames free to allocate)."""
        return len(self._populated), len(self._free)

    def is_populated(self, gfn: int) -> bool:
        return gfn in self._populated

    def alloc_frames(self, count: int) -> list[int]:
        """Frames for drivers (rings, buffers), lowest first; the balloon
        gives back the highest free ones, so the two rarely meet."""
        if count > len(self._free):
            raise MemoryError(f"needs {count} free frames for its drivers, has {len(self._free)}")
        taken, self._free = self._free[:count], self._free[count:]
        self._allocated.update(taken)
        return taken

    def free_frames(self, gfns) -> None:
        for gfn in gfns:
            if gfn in self._allocated:
                self._allocated.discard(gfn)
                self._free.append(gfn)
        self._free.sort()

    def balloon_candidates(self, count: int) -> list[int]:
        """Free frames the balloon may hand back, highest first."""
        return sorted(self._free, reverse=True)[:count]

    def add_frames(self, gfns) -> None:
        """Frames the hypervisor populated for the balloon (or frames a
        refused give-back left with the domain): usable again."""
        back = {g for g in gfns if 0 <= g < self.nr_frames} - self._populated
        self._protect(back, _PROT_RW)
        self._populated |= back
        self._free = sorted(set(self._free) | (set(gfns) - self._allocated))

    def forget_frames(self, gfns) -> None:
        """Frames the balloon gives back: unusable from now on, before the
        hypervisor takes them (Linux's balloon clears a page's mapping
        before XENMEM_decrease_reservation)."""
        gone = set(gfns) & self._populated
        self._free = [g for g in self._free if g not in gone]
        self._protect(gone, _PROT_NONE)
        self._populated -= gone

    def frame(self, gfn: int) -> memoryview:
        """The kernel's access to its frame ``gfn``: through its MMU once
        paging is on (xenlab.domain.paging: the direct map), else the bytes."""
        if self.paging is not None:
            return self.paging.frame(gfn)
        return self.raw_frame(gfn)

    def raw_frame(self, gfn: int) -> memoryview:
        """The bytes of frame ``gfn`` in the memory object: what the
        domain's "hardware" (its MMU's walks) reaches a frame by."""
        if not 0 <= gfn < self.nr_frames:
            raise IndexError(f"gfn {gfn} is outside this domain's memory")
        if gfn not in self._populated:
            raise IndexError(f"gfn {gfn} is not populated (the balloon gave it back)")
        start = self.first_frame_offset + gfn * abi.PAGE_SIZE
        return memoryview(self.mm)[start:start + abi.PAGE_SIZE]

    def _protect(self, gfns, prot: int) -> None:
        ordered = sorted(gfns)
        for _, run in itertools.groupby(enumerate(ordered), lambda item: item[1] - item[0]):
            run = [gfn for _, gfn in run]
            start = self._address + self.first_frame_offset + run[0] * abi.PAGE_SIZE
            if _libc.mprotect(start, len(run) * abi.PAGE_SIZE, prot) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mprotect of gfns {run[0]}..{run[-1]}: {os.strerror(err)}")

    def close(self) -> None:
        if self._mapping is not None:
            # Views of its frames may still be alive (the process is ending):
            # the mapping goes with the process.
            return
        try:
            self.mm.close()
        except BufferError:
            # A frame view is still alive somewhere; the mapping goes with the process.
            pass


def _address_of(mm: mmap.mmap) -> int:
    """Where ``mm`` is mapped in this process (for mprotect)."""
    view = (ctypes.c_char * 1).from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view          # releases the export, so that mm can still be closed
