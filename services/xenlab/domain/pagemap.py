"""One granted page mapped into this process, without a file descriptor.

Python's ``mmap.mmap`` keeps a duplicate of the file's descriptor for the
life of the mapping (until 3.13's ``trackfd=False``): a backend holding a
vif's 512 persistent grants would hold 512 descriptors. ``PageMap`` calls
mmap(2) and munmap(2) through libc instead, so the descriptor can be closed
as soon as the page is mapped, as a kernel's grant mapping holds none.

The view is a memoryview over the mapped page (read-only if mapped so).
``close()`` releases it and unmaps; a caller must not keep slices of the
view past that (netback's copies take them for one statement at a time).

Each mmap(2) is a mapping of its own (a VMA), and a process has
vm.max_map_count of them (65,530 by default) for everything. ``map_run``
maps consecutive pages of a file with one call, so that a backend holding
a frontend's 512 buffer pages holds a handful of mappings, not 512; each
page of a run is still unmapped on its own (munmap(2) of part of a mapping
is allowed: the kernel trims or splits it).
"""
from __future__ import annotations

import ctypes
import mmap
import os

from xenlab.xen import abi

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _mmap(fd: int, offset: int, length: int, writable: bool, populate: bool) -> int:
    if offset < 0 or offset % mmap.ALLOCATIONGRANULARITY or length <= 0:
        raise ValueError(f"cannot map {length} bytes at offset {offset}")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    # MAP_POPULATE: fault the page in now, not on the first frame through
    # it (not for a whole domain's memory, whose pages tmpfs backs lazily).
    flags = mmap.MAP_SHARED | (_MAP_POPULATE if populate else 0)
    addr = _libc.mmap(None, length, prot, flags, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {length} bytes at offset {offset}: {os.strerror(err)}")
    return addr


def map_run(fd: int, offset: int, count: int, writable: bool) -> list[PageMap]:
    """``count`` consecutive pages of ``fd`` from ``offset``, with one
    mmap(2): one mapping for the run."""
    if count <= 0:
        raise ValueError(f"cannot map a run of {count} pages")
    addr = _mmap(fd, offset, count * abi.PAGE_SIZE, writable, populate=True)
    return [PageMap.at(addr + i * abi.PAGE_SIZE, abi.PAGE_SIZE, writable) for i in range(count)]


class PageMap:
    __slots__ = ("addr", "length", "view")

    def __init__(self, fd: int, offset: int, writable: bool, length: int = abi.PAGE_SIZE,
                 populate: bool = True):
        self._set(_mmap(fd, offset, length, writable, populate), length, writable)

    @classmethod
    def at(cls, addr: int, length: int, writable: bool) -> PageMap:
        """A page already mapped at ``addr`` (a part of a run), unmapped by
        its ``close``."""
        page = cls.__new__(cls)
        page._set(addr, length, writable)
        return page

    def _set(self, addr: int, length: int, writable: bool) -> None:
        self.addr = addr
        self.length = length
        view = memoryview((ctypes.c_char * length).from_address(addr)).cast("B")
        self.view = view if writable else view.toreadonly()

    def close(self) -> None:
        if self.addr is None:
            return
        self.view.release()
        if _libc.munmap(self.addr, self.length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"munmap: {os.strerror(err)}")
        self.addr = None
