"""gRPC adapter for the Memory service (XENMEM_*, mmu_update, mmuext_op)."""
from __future__ import annotations

from xenlab.proto import memory_pb2, memory_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen import abi


class MemoryServicer(memory_pb2_grpc.MemoryServicer):
    def __init__(self, hv, toolstack):
        self.hv = hv
        self.toolstack = toolstack      # xl mem-set and mem-max are libxl's

    def _caller(self, context):
        return self.hv.identity.authenticate(context)

    def _domid(self, caller, what: str, domid: int, name: str = "") -> int:
        """A domain named by id, DOMID_SELF or name, that ``caller`` may ``what``."""
        if domid == abi.DOMID_SELF and not name:
            return caller.domid
        return self.hv.domains.lookup_as(caller.domid, caller.privileged, what, domid, name).domid

    def _reservation(self, domid: int) -> memory_pb2.Reservation:
        current, maximum, target = self.hv.memory.reservation(domid)
        return memory_pb2.Reservation(domid=domid, current_pages=current, max_pages=maximum,
                                      target_pages=target)

    @handles_xen_errors
    async def GetReservation(self, request, context):
        caller = self._caller(context)
        domid = self._domid(caller, "read the reservation of", request.domid, request.name)
        return self._reservation(domid)

    @handles_xen_errors
    async def IncreaseReservation(self, request, context):
        caller = self._caller(context)
        domid = self._domid(caller, "increase the reservation of", request.domid)
        gfns = self.hv.memory.increase_reservation(domid, request.nr_pages, list(request.gfns))
        return memory_pb2.ReservationResult(gfns=gfns, reservation=self._reservation(domid))

    @handles_xen_errors
    async def DecreaseReservation(self, request, context):
        caller = self._caller(context)
        domid = self._domid(caller, "decrease the reservation of", request.domid)
        gfns = self.hv.memory.decrease_reservation(domid, list(request.gfns))
        return memory_pb2.ReservationResult(gfns=gfns, reservation=self._reservation(domid))

    @handles_xen_errors
    async def SetTarget(self, request, context):
        caller = self._caller(context)
        caller.require_privileged("xl mem-set")
        domid = self._domid(caller, "set the memory target of", request.domain.domid,
                            request.domain.name)
        self.toolstack.set_memory_target(domid, request.kb)
        return self._reservation(domid)

    @handles_xen_errors
    async def SetMax(self, request, context):
        caller = self._caller(context)
        caller.require_privileged("xl mem-max")
        domid = self._domid(caller, "set the maximum memory of", request.domain.domid,
                            request.domain.name)
        self.toolstack.set_memory_max(domid, request.kb)
        return self._reservation(domid)

    @handles_xen_errors
    async def GetMemoryMap(self, request, context):
        caller = self._caller(context)
        domid = self._domid(caller, "get the memory map of", request.domain.domid,
                            request.domain.name)
        return memory_pb2.MemoryMap(**self.hv.memory.memory_map(domid, request.with_populated))

    @handles_xen_errors
    async def MachineToPhys(self, request, context):
        # Every domain may read it, as every PV guest maps Xen's M2P read-only.
        self._caller(context)
        return memory_pb2.MachineToPhysResult(
            gfns=self.hv.memory.machine_to_phys(list(request.mfns)))

    @handles_xen_errors
    async def MmuUpdate(self, request, context):
        caller = self._caller(context)
        updates = [(u.ptr, u.val) for u in request.updates]
        self.hv.paging.count(caller.domid, "mmu_update")
        done, status = self.hv.memory.mmu_update(caller.domid, updates,
                                                 self.hv.grants.mapped_by(caller.domid))
        return memory_pb2.MmuUpdateResult(done=done, status=status)

    @handles_xen_errors
    async def MmuextOp(self, request, context):
        caller = self._caller(context)
        ops = [(op.cmd, op.arg) for op in request.ops]
        self.hv.paging.count(caller.domid, "mmuext_op")
        done, status = self.hv.memory.mmuext(caller.domid, ops,
                                             self.hv.grants.mapped_by(caller.domid))
        return memory_pb2.MmuUpdateResult(done=done, status=status)
