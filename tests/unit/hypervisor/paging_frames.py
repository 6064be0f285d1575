"""Machine frames as bytearrays, for the paging cores' tests: the FrameView
the hypervisor gives them is MachineMemory's frame of an mfn."""
from __future__ import annotations

from xenlab.hypervisor.paging_pool import PagingPool
from xenlab.xen.abi import PAGE_SIZE


class Frames(dict):
    """mfn -> memoryview of 4096 bytes; an unknown mfn raises KeyError (a LookupError)."""

    def add(self, mfns) -> None:
        for mfn in mfns:
            self[mfn] = memoryview(bytearray(PAGE_SIZE))

    def view(self, mfn: int) -> memoryview:
        return self[mfn]


def pool_of(frames: Frames, first: int, count: int) -> PagingPool:
    mfns = range(first, first + count)
    frames.add(mfns)
    return PagingPool(mfns, frames.view)
