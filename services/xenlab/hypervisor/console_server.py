"""gRPC adapter for the Console service (keystrokes for xenconsoled to put
on a domain's console ring) and the Triggers service
(XEN_DOMCTL_sendtrigger). Both are Domain-0's: the toolstack's."""
from __future__ import annotations

from xenlab.hypervisor.triggers import check_trigger
from xenlab.proto import common_pb2, console_pb2, console_pb2_grpc
from xenlab.rpc import handles_xen_errors
from xenlab.xen import abi


class ConsoleServicer(console_pb2_grpc.ConsoleServicer):
    def __init__(self, hv):
        self.hv = hv

    @handles_xen_errors
    async def Write(self, request, context):
        caller = self.hv.identity.authenticate(context)
        caller.require_privileged("writing to a domain's console")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        return console_pb2.ConsoleWriteReply(accepted=self.hv.consoles.write(dom.domid,
                                                                             request.data))


class TriggersServicer(console_pb2_grpc.TriggersServicer):
    def __init__(self, hv):
        self.hv = hv

    @handles_xen_errors
    async def Send(self, request, context):
        caller = self.hv.identity.authenticate(context)
        caller.require_privileged("sending a trigger to a domain")
        dom = self.hv.running_domu(
            self.hv.domains.lookup(request.domain.domid, request.domain.name).domid, "trigger")
        check_trigger(request.trigger, request.vcpu, dom.vcpus)
        # nmi: nmi_pending set and the vCPU kicked; a guest that has not
        # bound VIRQ_NMI loses it, as an unbound VIRQ is lost.
        self.hv.evtchn.raise_virq(dom.domid, abi.VIRQ_NMI, request.vcpu)
        return common_pb2.Empty()
