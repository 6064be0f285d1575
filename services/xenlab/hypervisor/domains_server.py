"""gRPC adapter for the Domains service: the toolstack's calls (create,
destroy, shutdown, vcpu-set, the network-* commands) go to the toolstack;
the domctls it only reads or that need no toolstack (list, info, pause,
the domain's own SCHEDOP_shutdown) to the hypervisor."""
from __future__ import annotations

import asyncio

from xenlab import eventloop
from xenlab.proto import common_pb2, domains_pb2, domains_pb2_grpc
from xenlab.rpc import handles_xen_errors

CONSOLE_CHUNK = 16384
CONSOLE_POLL = 0.2      # seconds between looks at a console log nothing woke us for


class DomainsServicer(domains_pb2_grpc.DomainsServicer):
    def __init__(self, hv, toolstack):
        self.hv = hv
        self.toolstack = toolstack

    def _toolstack(self, context, what: str):
        caller = self.hv.identity.authenticate(context)
        caller.require_privileged(what)
        return caller

    def _info(self, dom) -> domains_pb2.DomainInfo:
        info = domains_pb2.DomainInfo(**self.hv.domain_info(dom))
        if dom.spec is not None:
            info.spec.CopyFrom(dom.spec)
        return info

    @handles_xen_errors
    async def Create(self, request, context):
        self._toolstack(context, "creating a domain")
        dom, secret = await self.toolstack.create(request.spec, paused=request.paused)
        return domains_pb2.CreateDomainResponse(info=self._info(dom), secret=secret,
                                                agent=dom.agent, agent_token=dom.agent_token)

    @handles_xen_errors
    async def Destroy(self, request, context):
        self._toolstack(context, "destroying a domain")
        dom = self.hv.domains.lookup(request.domid, request.name)
        await self.toolstack.destroy_domain(dom.domid)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Pause(self, request, context):
        self._toolstack(context, "pausing a domain")
        self.hv.pause(self.hv.domains.lookup(request.domid, request.name).domid)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Unpause(self, request, context):
        self._toolstack(context, "unpausing a domain")
        self.hv.unpause(self.hv.domains.lookup(request.domid, request.name).domid)
        return common_pb2.Empty()

    @handles_xen_errors
    async def Shutdown(self, request, context):
        self._toolstack(context, "shutting down a domain")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        await self.toolstack.shutdown_domain(dom.domid, request.reason or "poweroff",
                                             request.wait, request.timeout or 30.0)
        return common_pb2.Empty()

    @handles_xen_errors
    async def List(self, request, context):
        caller = self.hv.identity.authenticate(context)
        doms = [d for d in self.hv.domains if caller.privileged or d.domid == caller.domid]
        return domains_pb2.DomainList(domains=[self._info(d) for d in doms])

    @handles_xen_errors
    async def Info(self, request, context):
        caller = self.hv.identity.authenticate(context)
        dom = self.hv.domains.lookup_as(caller.domid, caller.privileged, "inspect",
                                        request.domid, request.name)
        return self._info(dom)

    @handles_xen_errors
    async def SetVcpus(self, request, context):
        self._toolstack(context, "vcpu-set")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        self.toolstack.set_vcpus(dom.domid, request.vcpus)
        return common_pb2.Empty()

    @handles_xen_errors
    async def GetHostInfo(self, request, context):
        # XEN_SYSCTL_physinfo, like every sysctl, is for the control domain:
        # the number of domains and the free memory are not a guest's to count.
        self._toolstack(context, "reading the host's information")
        return domains_pb2.HostInfo(**self.hv.host_info())

    @handles_xen_errors
    async def SchedShutdown(self, request, context):
        caller = self.hv.identity.authenticate(context)
        self.hv.sched_shutdown(caller.domid, request.reason)
        return common_pb2.Empty()

    @handles_xen_errors
    async def SchedWatchdog(self, request, context):
        caller = self.hv.identity.authenticate(context)
        return domains_pb2.SchedWatchdogReply(
            id=self.hv.sched_watchdog(caller.domid, request.id, request.timeout))

    @handles_xen_errors
    async def Console(self, request, context):
        self._toolstack(context, "reading a console")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        path = self.hv.console_log(dom)
        offset = 0
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(CONSOLE_CHUNK)
            except FileNotFoundError:
                data = b""
            if data:
                offset += len(data)
                yield domains_pb2.ConsoleChunk(data=data)
                continue
            if not request.follow or self.hv.domains.find(dom.domid) is not dom:
                return
            # Woken by xenconsoled as the console ring's output reaches the
            # log; what the process itself writes there is polled.
            console = self.hv.consoles.get(dom.domid)
            if console is None:
                await asyncio.sleep(CONSOLE_POLL)
            else:
                try:
                    await eventloop.wait_for(console.grew.wait(), CONSOLE_POLL)
                except asyncio.TimeoutError:
                    pass

    @handles_xen_errors
    async def NetworkAttach(self, request, context):
        self._toolstack(context, "network-attach")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        return domains_pb2.VifInfo(**self.toolstack.network_attach(dom.domid, request.vif))

    @handles_xen_errors
    async def NetworkDetach(self, request, context):
        self._toolstack(context, "network-detach")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        await self.toolstack.network_detach(dom.domid, request.device, request.force,
                                            request.timeout or 10.0)
        return common_pb2.Empty()

    @handles_xen_errors
    async def NetworkList(self, request, context):
        caller = self.hv.identity.authenticate(context)
        dom = self.hv.domains.lookup_as(caller.domid, caller.privileged, "list the vifs of",
                                        request.domid, request.name)
        vifs = self.toolstack.network_list(dom.domid)
        return domains_pb2.VifList(vifs=[domains_pb2.VifInfo(**v) for v in vifs])

    @handles_xen_errors
    async def BackendGone(self, request, context):
        self._toolstack(context, "resetting a backend domain")
        dom = self.hv.domains.lookup(request.domain.domid, request.domain.name)
        return domains_pb2.BackendGoneReply(
            **await self.toolstack.backend_gone(dom.domid, request.timeout or 2.0))
