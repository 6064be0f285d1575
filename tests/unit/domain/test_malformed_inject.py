"""Frames of every wrong size injected through the guest agent (issue
"Hostile input and faults", part 6).

A frame shorter than an Ethernet header or longer than the interface's MTU
plus its header never reaches the interface: each is counted under
``bad_length`` in the call's summary, the well-sized frames around it go
out, in order, and the interface's own counters see only those. A message
past the gRPC size limit ends that call with RESOURCE_EXHAUSTED, before
anything of it reaches the interface, and the agent keeps serving.
"""
from __future__ import annotations

import shutil
import types

import grpc
import pytest

from xenlab.agent_client import agent_channel
from xenlab.domain.agent import GuestAgentServer
from xenlab.domain.netstack import GuestNetwork
from xenlab.net.device import NetDevice
from xenlab.proto import agent_pb2, agent_pb2_grpc
from xenlab.rpc import MAX_MESSAGE
from xenlab.testing import short_tempdir

MAC = bytes.fromhex("00163e000001")


class Wire(NetDevice):
    """An interface that keeps what it is asked to send."""

    def __init__(self, mtu: int):
        super().__init__("eth0", MAC, mtu)
        self.sent: list[bytes] = []

    state = "connected"

    def transmit(self, frames: list[bytes]) -> None:
        self.count_tx(frames)
        self.sent.extend(frames)


def frame(n: int) -> bytes:
    head = b"\xff" * 6 + MAC + b"\x88\xb5"
    return (head + bytes(i & 0xFF for i in range(max(0, n - len(head)))))[:n]


@pytest.fixture
async def agent(request):
    tmp = short_tempdir()
    wire = Wire(getattr(request, "param", 1500))
    net = GuestNetwork()
    net.attach(types.SimpleNamespace(netifs={"eth0": wire}, vifs={}, on_netif_change=[]))
    server = GuestAgentServer(net, 1, f"unix:{tmp}/agent.sock", "token")
    channel = agent_channel(await server.start(), "token",
                            options=[("grpc.max_send_message_length", -1)])
    try:
        yield wire, agent_pb2_grpc.GuestAgentStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=0.1)
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def inject(stub, frames: list[bytes]):
    async def messages():
        for data in frames:
            yield agent_pb2.Frame(data=data)
    return await stub.InjectFrames(messages())


@pytest.mark.parametrize("agent", [1500, 9000], indirect=True)
async def test_every_wrong_size_is_counted_and_nothing_of_it_is_sent(agent):
    wire, stub = agent
    top = wire.mtu + 14
    sizes = [0, 1, 13, 14, 60, top, top + 1, 65535, 65536, 1 << 20, top - 1, 8 << 20]
    good = [n for n in sizes if 14 <= n <= top]
    frames = [frame(n) for n in sizes]
    summary = await inject(stub, frames)
    assert (summary.accepted, summary.dropped) == (len(good), len(sizes) - len(good))
    assert dict(summary.drops) == {"bad_length": len(sizes) - len(good)}
    assert wire.sent == [f for f in frames if 14 <= len(f) <= top]
    assert wire.counters["tx_packets"] == len(good)
    assert wire.counters["tx_bytes"] == sum(good)


async def test_a_message_past_the_grpc_limit_ends_the_call_and_sends_none_of_it(agent):
    wire, stub = agent
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inject(stub, [frame(60), frame(MAX_MESSAGE + 1)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(len(f) == 60 for f in wire.sent)
    summary = await inject(stub, [frame(60)])       # still serving
    assert summary.accepted == 1
