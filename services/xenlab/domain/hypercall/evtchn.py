"""EVTCHNOP_* (and the single-shot timer) as a domain's kernel makes them,
typed: ports in, ports out, an EvtchnError (errno) when refused.

These are the control-plane calls. Notifications and upcalls take the
doorbell when there is one; xenlab.domain.evtchn decides, and falls back to
``send`` and ``upcalls`` here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from xenlab.proto import common_pb2, evtchn_pb2
from xenlab.rpc import call, xen_error
from xenlab.xen.abi import EvtchnState
from xenlab.xen.errors import EvtchnError

_STATES = {
    evtchn_pb2.ChannelStatus.CLOSED: EvtchnState.closed,
    evtchn_pb2.ChannelStatus.UNBOUND: EvtchnState.unbound,
    evtchn_pb2.ChannelStatus.INTERDOMAIN: EvtchnState.interdomain,
    evtchn_pb2.ChannelStatus.PIRQ: EvtchnState.pirq,
    evtchn_pb2.ChannelStatus.VIRQ: EvtchnState.virq,
    evtchn_pb2.ChannelStatus.IPI: EvtchnState.ipi,
}


@dataclass(frozen=True)
class ChannelStatus:
    """EVTCHNOP_status of one port."""

    state: EvtchnState
    vcpu: int
    remote_dom: int          # unbound: the peer allowed to bind; interdomain: the peer
    remote_port: int
    virq: int
    pending: bool
    masked: bool


@dataclass(frozen=True)
class DoorbellInfo:
    """Where the hypervisor's doorbell is (empty: none)."""

    path: str
    max_ports: int


class EventChannelOps:
    def __init__(self, stub, domid: int):
        self._stub = stub
        self.domid = domid

    async def alloc_unbound(self, remote_dom: int, dom: int | None = None) -> int:
        """A port of ``dom`` (ourselves by default) that only ``remote_dom`` may bind."""
        reply = await call(self._stub.AllocUnbound(evtchn_pb2.AllocUnboundRequest(
            dom=self.domid if dom is None else dom, remote_dom=remote_dom)), EvtchnError)
        return reply.port

    async def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        reply = await call(self._stub.BindInterdomain(evtchn_pb2.BindInterdomainRequest(
            remote_dom=remote_dom, remote_port=remote_port)), EvtchnError)
        return reply.port

    async def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        reply = await call(self._stub.BindVirq(evtchn_pb2.BindVirqRequest(virq=virq, vcpu=vcpu)),
                           EvtchnError)
        return reply.port

    async def bind_ipi(self, vcpu: int = 0) -> int:
        reply = await call(self._stub.BindIpi(evtchn_pb2.BindIpiRequest(vcpu=vcpu)), EvtchnError)
        return reply.port

    async def close(self, port: int) -> None:
        await call(self._stub.Close(evtchn_pb2.Port(port=port)), EvtchnError)

    async def send(self, port: int) -> None:
        await call(self._stub.Send(evtchn_pb2.Port(port=port)), EvtchnError)

    async def unmask(self, port: int) -> None:
        """The hypervisor re-raises the port if it is pending."""
        await call(self._stub.Unmask(evtchn_pb2.Port(port=port)), EvtchnError)

    async def status(self, port: int, dom: int | None = None) -> ChannelStatus:
        st = await call(self._stub.Status(evtchn_pb2.StatusRequest(
            dom=self.domid if dom is None else dom, port=port)), EvtchnError)
        return ChannelStatus(_STATES[st.state], st.vcpu, st.remote_dom, st.remote_port, st.virq,
                             st.pending, st.masked)

    async def set_timer(self, vcpu: int, timeout: float) -> None:
        """VCPUOP_set_singleshot_timer: VIRQ_TIMER on ``vcpu`` in ``timeout``
        seconds (0 cancels)."""
        await call(self._stub.SetTimer(evtchn_pb2.SetTimerRequest(vcpu=vcpu, timeout=timeout)),
                   EvtchnError)

    async def doorbell(self) -> DoorbellInfo:
        info = await call(self._stub.GetDoorbell(common_pb2.Empty()), EvtchnError)
        return DoorbellInfo(info.path, info.max_ports)

    async def upcalls(self) -> AsyncIterator[int]:
        """The upcalls the hypervisor raises for us, as vCPU numbers, for as
        long as the stream lasts (without a doorbell). A failure raises
        EvtchnError (ECANCELED: the call was cancelled)."""
        stream = self._stub.Upcalls(common_pb2.Empty())
        try:
            async for upcall in stream:
                yield upcall.vcpu
        except grpc.aio.AioRpcError as err:
            raise xen_error(err, EvtchnError) from None
        finally:
            stream.cancel()
