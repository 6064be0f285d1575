"""XENMEM_*, mmu_update and mmuext_op as a domain's kernel makes them,
typed: where its memory is, the reservation the balloon moves, and its
page-table updates (a MemoryError_ when refused)."""
from __future__ import annotations

from dataclasses import dataclass, field

from xenlab.proto import common_pb2, memory_pb2
from xenlab.rpc import call
from xenlab.xen.errors import MemoryError_


@dataclass(frozen=True)
class MemoryMap:
    """The domain's memory segment: page 0 is shared_info, guest frame N
    is at first_frame_offset + N pages."""

    shm_path: str
    segment_pages: int
    shared_info_offset: int
    first_frame_offset: int
    populated: tuple[int, ...] = field(default=())
    mfns: tuple[int, ...] = field(default=())     # the P2M of `populated`, in order


@dataclass(frozen=True)
class Reservation:
    current_pages: int
    max_pages: int
    target_pages: int


class MemoryOps:
    def __init__(self, stub, domid: int):
        self._stub = stub
        self.domid = domid

    async def memory_map(self, with_populated: bool = False) -> MemoryMap:
        mm = await call(self._stub.GetMemoryMap(memory_pb2.MemoryMapRequest(
            domain=common_pb2.DomainRef(domid=self.domid), with_populated=with_populated)),
            MemoryError_)
        return MemoryMap(mm.shm_path, mm.segment_pages, mm.shared_info_offset,
                         mm.first_frame_offset, tuple(mm.populated), tuple(mm.mfns))

    async def machine_to_phys(self, mfns) -> list[int]:
        """Read Xen's M2P: each frame's gfn, INVALID_M2P_ENTRY if no domain owns it."""
        got = await call(self._stub.MachineToPhys(memory_pb2.MachineToPhysRequest(
            mfns=list(mfns))), MemoryError_)
        return list(got.gfns)

    async def reservation(self) -> Reservation:
        res = await call(self._stub.GetReservation(common_pb2.DomainRef(domid=self.domid)),
                         MemoryError_)
        return Reservation(res.current_pages, res.max_pages, res.target_pages)

    async def increase_reservation(self, nr_pages: int) -> list[int]:
        """XENMEM_increase_reservation: the gfns populated (maybe fewer)."""
        got = await call(self._stub.IncreaseReservation(memory_pb2.IncreaseReservationRequest(
            domid=self.domid, nr_pages=nr_pages)), MemoryError_)
        return list(got.gfns)

    async def decrease_reservation(self, gfns) -> None:
        """XENMEM_decrease_reservation of these frames."""
        await call(self._stub.DecreaseReservation(memory_pb2.DecreaseReservationRequest(
            domid=self.domid, gfns=list(gfns))), MemoryError_)

    async def mmu_update(self, updates) -> None:
        """HYPERVISOR_mmu_update over (ptr, val) pairs: ptr the machine
        address of the entry | MMU_*, val the new entry. The updates before
        a refused one stay done, as in Xen; the refusal raises MemoryError_
        with Xen's errno, ``done`` telling how many were applied."""
        got = await call(self._stub.MmuUpdate(memory_pb2.MmuUpdateRequest(
            updates=[memory_pb2.MmuUpdate(ptr=ptr, val=val) for ptr, val in updates])),
            MemoryError_)
        _raise_refused("mmu_update", got.done, got.status)

    async def mmuext(self, ops) -> None:
        """HYPERVISOR_mmuext_op over (cmd, arg) pairs: cmd a MMUEXT_* number
        (xen/paging.py), arg an mfn or, for the INVLPG ops, a linear address.
        A refused op raises as ``mmu_update`` does."""
        got = await call(self._stub.MmuextOp(memory_pb2.MmuextRequest(
            ops=[memory_pb2.MmuextOp(cmd=cmd, arg=arg) for cmd, arg in ops])), MemoryError_)
        _raise_refused("mmuext_op", got.done, got.status)


def _raise_refused(what: str, done: int, status) -> None:
    if done < len(status):
        err = MemoryError_(-status[done], f"{what} item {done} refused")
        err.done = done
        raise err
