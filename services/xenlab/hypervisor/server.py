"""The hypervisor's gRPC server: every hypercall family as its own service.

The toolstack (libxl's role: xenlab.toolstack) sits above the hypervisor
and drives it; the process that runs both (``python -m xenlab.hypervisor``,
or a test) hands the server the toolstack to serve the Domains API with,
so that nothing in this package imports the layer above it."""
from __future__ import annotations

import logging
from typing import Callable

from xenlab.events import server as events_server
from xenlab.events.stream import EventHub
from xenlab.osutil import wait_for_stop_signal
from xenlab.hypervisor.admission import MAX_REQUEST, Admission
from xenlab.hypervisor.config import HypervisorConfig
from xenlab.hypervisor.core import Hypervisor
from xenlab.hypervisor.console_server import ConsoleServicer, TriggersServicer
from xenlab.hypervisor.domains_server import DomainsServicer
from xenlab.hypervisor.evtchn_server import EventChannelServicer
from xenlab.hypervisor.grants_server import GrantTableServicer
from xenlab.launchers.base import Launcher
from xenlab.hypervisor.memory_server import MemoryServicer
from xenlab.hypervisor.paging_server import PagingServicer
from xenlab.hypervisor.sched_server import SchedServicer
from xenlab.hypervisor.xenstore_server import XenStoreServicer
from xenlab.hypervisor.save_server import SaveRestoreServicer
from xenlab.proto import (console_pb2, console_pb2_grpc, domains_pb2, domains_pb2_grpc, evtchn_pb2, evtchn_pb2_grpc,
                          grants_pb2, grants_pb2_grpc, memory_pb2, memory_pb2_grpc,
                          paging_pb2, paging_pb2_grpc, save_pb2, save_pb2_grpc, sched_pb2, sched_pb2_grpc, xenstore_pb2,
                          xenstore_pb2_grpc)
from xenlab.rpc import MAX_MESSAGE, start_server

log = logging.getLogger(__name__)

# grpc-core refuses a request bigger than any method takes as it arrives.
# Its queue of calls not yet picked up (grpc.server.max_pending_requests,
# 1000 by default, and a hard limit of 3000) would cancel other domains'
# calls during one domain's burst; admission refuses the burst instead, a
# call at a time, so the queue is made deep enough to hold it. What a call
# waiting there may have sent of its body is what its stream's window lets
# through: 8 KiB, never grown (no BDP probing), so that 5,000 waiting calls
# with 60 KB bodies cost the hypervisor about 80 MiB, not 270.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.server.max_pending_requests", 20000),
    ("grpc.server.max_pending_requests_hard_limit", 30000),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 * 1024),
]

SERVICE_NAMES = [
    domains_pb2.DESCRIPTOR.services_by_name["Domains"].full_name,
    memory_pb2.DESCRIPTOR.services_by_name["Memory"].full_name,
    paging_pb2.DESCRIPTOR.services_by_name["Paging"].full_name,
    grants_pb2.DESCRIPTOR.services_by_name["GrantTable"].full_name,
    evtchn_pb2.DESCRIPTOR.services_by_name["EventChannel"].full_name,
    xenstore_pb2.DESCRIPTOR.services_by_name["XenStore"].full_name,
    console_pb2.DESCRIPTOR.services_by_name["Console"].full_name,
    console_pb2.DESCRIPTOR.services_by_name["Triggers"].full_name,
    sched_pb2.DESCRIPTOR.services_by_name["Sched"].full_name,
    save_pb2.DESCRIPTOR.services_by_name["SaveRestore"].full_name,
]


