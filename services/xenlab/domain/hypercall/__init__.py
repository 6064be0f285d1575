"""The typed hypercall layer of a domain's kernel.

Everything a domain asks of the hypervisor goes through here, by family:
``gnttab`` (GNTTABOP_*: grant, end, map to a Page, unmap, copy), ``evtchn``
(EVTCHNOP_*), ``memory`` (XENMEM_*, mmu_update, mmuext_op), ``paging``
(the paging exits of shadow and HAP mode), ``xenstore`` (xenstore requests, when
there is no store ring) and ``domains`` (SCHEDOP_shutdown, and the
toolstack's calls a privileged domain makes). Each call takes and returns
plain values and fails with a XenError (errno; a GrantError carries its
GNTST_* status), never a transport error: this package is the one place in
a domain that knows the hypervisor is reached over gRPC (xenlab.rpc maps the
errors), so that drivers, the kernel's own services (event channels, xenbus,
the balloon) and test peers work on these types alone.
"""
from __future__ import annotations

from xenlab.client import HypervisorClient
from xenlab.domain.hypercall.domctl import BackendGone, CreatedDomain, DomainOps, VifInfo
from xenlab.domain.hypercall.evtchn import ChannelStatus, DoorbellInfo, EventChannelOps
from xenlab.domain.hypercall.gnttab import GrantTable, Page, pass_on
from xenlab.domain.hypercall.memory import MemoryMap, MemoryOps, Reservation
from xenlab.domain.hypercall.paging import PagingInfo, PagingOps
from xenlab.domain.hypercall.xenstore import GrpcXenStore, XenStoreTransport

__all__ = ["BackendGone", "ChannelStatus", "CreatedDomain", "DomainOps", "DoorbellInfo",
           "EventChannelOps", "GrantTable", "GrpcXenStore", "Hypercalls", "MemoryMap",
           "MemoryOps", "Page", "PagingInfo", "PagingOps", "Reservation", "VifInfo",
           "XenStoreTransport", "pass_on"]


class Hypercalls:
    """One domain's hypercalls, made with its credentials."""

    def __init__(self, client: HypervisorClient, owned: bool = False):
        """``client``: a HypervisorClient acting as the domain; ``owned``:
        ``close`` closes its channel too."""
        self._client = client
        self._owned = owned
        self.domid = client.domid
        self.gnttab = GrantTable(client.grants, client.domid)
        self.evtchn = EventChannelOps(client.evtchn, client.domid)
        self.memory = MemoryOps(client.memory, client.domid)
        self.paging = PagingOps(client.paging, client.domid)
        self.xenstore = GrpcXenStore(client.xenstore)
        self.domains = DomainOps(client.domains, client.domid, client.save)

    @classmethod
    def connect(cls, address: str, domid: int, secret: str,
                idle_close: float | None = None) -> "Hypercalls":
        """``idle_close``: HypervisorClient.connect's."""
        return cls(HypervisorClient.connect(address, domid, secret, idle_close=idle_close),
                   owned=True)

    async def close(self) -> None:
        await self.gnttab.close()
        if self._owned:
            await self._client.close()
