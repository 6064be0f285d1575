"""A client for the hypervisor's gRPC services, acting as one domain.

    async with HypervisorClient.connect(address, domid, secret) as hv:
        await hv.domains.List(pb.Empty())

Every call carries the domain's credentials as metadata.
"""
from __future__ import annotations

import collections

import grpc

from xenlab.proto import (console_pb2_grpc, domains_pb2, domains_pb2_grpc, evtchn_pb2_grpc, grants_pb2_grpc,
                          memory_pb2_grpc, paging_pb2_grpc, save_pb2_grpc, sched_pb2_grpc, xenstore_pb2_grpc)
from xenlab.rpc import CHANNEL_OPTIONS, IdleClosingChannel, credentials_metadata
# Where a running hypervisor leaves its address and Domain-0's secret.
from xenlab.rundir import Rundir  # noqa: F401


class _ClientCallDetails(
        collections.namedtuple("_ClientCallDetails",
                               ("method", "timeout", "metadata", "credentials", "wait_for_ready")),
        grpc.aio.ClientCallDetails):
    pass


class _Credentials:
    def __init__(self, metadata):
        self._metadata = metadata

    def _details(self, details):
        metadata = list(details.metadata or ()) + list(self._metadata)
        return _ClientCallDetails(details.method, details.timeout, metadata,
                                  details.credentials, details.wait_for_ready)


class _UnaryUnary(_Credentials, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _UnaryStream(_Credentials, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamUnary(_Credentials, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_Credentials, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


def metadata_channel(address: str, metadata, options=CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """A channel whose every call carries ``metadata`` ((key, value) pairs)."""
    md = tuple(metadata)
    interceptors = [cls(md) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)


def credentialed_channel(address: str, domid: int, secret: str,
                         options=CHANNEL_OPTIONS) -> grpc.aio.Channel:
    return metadata_channel(address, credentials_metadata(domid, secret), options)


class HypervisorClient:
    def __init__(self, channel: grpc.aio.Channel, domid: int):
        self.channel = channel
        self.domid = domid
        self.domains = domains_pb2_grpc.DomainsStub(channel)
        self.memory = memory_pb2_grpc.MemoryStub(channel)
        self.paging = paging_pb2_grpc.PagingStub(channel)
        self.grants = grants_pb2_grpc.GrantTableStub(channel)
        self.evtchn = evtchn_pb2_grpc.EventChannelStub(channel)
        self.xenstore = xenstore_pb2_grpc.XenStoreStub(channel)
        self.console = console_pb2_grpc.ConsoleStub(channel)
        self.triggers = console_pb2_grpc.TriggersStub(channel)
        self.sched = sched_pb2_grpc.SchedStub(channel)
        self.save = save_pb2_grpc.SaveRestoreStub(channel)

    @classmethod
    def connect(cls, address: str, domid: int, secret: str, options=CHANNEL_OPTIONS,
                idle_close: float | None = None) -> "HypervisorClient":
        """``idle_close``: close the connection after that many seconds with
        no call in flight, and open one again for the next call
        (xenlab.rpc.IdleClosingChannel); None keeps it open."""
        if idle_close is None:
            return cls(credentialed_channel(address, domid, secret, options), domid)
        channel = IdleClosingChannel(
            lambda: credentialed_channel(address, domid, secret, options), idle_close)
        return cls(channel, domid)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "HypervisorClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def to_domain_spec(cfg) -> domains_pb2.DomainSpec:
    """The Create rpc's DomainSpec for a parsed xl.cfg (an XlConfig of
    xenlab.toolstack.xlcfg)."""
    return domains_pb2.DomainSpec(
        name=cfg.name, memory_mb=cfg.memory_mb, maxmem_mb=cfg.maxmem_mb,
        vcpus=cfg.vcpus, maxvcpus=cfg.maxvcpus, on_poweroff=cfg.on_poweroff,
        on_reboot=cfg.on_reboot, on_crash=cfg.on_crash, on_watchdog=cfg.on_watchdog,
        vif=[domains_pb2.VifSpec(devid=v.devid, mac=v.mac or "", bridge=v.bridge, ip=v.ip or "",
                                 vifname=v.vifname or "", rate=v.rate or "", mtu=v.mtu,
                                 backend=v.backend or "", script=v.script or "",
                                 model=v.model or "", vlan=v.vlan or "")
             for v in cfg.vifs],
        uuid=cfg.uuid or "", launcher=cfg.launcher or "", extra=dict(cfg.extra),
        config_text=cfg.text, type=cfg.type, hap=cfg.hap, shadow_memory_mb=cfg.shadow_memory_mb)
