"""gRPC adapter for the GrantTable service (GNTTABOP_*).

There is no call to grant or end access: a domain writes its own grant
frames (xen/grant_table.py). Every domain maps its memory (the local and
the docker launchers both hand it the memory object), so no domain needs a
fallback through the hypervisor.
"""
from __future__ import annotations

from xenlab.hypervisor.grants import CopyOp, CopyPtr
from xenlab.proto import common_pb2, grants_pb2, grants_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen import abi
from xenlab.xen.errors import GrantError


def _copy_ptr(ptr: grants_pb2.CopyPtr) -> CopyPtr:
    return CopyPtr(domid=ptr.domid, ref=ptr.ref, gfn=ptr.gfn, use_gref=ptr.use_gref,
                   offset=ptr.offset)


def _mapping(m) -> grants_pb2.GrantMapping:
    return grants_pb2.GrantMapping(handle=m.handle, shm_path=m.shm_path, offset=m.offset,
                                   length=m.length, readonly=m.readonly, mfn=m.mfn)


class GrantTableServicer(grants_pb2_grpc.GrantTableServicer):
    def __init__(self, hv):
        self.hv = hv

    def _caller(self, context):
        return self.hv.identity.authenticate(context)

    @handles_xen_errors
    async def SetupTable(self, request, context):
        caller = self._caller(context)
        self.hv.grants.setup_table(caller.domid, list(request.gfns))
        return self._size(caller.domid)

    @handles_xen_errors
    async def QuerySize(self, request, context):
        return self._size(self._caller(context).domid)

    def _size(self, domid: int) -> grants_pb2.GrantTableSize:
        nr, limit = self.hv.grants.query_size(domid)
        return grants_pb2.GrantTableSize(nr_frames=nr, max_nr_frames=limit)

    @handles_xen_errors
    async def Map(self, request, context):
        caller = self._caller(context)
        return _mapping(self.hv.grants.map(caller, request.domid, request.ref, request.readonly,
                                           request.pte_addr or None))

    @handles_xen_errors
    async def MapBatch(self, request, context):
        caller = self._caller(context)
        results = self.hv.grants.map_batch(
            caller, [(op.domid, op.ref, op.readonly, op.pte_addr or None) for op in request.ops])
        return grants_pb2.MapGrantsReply(results=[
            grants_pb2.MapGrantResult(status=r.status, error=r.message)
            if isinstance(r, GrantError) else
            grants_pb2.MapGrantResult(status=abi.GNTST_okay, mapping=_mapping(r))
            for r in results])

    @handles_xen_errors
    async def UnmapBatch(self, request, context):
        caller = self._caller(context)
        return grants_pb2.UnmapGrantsReply(
            status=self.hv.grants.unmap_batch(caller, list(request.handles)))

    @handles_xen_errors
    async def Unmap(self, request, context):
        caller = self._caller(context)
        self.hv.grants.unmap(caller, request.handle)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Copy(self, request, context):
        caller = self._caller(context)
        ops = [CopyOp(_copy_ptr(op.source), _copy_ptr(op.dest), op.len) for op in request.ops]
        return grants_pb2.GrantCopyResult(status=self.hv.grants.copy(caller, ops))

    @handles_xen_errors
    async def Query(self, request, context):
        caller = self._caller(context)
        domid = caller.domid if request.domid == abi.DOMID_SELF and not request.name \
            else self.hv.domains.lookup_as(caller.domid, caller.privileged,
                                           "query the grant table of", request.domid,
                                           request.name).domid
        info = grants_pb2.GrantTableInfo(**self.hv.grants.query(domid))
        info.maptrack = self.hv.grants.maptrack_count(domid)
        return info
