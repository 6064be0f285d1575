"""A client for the hypervisor's gRPC services, acting as one domain.

    async with HypervisorClient.connect(address, domid, secret) as hv:
        await hv.domains.List(pb.Empty())

Every call carries the domain's credentials as metadata.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import grpc

from xenlab.proto import (domains_pb2_grpc, evtchn_pb2_grpc, grants_pb2_grpc,
                          memory_pb2_grpc, xenstore_pb2_grpc)
from xenlab.rpc import CHANNEL_OPTIONS, credentials_metadata


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


def credentialed_channel(address: str, domid: int, secret: str) -> grpc.aio.Channel:
    md = credentials_metadata(domid, secret)
    interceptors = [cls(md) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)


class HypervisorClient:
    def __init__(self, channel: grpc.aio.Channel, domid: int):
        self.channel = channel
        self.domid = domid
        self.domains = domains_pb2_grpc.DomainsStub(channel)
        self.memory = memory_pb2_grpc.MemoryStub(channel)
        self.grants = grants_pb2_grpc.GrantTableStub(channel)
        self.evtchn = evtchn_pb2_grpc.EventChannelStub(channel)
        self.xenstore = xenstore_pb2_grpc.XenStoreStub(channel)

    @classmethod
    def connect(cls, address: str, domid: int, secret: str) -> "HypervisorClient":
        return cls(credentialed_channel(address, domid, secret), domid)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "HypervisorClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@dataclass(frozen=True)
class Rundir:
    """Where a running hypervisor leaves its address and Domain-0's secret,
    so that the toolstack (the CLI) can act as dom0."""
    path: Path

    @property
    def address_file(self) -> Path:
        return self.path / "hypervisor.addr"

    @property
    def dom0_secret_file(self) -> Path:
        return self.path / "dom0.secret"

    @property
    def doorbell(self) -> Path:
        return self.path / "evtchn.sock"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def xenstored_socket(self) -> Path:
        """xenstored's wire protocol, for Xen's tools: XENSTORED_PATH (or
        XENSTORED_RUNDIR=its directory, as libxenstore appends "/socket")."""
        return self.path / "xenstored" / "socket"

    def read_address(self) -> str:
        try:
            return self.address_file.read_text().strip()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no hypervisor is running with rundir {self.path} "
                f"(start one with `xenlab hypervisor`, or pass --hypervisor/--rundir)") from None

    def read_dom0_secret(self) -> str:
        try:
            return self.dom0_secret_file.read_text().strip()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.dom0_secret_file} is missing: is the hypervisor running with this rundir?") from None
        except PermissionError:
            raise PermissionError(
                f"cannot read {self.dom0_secret_file}: the toolstack must run as the hypervisor's user") from None