class HypervisorServer:
    """A Hypervisor behind a gRPC server. `async with` starts and stops it."""

    def __init__(self, config: HypervisorConfig, toolstack: Callable[[Hypervisor], object],
                 launcher: Launcher | None = None, events: EventHub | None = None):
        """``toolstack``: makes the toolstack of this hypervisor, e.g.
        xenlab.toolstack.Toolstack."""
        self.config = config
        self.events = events            # served as the Events stream (xenlab.events)
        self.hv = Hypervisor(config, launcher)
        self.toolstack = toolstack(self.hv)
        self.server = None
        self.address = ""
        self.admission = Admission(self.hv.identity.check, config.call_limits, self.hv.ops)

    async def start(self) -> str:
        await self.hv.start()
        self.toolstack.start()
        hv, toolstack = self.hv, self.toolstack
        register = [
            lambda s: domains_pb2_grpc.add_DomainsServicer_to_server(DomainsServicer(hv, toolstack), s),
            lambda s: memory_pb2_grpc.add_MemoryServicer_to_server(MemoryServicer(hv, toolstack), s),
            lambda s: paging_pb2_grpc.add_PagingServicer_to_server(PagingServicer(hv), s),
            lambda s: grants_pb2_grpc.add_GrantTableServicer_to_server(GrantTableServicer(hv), s),
            lambda s: evtchn_pb2_grpc.add_EventChannelServicer_to_server(EventChannelServicer(hv), s),
            lambda s: xenstore_pb2_grpc.add_XenStoreServicer_to_server(
                XenStoreServicer(hv, hv.xs_connections), s),
            lambda s: console_pb2_grpc.add_ConsoleServicer_to_server(ConsoleServicer(hv), s),
            lambda s: console_pb2_grpc.add_TriggersServicer_to_server(TriggersServicer(hv), s),
            lambda s: sched_pb2_grpc.add_SchedServicer_to_server(SchedServicer(hv, toolstack), s),
            lambda s: save_pb2_grpc.add_SaveRestoreServicer_to_server(
                SaveRestoreServicer(hv, toolstack.saver), s),
        ]
        names = list(SERVICE_NAMES)
        if self.events is not None:
            register.append(events_server.register(self.events, self._may_watch))
            names.append(events_server.SERVICE_NAME)
        # With domain uids, domUs reach the hypervisor on a socket of their
        # own: they cannot enter the rundir.
        domains = hv.domains_dir.hypervisor_address
        try:
            self.server, port = await start_server(self.config.address, register, names,
                                                   interceptors=[self.admission],
                                                   also=[*self.config.also_listen,
                                                         *([domains] if domains else [])],
                                                   options=SERVER_OPTIONS)
            hv.domains_dir.open_to_domains()
        except Exception:
            await self.toolstack.close()
            await self.hv.close()
            raise
        self.address = self.config.address
        if not self.address.startswith("unix:") and self.address.endswith(":0"):
            self.address = f"{self.address.rsplit(':', 1)[0]}:{port}"
        hv.address = self.address
        hv.publish(self.address)
        log.info("hypervisor listening on %s (rundir %s)", self.address, hv.rundir.path)
        return self.address

    def _may_watch(self, context) -> None:
        # Every domain's lifecycle and vifs: the toolstack's view, Domain-0's.
        self.hv.identity.authenticate(context).require_privileged("the event stream")

    async def stop(self, grace: float = 2.0) -> None:
        if self.admission.in_flight.refused:
            log.info("calls refused for too many in flight: %s", dict(self.admission.in_flight.refused))
        log.info("most calls in flight: %s", dict(self.admission.in_flight.peak))
        await self.toolstack.close()
        await self.hv.close()
        if self.server is not None:
            await self.server.stop(grace)

    async def __aenter__(self) -> "HypervisorServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def serve(config: HypervisorConfig, toolstack: Callable[[Hypervisor], object], ready=None,
                events: EventHub | None = None) -> None:
    """Run until SIGINT/SIGTERM, then destroy every domain and stop."""
    server = HypervisorServer(config, toolstack, events=events)
    await server.start()
    server.hv.launcher.warm_up()
    if ready is not None:
        ready(server)
    try:
        await wait_for_stop_signal()
    finally:
        log.info("shutting down: destroying %d domain(s)", len(server.hv.domains) - 1)
        await server.stop()
