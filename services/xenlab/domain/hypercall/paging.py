"""The paging exits and queries a domain's kernel makes, typed (the Paging
service): shadow mode's page-fault and CR3 exits, HAP's EPT violation, and
the domain's own paging info and counters. A refusal is a MemoryError_."""
from __future__ import annotations

from dataclasses import dataclass

from xenlab.proto import common_pb2, paging_pb2
from xenlab.rpc import call
from xenlab.xen.abi import PAGE_SHIFT
from xenlab.xen.errors import MemoryError_


@dataclass(frozen=True)
class PagingInfo:
    mode: str
    pool_mfns: tuple[int, ...]       # page i of the pool object handed over is pool_mfns[i]
    eptp: int                        # hap: the nested P2M's root mfn
    pool_used: int


class PagingOps:
    def __init__(self, stub, domid: int):
        self._stub = stub
        self.domid = domid

    async def info(self) -> PagingInfo:
        got = await call(self._stub.GetPagingInfo(common_pb2.DomainRef(domid=self.domid)),
                         MemoryError_)
        return PagingInfo(got.mode, tuple(got.pool_mfns), got.eptp, got.pool_used)

    async def page_fault(self, va: int, code: int, value: bytes | None) -> tuple[str, bool]:
        """Shadow mode's #PF exit: ("inject", "fixed" or "emulated", whether
        the guest must flush its TLB before it retries)."""
        request = paging_pb2.PageFaultRequest(domid=self.domid, va=va, code=code)
        if value is not None:
            request.value = value
        got = await call(self._stub.PageFault(request), MemoryError_)
        return got.outcome, got.flush_tlb

    async def set_cr3(self, gfn: int) -> int:
        """Shadow mode's mov-to-CR3 exit: the mfn of the shadow L4."""
        got = await call(self._stub.SetCr3(paging_pb2.SetCr3Request(domid=self.domid, gfn=gfn)),
                         MemoryError_)
        return got.shadow_root

    async def pagetable_dying(self, gfn: int) -> None:
        """HVMOP_pagetable_dying: the address space whose L4 is ``gfn`` is
        being torn down (shadow mode): its shadows may go at once."""
        await call(self._stub.PagetableDying(paging_pb2.PagetableDyingRequest(
            domid=self.domid, gpa=gfn << PAGE_SHIFT)), MemoryError_)

    async def nested_fault(self, gpa: int, write: bool) -> tuple[int, bool]:
        """HAP's EPT violation: (the mfn the gpa maps to once fixed, whether
        the guest must flush its TLB before it retries)."""
        got = await call(self._stub.NestedFault(paging_pb2.NestedFaultRequest(
            domid=self.domid, gpa=gpa, write=write)), MemoryError_)
        return got.mfn, got.flush_tlb

    async def stats(self) -> dict:
        """The hypervisor's counters of this domain's paging."""
        got = await call(self._stub.Stats(common_pb2.DomainRef(domid=self.domid)), MemoryError_)
        out = {f"calls.{k}": v for k, v in got.hypercalls.items()}
        out.update({f"core.{k}": v for k, v in got.counters.items()})
        out.update(traps=got.traps, validations=got.validations, pool_used=got.pool_used,
                   pool_pages=got.pool_pages)
        return out
