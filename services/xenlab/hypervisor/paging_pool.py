"""A domain's paging pool: the machine frames its shadow tables or nested
P2M live in (xl.cfg's ``shadow_memory=``, Xen's ``d->arch.paging`` pool).

The frames are the hypervisor's, not the guest's: they are not in the
domain's P2M and the guest never writes them (its MMU may read them). A
frame is handed out zeroed, as Xen's shadow_alloc clears a shadow page
before use, and the pool never grows: when it is empty ``alloc`` raises
``PoolExhausted`` (ENOMEM) and the caller recycles its own frames (the
shadow code blows its tables, as Xen's _shadow_prealloc does).

Frames are reached through a ``FrameView``; the pool does no I/O.
"""
from __future__ import annotations

import errno
from typing import Callable, Iterable

from xenlab.xen.abi import PAGE_SIZE
from xenlab.xen.errors import MemoryError_

# mfn -> a writable PAGE_SIZE view of that machine frame; LookupError when
# the frame is not reachable from here.
FrameView = Callable[[int], memoryview]

_ZERO_PAGE = bytes(PAGE_SIZE)


class PoolExhausted(MemoryError_):
    """The paging pool has no free frame (Xen: shadow_alloc fails, -ENOMEM)."""

    def __init__(self, size: int):
        super().__init__(errno.ENOMEM, f"paging pool exhausted ({size} frames in use)")


class PagingPool:
    """A fixed set of machine frames, handed out one at a time, zeroed."""

    def __init__(self, mfns: Iterable[int], frame: FrameView):
        mfns = list(mfns)
        if len(set(mfns)) != len(mfns):
            raise MemoryError_(errno.EINVAL, "paging pool frames must be distinct")
        self.frame = frame
        self._mfns = frozenset(mfns)
        # LIFO: the frame freed last is handed out first (still warm in cache,
        # as Xen's freelist is a stack).
        self._free = list(reversed(mfns))
        self._used: set[int] = set()

    @property
    def size(self) -> int:
        return len(self._mfns)

    @property
    def used(self) -> int:
        return len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def mfns(self) -> frozenset[int]:
        return self._mfns

    def owns(self, mfn: int) -> bool:
        return mfn in self._mfns

    def in_use(self, mfn: int) -> bool:
        return mfn in self._used

    def alloc(self) -> int:
        if not self._free:
            raise PoolExhausted(self.size)
        mfn = self._free.pop()
        self.frame(mfn)[:] = _ZERO_PAGE
        self._used.add(mfn)
        return mfn

    def free(self, mfn: int) -> None:
        if mfn not in self._used:
            why = "is not a frame of this pool" if mfn not in self._mfns else "is already free"
            raise MemoryError_(errno.EINVAL, f"paging pool frame {mfn:#x} {why}")
        self._used.remove(mfn)
        self._free.append(mfn)
