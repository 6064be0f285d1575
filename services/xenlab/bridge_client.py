"""Reaching a bridge service's gRPC API (xenlab.proto.Bridge).

    async with await bridge_for(hv, "xenbr0") as bridge:
        fdb = await bridge.ShowFdb(bridge_pb2.ShowFdbRequest(bridge="xenbr0"))
        print(fdb.text)

The bridge service registers each of its bridges in xenstore, at
/tool/xenlab/bridges/<name>/grpc, as hotplug finds it there too. The service
asks for no credentials (it listens on a unix socket in the rundir, or on
the loopback), so the channel carries none.
"""
from __future__ import annotations

import grpc

from xenlab.proto import bridge_pb2_grpc, xenstore_pb2
from xenlab.rpc import CHANNEL_OPTIONS


class NoBridgeError(LookupError):
    """No bridge of that name has registered its address."""


class BridgeClient(bridge_pb2_grpc.BridgeStub):
    """A BridgeStub that owns its channel: close it, or use ``async with``."""

    def __init__(self, channel: grpc.aio.Channel, address: str, name: str = ""):
        super().__init__(channel)
        self.channel = channel
        self.address = address
        self.name = name

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> BridgeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def bridge_key(name: str) -> str:
    return f"/tool/xenlab/bridges/{name}/grpc"


async def bridge_address(hv, name: str) -> str | None:
    """Where bridge ``name`` serves gRPC, or None if no such bridge has
    registered (``hv``: a HypervisorClient that may read /tool, e.g. dom0)."""
    try:
        reply = await hv.xenstore.Read(xenstore_pb2.PathRequest(path=bridge_key(name)))
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return reply.value.decode().strip() or None


async def bridge_for(hv, name: str) -> BridgeClient:
    """A client for bridge ``name``, found through xenstore with ``hv``."""
    address = await bridge_address(hv, name)
    if address is None:
        raise NoBridgeError(f"no bridge {name!r} has registered ({bridge_key(name)} is missing): "
                            f"is the bridge service running?")
    return BridgeClient(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), address, name)
