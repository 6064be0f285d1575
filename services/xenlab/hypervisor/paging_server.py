"""gRPC adapter for the Paging service: a domain's paging mode and pool, the
VM exits of shadow paging (PageFault, SetCr3) and its HVMOP_pagetable_dying,
HAP's (NestedFault), and the paging counters (Stats)."""
from __future__ import annotations

from xenlab.proto import common_pb2, paging_pb2, paging_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen import abi
from xenlab.xen.errors import PermissionError_


class PagingServicer(paging_pb2_grpc.PagingServicer):
    def __init__(self, hv):
        self.hv = hv

    def _self(self, context, domid: int, what: str) -> int:
        """An exit is the domain's own CPU trapping: nobody makes one for
        another domain, Domain-0 included."""
        caller = self.hv.identity.authenticate(context)
        if domid not in (abi.DOMID_SELF, caller.domid):
            raise PermissionError_(f"d{caller.domid} may not make a {what} exit for d{domid}: "
                                   "a domain's exits are its own")
        return caller.domid

    def _readable(self, context, request, what: str) -> int:
        caller = self.hv.identity.authenticate(context)
        if request.domid == abi.DOMID_SELF and not request.name:
            return caller.domid
        return self.hv.domains.lookup_as(caller.domid, caller.privileged, what,
                                         request.domid, request.name).domid

    @handles_xen_errors
    async def GetPagingInfo(self, request, context):
        domid = self._readable(context, request, "read the paging of")
        return paging_pb2.PagingInfo(**self.hv.paging.info(domid))

    @handles_xen_errors
    async def PageFault(self, request, context):
        domid = self._self(context, request.domid, "PageFault")
        value = request.value if request.HasField("value") else None
        outcome = self.hv.paging.page_fault(domid, request.va, request.code, value)
        return paging_pb2.PageFaultReply(outcome=outcome,
                                         flush_tlb=self.hv.paging.take_tlb_flush(domid))

    @handles_xen_errors
    async def SetCr3(self, request, context):
        domid = self._self(context, request.domid, "SetCr3")
        return paging_pb2.SetCr3Reply(shadow_root=self.hv.paging.set_cr3(domid, request.gfn))

    @handles_xen_errors
    async def PagetableDying(self, request, context):
        domid = self._self(context, request.domid, "PagetableDying")
        self.hv.paging.pagetable_dying(domid, request.gpa)
        return common_pb2.Empty()

    @handles_xen_errors
    async def NestedFault(self, request, context):
        domid = self._self(context, request.domid, "NestedFault")
        mfn = self.hv.paging.nested_fault(domid, request.gpa, request.write)
        return paging_pb2.NestedFaultReply(outcome="fixed", mfn=mfn,
                                           flush_tlb=self.hv.paging.take_tlb_flush(domid))

    @handles_xen_errors
    async def Stats(self, request, context):
        domid = self._readable(context, request, "read the paging counters of")
        return paging_pb2.PagingStats(**self.hv.paging.stats(domid))
