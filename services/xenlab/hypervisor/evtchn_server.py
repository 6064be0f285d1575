"""gRPC adapter for the EventChannel service (EVTCHNOP_*, plus the vCPU
singleshot timer and the doorbell's control-plane half)."""
from __future__ import annotations

import asyncio
import errno
import math

from xenlab.proto import common_pb2, evtchn_pb2, evtchn_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen import abi
from xenlab.xen.errors import EvtchnError

MAX_TIMEOUT = 3600.0   # seconds; a longer singleshot timer is a guest bug


class EventChannelServicer(evtchn_pb2_grpc.EventChannelServicer):
    def __init__(self, hv):
        self.hv = hv
        # (domid, vcpu) -> (the Domain it was armed for, its TimerHandle)
        self._timers: dict[tuple[int, int], tuple[object, asyncio.TimerHandle]] = {}

    def _caller(self, context):
        return self.hv.identity.authenticate(context)

    @staticmethod
    def _port(port: int) -> evtchn_pb2.Port:
        return evtchn_pb2.Port(port=port)

    @handles_xen_errors
    async def AllocUnbound(self, request, context):
        caller = self._caller(context)
        return self._port(self.hv.evtchn.alloc_unbound(caller, request.dom, request.remote_dom))

    @handles_xen_errors
    async def BindInterdomain(self, request, context):
        caller = self._caller(context)
        return self._port(self.hv.evtchn.bind_interdomain(caller, request.remote_dom,
                                                          request.remote_port))

    @handles_xen_errors
    async def BindVirq(self, request, context):
        caller = self._caller(context)
        return self._port(self.hv.evtchn.bind_virq(caller, request.virq, request.vcpu))

    @handles_xen_errors
    async def BindIpi(self, request, context):
        caller = self._caller(context)
        return self._port(self.hv.evtchn.bind_ipi(caller, request.vcpu))

    @handles_xen_errors
    async def BindPirq(self, request, context):
        caller = self._caller(context)
        return self._port(self.hv.evtchn.bind_pirq(caller, request.pirq))

    @handles_xen_errors
    async def Send(self, request, context):
        caller = self._caller(context)
        self.hv.evtchn.send(caller.domid, request.port)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Close(self, request, context):
        caller = self._caller(context)
        self.hv.evtchn.close(caller.domid, request.port)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Status(self, request, context):
        caller = self._caller(context)
        st = self.hv.evtchn.status(caller, request.dom, request.port)
        return evtchn_pb2.ChannelStatus(
            state=int(st["state"]), vcpu=st["vcpu"], remote_dom=st["remote_dom"],
            remote_port=st["remote_port"], pirq=st["pirq"], virq=st["virq"],
            pending=st["pending"], masked=st["masked"])

    @handles_xen_errors
    async def Unmask(self, request, context):
        caller = self._caller(context)
        self.hv.evtchn.unmask(caller.domid, request.port)
        return common_pb2.Empty()

    @handles_xen_errors
    async def BindVcpu(self, request, context):
        caller = self._caller(context)
        self.hv.evtchn.bind_vcpu(caller.domid, request.port, request.vcpu)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Reset(self, request, context):
        caller = self._caller(context)
        self.hv.evtchn.reset(caller, request.dom)
        return common_pb2.Empty()

    # -- VCPUOP_set_singleshot_timer / VCPUOP_stop_singleshot_timer ----------
    @handles_xen_errors
    async def SetTimer(self, request, context):
        caller = self._caller(context)
        domid, vcpu, timeout = caller.domid, request.vcpu, request.timeout
        nr_vcpus = self.hv.evtchn.nr_vcpus(domid)
        if vcpu >= nr_vcpus:
            raise EvtchnError(errno.EINVAL, f"vcpu {vcpu} outside 0..{nr_vcpus - 1}")
        if not (math.isfinite(timeout) and 0 <= timeout <= MAX_TIMEOUT):
            raise EvtchnError(errno.EINVAL, f"timeout {timeout} outside 0..{MAX_TIMEOUT:g} seconds")
        self._cancel_timer(domid, vcpu)
        if timeout > 0:
            dom = self.hv.domains.find(domid)
            handle = asyncio.get_running_loop().call_later(timeout, self._fire, dom, domid, vcpu)
            self._timers[(domid, vcpu)] = (dom, handle)
        return common_pb2.Empty()

    def _cancel_timer(self, domid: int, vcpu: int) -> None:
        armed = self._timers.pop((domid, vcpu), None)
        if armed is not None:
            armed[1].cancel()

    def _fire(self, dom, domid: int, vcpu: int) -> None:
        self._timers.pop((domid, vcpu), None)
        # A timer outliving its domain must not tick a new domain that
        # reused the id.
        if self.hv.domains.find(domid) is dom:
            self.hv.evtchn.raise_virq(domid, abi.VIRQ_TIMER, vcpu)

    def cancel_timers(self, domid: int) -> None:
        """Drop a destroyed domain's timers (optional: they are harmless)."""
        for key in [k for k in self._timers if k[0] == domid]:
            self._cancel_timer(*key)

    # -- the doorbell's control-plane half ------------------------------------
    @handles_xen_errors
    async def GetDoorbell(self, request, context):
        caller = self._caller(context)
        router = self.hv.doorbell
        return evtchn_pb2.DoorbellInfo(
            path=(router.path or "") if router is not None else "",
            shared_info_shm=self.hv.memory.segment_path(caller.domid),
            shared_info_offset=0,     # shared_info is page 0 of the domain's segment
            max_ports=self.hv.evtchn.max_ports(caller.domid))

    @handles_xen_errors
    async def Upcalls(self, request, context):
        caller = self._caller(context)
        nr_vcpus = self.hv.evtchn.nr_vcpus(caller.domid)   # ESRCH for a domain being torn down
        router = self.hv.doorbell
        queue = router.subscribe(caller.domid)
        try:
            # One upcall per vCPU once subscribed: an edge raised before the
            # subscription left evtchn_upcall_pending set, and no further
            # kick would come until the guest scans.
            for vcpu in range(nr_vcpus):
                yield evtchn_pb2.Upcall(vcpu=vcpu)
            while True:
                vcpu = await queue.get()
                if vcpu is None:
                    return
                yield evtchn_pb2.Upcall(vcpu=vcpu)
        finally:
            router.unsubscribe(caller.domid, queue)
