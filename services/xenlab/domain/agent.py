"""The guest agent: a gRPC server inside every domain (xenlab.proto.GuestAgent).

Clients reach a domain's network through it: ping and UDP from the guest's
own IP stack, frames injected as if the guest sent them, captures of either
direction, and interface counters. It listens where its launcher decided
(a unix socket in the domain's own directory, or a published TCP port) and
says it is up at /local/domain/<domid>/data/agent.

Only the toolstack may call it: every GuestAgent call must carry the token
the hypervisor gave the domain at creation (``xenlab-agent-token``
metadata), which the toolstack keeps in its own record beside the address
(/libxl/<domid>/agent, readable by Domain-0 alone). Another guest, or any
other local user, is refused before its request is read, whatever the
socket's mode or the port's reachability. Anyone holding the token can do
what the guest's own root could do to its interfaces, and no more: no
hypercall, no other domain.

In dom0 the interfaces are netback's vifs, and there is no IP stack unless
dom0 has an addressed netfront of its own.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
from pathlib import Path

import grpc

from xenlab import eventloop
from xenlab.agent_client import AGENT_TOKEN_MD
from xenlab.domain import paging_workloads, traffic
from xenlab.domain.agent_activation import (AGENT_IDLE, UNIX_PATH_MAX, CallCount, OnDemandServer,
                                            fits_beside)
from xenlab.domain.netstack import PERF_SERVE_TIMEOUT, GoneDevice, GuestNetwork
from xenlab.net import perf, tc_server
from xenlab.net.device import NetDevice
from xenlab.net.ethernet import ETH_ALEN, format_mac, parse_mac
from xenlab.net.ipv4 import DEFAULT_TTL
from xenlab.proto import agent_pb2, agent_pb2_grpc
from xenlab.xen.xenstore_paths import agent_record_path
from xenlab.rpc import CHANNEL_OPTIONS, TokenGate, handles_xen_errors, start_server
from xenlab.rundir import Rundir
from xenlab.xen.errors import ConfigError, XenError

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["GuestAgent"].full_name
XENSTORE_KEY = "data/agent"              # relative to /local/domain/<domid>; the guest may write data/
CAPTURE_DROPPED_MD = "xenlab-capture-dropped"   # trailing metadata of a Capture stream
INJECT_BATCH = 64                        # frames handed to the device in one transmit()

# PingRequest / SendUdpRequest fields whose 0 means "the default" (agent.proto).
PING_DEFAULTS = {"count": 4, "size": 56, "interval": 1.0, "timeout": 2.0}
UDP_TIMEOUT = 2.0


def agent_address(start_info) -> str:
    """The launcher's choice if it made one (a socket in the domain's own
    directory; the docker launcher: a published TCP port); else, for
    Domain-0's kernel, unix:<rundir>/agent-d0.sock, the rundir being where
    the doorbell is; loopback TCP on an ephemeral port when there is neither."""
    if getattr(start_info, "agent", ""):
        return start_info.agent
    if start_info.doorbell:
        return f"unix:{Rundir(Path(start_info.doorbell).parent).agent_socket(start_info.domid)}"
    return "127.0.0.1:0"


SPIN_DEFAULT = 10.0      # seconds
SPIN_MAX = 3600.0


class GuestAgentServicer(agent_pb2_grpc.GuestAgentServicer):
    def __init__(self, net: GuestNetwork, domid: int, vcpus=None, paging=None):
        self.net = net
        self.domid = domid
        self.vcpus = vcpus          # the kernel's Vcpus (xenlab.domain.vcpus), for Spin
        self.paging = paging        # the kernel's KernelPaging (xenlab.domain.paging)

    def _need_stack(self) -> None:
        if self.domid == 0 and not self.net.has_stack():
            raise XenError(errno.EADDRNOTAVAIL, "dom0 has no IP stack")

    @handles_xen_errors
    async def Ping(self, request, context):
        self._need_stack()
        result = await self.net.ping(
            request.dst,
            count=request.count or PING_DEFAULTS["count"],
            size=request.size or PING_DEFAULTS["size"],
            interval=request.interval or PING_DEFAULTS["interval"],
            timeout=request.timeout or PING_DEFAULTS["timeout"],
            interface=request.interface, ttl=request.ttl or DEFAULT_TTL)
        return agent_pb2.PingReply(transmitted=result.transmitted, received=result.received,
                                   rtt=[rtt for _, rtt in result.rtts],
                                   seq=[seq for seq, _ in result.rtts], error=result.error,
                                   src=result.src, unreachable=result.unreachable,
                                   errors=[agent_pb2.PingError(seq=e.seq, src=e.src, type=e.type,
                                                               code=e.code)
                                           for e in result.errors])

    @handles_xen_errors
    async def SendUdp(self, request, context):
        self._need_stack()
        result = await self.net.send_udp(
            request.dst, request.dport, request.payload, sport=request.sport,
            wait_reply=request.wait_reply, timeout=request.timeout or UDP_TIMEOUT,
            interface=request.interface)
        return agent_pb2.SendUdpReply(replied=result.replied, reply=result.reply, src=result.src,
                                      sport=result.reply_sport, rtt=result.rtt)

    @handles_xen_errors
    async def InjectFrames(self, request_iterator, context):
        accepted = dropped = 0
        drops: dict[str, int] = {}
        interface = None
        async for batch in _batches(request_iterator, INJECT_BATCH):
            if interface is None:
                # Only the first message names the interface (agent.proto).
                interface = self.net.device(batch[0].interface).name
            result = self.net.inject([frame.data for frame in batch], interface)
            accepted += result.accepted
            dropped += result.dropped
            for reason, n in result.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        return agent_pb2.InjectSummary(accepted=accepted, dropped=dropped, drops=drops)

    @handles_xen_errors
    async def Capture(self, request, context):
        with self.net.capture(request.interface, request.direction) as capture:
            try:
                # Headers now: the tap is in place, so a client may start traffic.
                await context.send_initial_metadata(())
                sent = 0
                async for frame in capture:
                    yield agent_pb2.CapturedFrame(data=frame.data, timestamp=frame.timestamp,
                                                  direction=frame.direction,
                                                  interface=frame.interface)
                    sent += 1
                    if request.count and sent >= request.count:
                        break
            finally:
                if capture.dropped:
                    log.info("capture on %s: %d frames dropped (slow reader)",
                             capture.interface, capture.dropped)
                context.set_trailing_metadata(((CAPTURE_DROPPED_MD, str(capture.dropped)),))

    @handles_xen_errors
    async def Blast(self, request, context):
        device = self.net.device(request.interface)
        try:
            dst = parse_mac(request.dst_mac, key="dst_mac")
        except ConfigError as err:
            raise XenError(errno.EINVAL, err.message) from None
        result = await traffic.blast(
            device, dst, request.count, size=request.size or traffic.DEFAULT_SIZE,
            ethertype=request.ethertype or traffic.BENCH_ETHERTYPE,
            batch=request.batch or traffic.DEFAULT_BATCH,
            timeout=request.timeout or traffic.DEFAULT_TIMEOUT, random_src=request.random_src)
        return agent_pb2.BlastReply(sent=result.sent, dropped=result.dropped, drops=result.drops,
                                    started=result.started, finished=result.finished)

    @handles_xen_errors
    async def Sink(self, request, context):
        device = self.net.device(request.interface)
        with traffic.Sink(device, request.ethertype or traffic.BENCH_ETHERTYPE,
                          request.count) as sink:
            yield agent_pb2.SinkReply(ready=True)
            await sink.wait(idle=request.idle or traffic.DEFAULT_IDLE,
                            timeout=request.timeout or traffic.DEFAULT_TIMEOUT)
        yield agent_pb2.SinkReply(received=sink.received, bytes=sink.bytes, first=sink.first,
                                  last=sink.last)

    @handles_xen_errors
    async def PerfSend(self, request, context):
        self._need_stack()
        async for report in self.net.perf_send(
                request.dst, dport=request.dport or perf.DEFAULT_PORT,
                rate=request.rate or perf.DEFAULT_RATE,
                length=request.length or perf.DEFAULT_LENGTH,
                duration=request.duration or perf.DEFAULT_DURATION,
                interval=request.interval or perf.DEFAULT_INTERVAL, interface=request.interface):
            yield _perf_interval(report)

    @handles_xen_errors
    async def PerfServe(self, request, context):
        self._need_stack()
        async for report in self.net.perf_serve(
                port=request.port or perf.DEFAULT_PORT,
                interval=request.interval or perf.DEFAULT_INTERVAL,
                timeout=request.timeout or PERF_SERVE_TIMEOUT, interface=request.interface):
            yield agent_pb2.PerfInterval(ready=True) if report is None else _perf_interval(report)

    @handles_xen_errors
    async def Spin(self, request, context):
        if self.vcpus is None:
            raise XenError(errno.EOPNOTSUPP, "this domain's kernel has no vCPU threads")
        seconds = request.seconds or SPIN_DEFAULT
        if not 0 < seconds <= SPIN_MAX:
            raise XenError(errno.EINVAL, f"seconds {seconds}: expected 0 < seconds <= {SPIN_MAX}")
        wanted = list(request.vcpus) or range(self.vcpus.count)
        bad = [n for n in wanted if n >= self.vcpus.count]
        if bad:
            raise XenError(errno.EINVAL, f"vCPU {bad[0]} does not exist: "
                                         f"the domain has {self.vcpus.count}")
        return agent_pb2.SpinReply(vcpus=self.vcpus.spin(wanted, seconds))

    @handles_xen_errors
    async def RunPagingWorkload(self, request, context):
        if self.paging is None:
            raise XenError(errno.EOPNOTSUPP, "this domain's kernel runs without an MMU")
        pages = request.pages or paging_workloads.DEFAULT_PAGES
        try:
            results = await self.paging.run_workloads(pages, request.remap, request.seed)
        except paging_workloads.WorkloadError as err:
            raise XenError(errno.EINVAL, str(err)) from None
        return agent_pb2.PagingWorkloadReply(mode=self.paging.mode.value, results=[
            agent_pb2.PagingWorkloadResult(
                name=r.name, ops=r.ops, digest=r.digest, seconds=r.seconds,
                faults=[agent_pb2.PagingFault(va=va, code=code) for va, code in r.faults],
                guest=r.guest, counters=r.counters, gauges=r.gauges) for r in results])

    @handles_xen_errors
    async def InterfaceStats(self, request, context):
        if request.interface:
            devices = [self.net.device(request.interface)]
        else:
            devices = self.net.interfaces()
        gone = [g for g in self.net.gone if not request.interface or g.name == request.interface] \
            if request.gone else []
        return agent_pb2.StatsReply(interfaces=[self._stats(device) for device in devices]
                                    + [self._gone_stats(device) for device in gone])

    @handles_xen_errors
    async def SetLink(self, request, context):
        device = self.net.device(request.interface)
        device.set_admin_up(request.up)
        # Returns once the other side has been told (the xenstore write).
        await device.link_settled()
        return self._stats(device)

    def _gone_stats(self, device: GoneDevice) -> agent_pb2.InterfaceStats:
        message = self._stats(device, stack=False)
        for reason, value in device.stack_drops.items():
            message.drops[f"stack_{reason}"] = value
        if device.unaddressed:
            message.drops["stack_no_address"] = device.unaddressed
        return message

    def _stats(self, device: NetDevice, stack: bool = True) -> agent_pb2.InterfaceStats:
        counters = device.stats()
        message = agent_pb2.InterfaceStats(
            name=device.name,
            tx_packets=counters.get("tx_packets", 0), tx_bytes=counters.get("tx_bytes", 0),
            rx_packets=counters.get("rx_packets", 0), rx_bytes=counters.get("rx_bytes", 0),
            mac=format_mac(device.mac) if len(device.mac) == ETH_ALEN else device.mac.hex(":"),
            ip=getattr(device, "ip", None) or "", mtu=device.mtu, state=str(device.state),
            peer=str(getattr(device, "peer", "") or ""),
            persistent_grants=getattr(device, "persistent_grants", 0),
            admin_up=device.admin_up, carrier=device.carrier, ifindex=device.ifindex,
            master=device.master)
        message.qdisc.update(device.qdisc_stats())
        for key, value in counters.items():
            if key.startswith("drop_"):
                message.drops[key[len("drop_"):]] = value
        if not stack:
            return message
        # Frames the device delivered but the guest's stack refused: counted
        # apart, so that each frame sits under one reason at each layer.
        stack = self.net.stack(device.name)
        if stack is not None:
            message.ip = str(stack.config.address)     # ip= on the kernel command line
            for reason, value in stack.drops().items():
                message.drops[f"stack_{reason}"] = value
            # What the router did with what this interface took in for other hosts.
            for outcome, value in self.net.router.by_interface.get(device.name, {}).items():
                if outcome != "forwarded" and value:
                    message.drops[f"forward_{outcome}"] = value
        unaddressed = self.net.unaddressed(device.name)
        if unaddressed:
            message.drops["stack_no_address"] = unaddressed
        return message


_END = object()


def _perf_interval(report: perf.Interval) -> agent_pb2.PerfInterval:
    return agent_pb2.PerfInterval(start=report.start, end=report.end, datagrams=report.datagrams,
                                  bytes=report.bytes, lost=max(0, report.lost),
                                  jitter=report.jitter, out_of_order=report.out_of_order,
                                  errors=report.errors, total=report.total,
                                  duplicates=report.duplicates)


async def _batches(requests, limit: int):
    """Messages of a client stream in groups: whatever arrived while the last
    group was being sent goes out together; a lone message never waits."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=limit)

    async def pump() -> None:
        try:
            async for message in requests:
                await queue.put(message)
        except Exception as err:             # the stream broke: the reader re-raises it
            await queue.put(err)
            return
        await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            batch, item = [], await queue.get()
            while item is not _END:
                if isinstance(item, Exception):
                    raise item
                batch.append(item)
                if len(batch) >= limit or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                yield batch
            if item is _END:
                return
    finally:
        task.cancel()


