"""A domain's own half of its grant table, for tests that act as a domain
over gRPC against an in-process hypervisor: the table set up with
GrantTable.SetupTable as the domain, and its entries written with
xen/grant_table.py into its frame, through the hypervisor's mapping of the
same memory (a domain's kernel writes them through its own)."""
from __future__ import annotations

from xenlab.proto import grants_pb2
from xenlab.xen.grant_table import GrantFrames, GrantRefs


class GuestGrantTable:
    def __init__(self, frames: GrantFrames):
        self.frames = frames
        self.refs = GrantRefs(frames.nr_entries)

    @classmethod
    async def setup(cls, hv, client, frames: int = 1) -> "GuestGrantTable":
        """``client`` acts as the domain; its grant frames are its
        ``frames`` highest populated frames."""
        domid = client.domid
        gfns = sorted(hv.memory.populated(domid))[-frames:][::-1]
        await client.grants.SetupTable(grants_pb2.SetupTableRequest(gfns=gfns))
        return cls(GrantFrames(hv.memory.frame(domid, gfn) for gfn in gfns))

    def grant(self, peer: int, gfn: int, readonly: bool = False) -> int:
        [ref] = self.refs.alloc(1)
        self.frames.grant(ref, peer, gfn, readonly)
        return ref

    def end(self, ref: int) -> bool:
        """False while the entry is mapped (it stays granted)."""
        if self.frames.end_access(ref):
            self.refs.release([ref])
            return True
        return False

    def release(self) -> None:
        self.frames.release()
