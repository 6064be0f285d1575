"""Finding and talking to a host's bridges, as the bridge tools find the
kernel's: every bridge service registers its bridges in xenstore
(``/tool/xenlab/bridges/NAME/grpc``), so a client that can read xenstore
(the toolstack, as Domain-0) reaches every bridge of the host.

    async with await BridgeClient.connect(hv) as bridges:
        for info in await bridges.show():        # every bridge, every port
            ...
        table = await bridges.fdb()               # every bridge's FDB

One gRPC channel per bridge service, whatever the number of bridges it runs.
For one bridge's API as a plain stub:

    async with await bridge_for(hv, "xenbr0") as bridge:
        fdb = await bridge.ShowFdb(bridge_pb2.ShowFdbRequest(bridge="xenbr0"))

The service asks for no credentials (it listens on a unix socket in the
rundir, or on the loopback), so the channels carry none.
"""
from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass, field

import grpc

from xenlab.client import HypervisorClient
from xenlab.proto import bridge_pb2, bridge_pb2_grpc, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS
from xenlab.xen.errors import XenError
from xenlab.xen.xenstore_paths import BRIDGE_REGISTRY, bridge_registry_path


class NoBridgeError(LookupError):
    """No bridge of that name has registered its address."""


async def _read(hv: HypervisorClient, path: str) -> str | None:
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=path))
    except grpc.aio.AioRpcError as err:
        if err.code() is grpc.StatusCode.NOT_FOUND:
            return None         # not registered, registering, or going away
        raise
    return reply.value.decode().strip() or None


async def bridge_address(hv: HypervisorClient, name: str) -> str | None:
    """Where bridge ``name`` serves gRPC, or None if no such bridge has
    registered (``hv``: a HypervisorClient that may read /tool, e.g. dom0)."""
    return await _read(hv, bridge_registry_path(name, "grpc"))


async def registered_bridges(hv: HypervisorClient) -> dict[str, str]:
    """Bridge name -> the gRPC address of the service that runs it."""
    try:
        names = (await hv.xenstore.Directory(xenstore_pb2.PathRequest(path=BRIDGE_REGISTRY))).names
    except grpc.aio.AioRpcError as err:
        if err.code() is grpc.StatusCode.NOT_FOUND:
            return {}
        raise
    out = {}
    for name in sorted(names):
        address = await bridge_address(hv, name)
        if address:
            out[name] = address
    return out


class BridgeStub(bridge_pb2_grpc.BridgeStub):
    """One bridge's API: a Bridge stub that owns its channel. Close it, or
    use ``async with``."""

    def __init__(self, channel: grpc.aio.Channel, address: str, name: str = ""):
        super().__init__(channel)
        self.channel = channel
        self.address = address
        self.name = name

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> BridgeStub:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def bridge_for(hv: HypervisorClient, name: str) -> BridgeStub:
    """A client of bridge ``name``'s API, found through xenstore with ``hv``."""
    address = await bridge_address(hv, name)
    if address is None:
        raise NoBridgeError(f"no bridge {name!r} has registered ({bridge_registry_path(name, 'grpc')} "
                            f"is missing): is the bridge service running?")
    return BridgeStub(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), address, name)


@dataclass
class BridgeClient:
    """The host's bridges: name -> stub of the service that runs it."""
    stubs: dict[str, bridge_pb2_grpc.BridgeStub]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @classmethod
    async def connect(cls, hv: HypervisorClient) -> "BridgeClient":
        return cls.to_addresses(await registered_bridges(hv))

    @classmethod
    def to_addresses(cls, addresses: dict[str, str]) -> "BridgeClient":
        channels: dict[str, grpc.aio.Channel] = {}
        stubs = {}
        for name, address in addresses.items():
            if address not in channels:
                channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            stubs[name] = bridge_pb2_grpc.BridgeStub(channels[address])
        return cls(stubs, list(channels.values()))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)

    async def __aenter__(self) -> "BridgeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def names(self) -> list[str]:
        return list(self.stubs)

    def stub(self, bridge: str) -> bridge_pb2_grpc.BridgeStub:
        stub = self.stubs.get(bridge)
        if stub is None:
            raise XenError(errno.ENODEV, f"no bridge named {bridge!r} is registered")
        return stub

    async def show(self, bridge: str | None = None) -> list[bridge_pb2.BridgeInfo]:
        """BridgeInfo (settings and ports) of one bridge or all."""
        names = [bridge] if bridge else self.names
        replies = await asyncio.gather(*(self.stub(n).ShowBridges(bridge_pb2.ShowBridgesRequest(bridge=n))
                                         for n in names))
        return [info for reply in replies for info in reply.bridges]

    async def fdb(self, bridge: str | None = None) -> list[bridge_pb2.FdbRecord]:
        """Every FDB entry of one bridge or all, bridge by bridge, by port."""
        names = [bridge] if bridge else self.names
        replies = await asyncio.gather(*(self.stub(n).ShowFdb(bridge_pb2.ShowFdbRequest(bridge=n))
                                         for n in names))
        return [entry for reply in replies for entry in reply.entries]

    async def port_bridge(self, port: str) -> str | None:
        """The bridge a port belongs to, if any."""
        for info in await self.show():
            if any(p.name == port for p in info.ports):
                return info.name
        return None