class GuestAgentServer:
    """The agent's gRPC server (with health and reflection) around a GuestNetwork."""

    def __init__(self, net: GuestNetwork, domid: int, address: str, token: str, vcpus=None,
                 paging=None, on_demand: float | None = None):
        """``on_demand``: serve a unix-socket address only while used,
        dormant after that many seconds without a call (agent_activation)."""
        self.net = net
        self.domid = domid
        self.vcpus = vcpus
        self.paging = paging
        self.address = address
        self.token = token
        self.on_demand = on_demand
        self.server: grpc.aio.Server | None = None
        self.activation: OnDemandServer | None = None
        # More services on the same server, behind the same token: (register, full name).
        self.services: list[tuple] = []

    async def start(self) -> str:
        """Listen; returns the address to publish (the bound port filled in)."""
        path = self._unix_path()
        if path is not None:
            if len(path) > UNIX_PATH_MAX:
                raise OSError(errno.ENAMETOOLONG,
                              f"agent socket path {path} is over {UNIX_PATH_MAX} bytes")
            _unlink(path)
            if self.on_demand is not None and fits_beside(path):
                self.activation = OnDemandServer(path, self._serve_at, idle=self.on_demand)
                await self.activation.start()
                return self.address
        self.server, port = await self._serve(self.address)
        # A unix socket is 0600 from the start (start_server).
        if path is None and self.address.endswith(":0"):
            self.address = f"{self.address.rsplit(':', 1)[0]}:{port}"
        return self.address

    async def _serve_at(self, address: str, counter: CallCount, options) -> grpc.aio.Server:
        server, _ = await self._serve(address, counter, options)
        return server

    async def _serve(self, address: str, counter: CallCount | None = None, options=()):
        servicer = GuestAgentServicer(self.net, self.domid, self.vcpus, self.paging)
        register = [lambda s: agent_pb2_grpc.add_GuestAgentServicer_to_server(servicer, s),
                    *(register for register, _ in self.services)]
        names = [SERVICE_NAME, *(name for _, name in self.services)]
        if self.domid == 0:
            # tc on Domain-0's vifs and veth ends: the driver domain's kernel owns them.
            register.append(tc_server.register(
                tc_server.TrafficControlServicer(
                    self.net.device, lambda: [(d.name, d) for d in self.net.interfaces()])))
            names.append(tc_server.SERVICE_NAME)
        interceptors = [TokenGate(AGENT_TOKEN_MD, self.token, names)]
        if counter is not None:
            interceptors.insert(0, counter)
        return await start_server(address, register, names, interceptors=interceptors,
                                  options=[*CHANNEL_OPTIONS, *options])

    def _unix_path(self) -> str | None:
        return self.address[len("unix:"):] if self.address.startswith("unix:") else None

    async def stop(self, grace: float = 1.0) -> None:
        if self.activation is not None:
            await self.activation.stop(grace)
            self.activation = None
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        path = self._unix_path()
        if path is not None:
            _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class KernelAgent:
    """What the domain kernel runs: its GuestNetwork and the agent serving it,
    published in xenstore."""

    def __init__(self, kernel, net: GuestNetwork, server: GuestAgentServer):
        self.kernel = kernel
        self.net = net
        self.server = server

    async def stop(self) -> None:
        try:
            await eventloop.wait_for(self.kernel.xenbus.rm(XENSTORE_KEY), 2.0)
        except Exception as err:    # best effort: xenstore may be gone; the domain's dir goes with it
            log.debug("could not withdraw %s: %s", XENSTORE_KEY, err)
        await self.server.stop()
        self.net.close()


