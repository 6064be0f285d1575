"""A domain's view of its own memory: the shared-memory segment the
hypervisor allocated for it, mapped into this process.

Page 0 is shared_info; guest frame N is page 1 + N (MemoryMap says where).
"""
from __future__ import annotations

import mmap
import os

from xenlab.xen import abi


class GuestMemory:
    def __init__(self, shm_path: str, segment_pages: int, first_frame_offset: int):
        fd = os.open(shm_path, os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, segment_pages * abi.PAGE_SIZE)
        finally:
            os.close(fd)
        self.path = shm_path
        self.first_frame_offset = first_frame_offset
        self.nr_frames = segment_pages - first_frame_offset // abi.PAGE_SIZE

    def frame(self, gfn: int) -> memoryview:
        if not 0 <= gfn < self.nr_frames:
            raise IndexError(f"gfn {gfn} is outside this domain's memory")
        start = self.first_frame_offset + gfn * abi.PAGE_SIZE
        return memoryview(self.mm)[start:start + abi.PAGE_SIZE]

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            # A frame view is still alive somewhere; the mapping goes with the process.
            pass