async def start_guest_agent(kernel, services=()) -> KernelAgent | None:
    """Attach a GuestNetwork to the kernel's interfaces, serve the agent and
    publish its address. A domain whose agent cannot start still runs, as a
    guest without qemu-ga does; clients are then told it has no agent.
    ``services``: (register, full name) of more gRPC services to serve with
    it, behind its token (Domain-0's event stream)."""
    token = getattr(kernel.start_info, "agent_token", "")
    if not token and kernel.domid == 0:
        token = secrets.token_urlsafe(32)       # Domain-0's kernel records its own
    if not token:
        log.warning("d%d: no agent token in start_info: the guest agent will refuse every call",
                    kernel.domid)
    net = GuestNetwork(cmdline=getattr(kernel.start_info, "cmd_line", ""))
    net.attach(kernel)
    # A domU's agent runs only while used (agent_activation: an idle gRPC
    # server wakes its process several times a second); Domain-0's serves
    # its event stream for good.
    server = GuestAgentServer(net, kernel.domid, agent_address(kernel.start_info), token,
                              getattr(kernel, "vcpus", None), getattr(kernel, "paging", None),
                              on_demand=AGENT_IDLE if kernel.domid != 0 and not services else None)
    server.services = list(services)
    try:
        address = await server.start()
        if kernel.domid == 0:
            record = agent_record_path(0)
            await kernel.xenbus.write(f"{record}/address", address)
            await kernel.xenbus.write(f"{record}/token", token)
        await kernel.xenbus.write(XENSTORE_KEY, address)
    except (OSError, RuntimeError, XenError) as err:
        log.error("d%d: the guest agent did not start: %s", kernel.domid, err)
        await server.stop()
        net.close()
        return None
    log.info("d%d: guest agent on %s", kernel.domid, address)
    return KernelAgent(kernel, net, server)
