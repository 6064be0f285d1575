"""xenlab.rpc.IdleClosingChannel: a client channel that closes the channel
under it once no call has been in flight for its idle period, and opens a
new one for the next call, with stubs built on it once. Checked against a
real grpc.aio server in this process, reached through a TCP relay that
counts the connections it carries and sees each one end."""
from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from xenlab.client import HypervisorClient
from xenlab.proto import xenstore_pb2
from xenlab.rpc import IdleClosingChannel, call
from xenlab.testing.eventually import eventually

IDLE = 0.05         # seconds: short, so that the tests go idle quickly
SERVICE = "xenlab.test.Idle"
SHUTDOWN, IDLE_STATE = grpc.ChannelConnectivity.SHUTDOWN, grpc.ChannelConnectivity.IDLE


class Peer:
    """The server end: Echo, Fail, Hold (answers once released), Stream
    (one message, then one more once released), Chat (echoes a stream),
    Count (counts a stream)."""

    def __init__(self):
        self.release = asyncio.Event()
        self.holding = 0

    async def echo(self, request: bytes, context) -> bytes:
        return request

    async def fail(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    async def hold(self, request: bytes, context) -> bytes:
        self.holding += 1
        await self.release.wait()
        return request

    async def stream(self, request: bytes, context):
        yield request
        self.holding += 1
        await self.release.wait()
        yield request + b"!"

    async def chat(self, requests, context):
        async for request in requests:
            yield request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Hold": grpc.unary_unary_rpc_method_handler(self.hold),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Count": grpc.stream_unary_rpc_method_handler(self.count),
        })

    async def count(self, requests, context) -> bytes:
        return str(len([r async for r in requests])).encode()


class Relay:
    """A TCP relay in front of the server: the connections it was asked
    for (``opened``) and those whose client went away (``ended``)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.opened = 0
        self.ended = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        self.opened += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        task = asyncio.ensure_future(self._pipe(up_reader, writer))
        self._tasks.add(task)
        await self._pipe(reader, up_writer)
        self.ended += 1
        task.cancel()

    @staticmethod
    async def _pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Channels:
    """The factory: real channels to ``address``, every one kept to look at.
    ``slow_close`` holds each close until it is set."""

    def __init__(self, address: str):
        self.address = address
        self.opened: list[grpc.aio.Channel] = []
        self.slow_close: asyncio.Event | None = None

    def __call__(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.address)
        if self.slow_close is not None:
            close, gate = channel.close, self.slow_close

            async def slow(grace=None):
                await gate.wait()
                await close(grace)
            channel.close = slow
        self.opened.append(channel)
        return channel

    def closed(self) -> list[bool]:
        return [ch.get_state() is SHUTDOWN for ch in self.opened]


class Stub:
    """What generated stubs do: take the multicallables once."""

    def __init__(self, channel: grpc.aio.Channel):
        self.Echo = channel.unary_unary(f"/{SERVICE}/Echo", _registered_method=True)
        self.Fail = channel.unary_unary(f"/{SERVICE}/Fail")
        self.Hold = channel.unary_unary(f"/{SERVICE}/Hold")
        self.Stream = channel.unary_stream(f"/{SERVICE}/Stream")
        self.Chat = channel.stream_stream(f"/{SERVICE}/Chat")
        self.Count = channel.stream_unary(f"/{SERVICE}/Count")


@pytest.fixture
async def server():
    peer = Peer()
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((peer.handler(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    relay = Relay(("127.0.0.1", port))
    address = await relay.start()
    yield peer, relay, address
    peer.release.set()
    await relay.stop()
    await srv.stop(grace=None)


@pytest.fixture
async def idle_channel(server):
    peer, relay, address = server
    peer.relay = relay
    channels = Channels(address)
    channel = IdleClosingChannel(channels, idle=IDLE)
    yield peer, channels, channel, Stub(channel)
    if channels.slow_close is not None:
        channels.slow_close.set()
    await channel.close()


async def requests(*items):
    for item in items:
        yield item


async def test_calls_of_every_kind_work_on_stubs_built_before_any_channel(idle_channel):
    peer, channels, channel, stub = idle_channel
    assert channels.opened == [] and channel.get_state() is IDLE_STATE
    assert await stub.Echo(b"ping") == b"ping"
    peer.release.set()
    assert [m async for m in stub.Stream(b"s")] == [b"s", b"s!"]
    assert [m async for m in stub.Chat(requests(b"a", b"b"))] == [b"a", b"b"]
    assert await stub.Count(requests(b"1", b"2", b"3")) == b"3"
    assert len(channels.opened) == 1


async def test_an_idle_channel_is_closed_and_the_next_call_opens_another(idle_channel):
    peer, channels, channel, stub = idle_channel
    relay = peer.relay
    assert await stub.Echo(b"1") == b"1"
    await eventually(lambda: channels.closed() == [True], "the idle channel closed")
    assert channel.get_state() is IDLE_STATE
    # The server's end saw the connection go.
    await eventually(lambda: (relay.opened, relay.ended) == (1, 1), "the connection ended")
    assert await stub.Echo(b"2") == b"2"
    assert channels.closed() == [True, False]
    assert (relay.opened, relay.ended) == (2, 1) and channel.opened == 2
    await eventually(lambda: channels.closed() == [True, True], "the second channel closed")
    await eventually(lambda: relay.ended == 2, "the second connection ended")


async def test_a_failed_call_is_done_too(idle_channel):
    peer, channels, channel, stub = idle_channel
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(b"x")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    await eventually(lambda: channels.closed() == [True], "the idle channel closed")


async def test_a_cancelled_call_is_done_too(idle_channel):
    peer, channels, channel, stub = idle_channel
    held = stub.Hold(b"x")
    await eventually(lambda: peer.holding == 1, "the call held")
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    await eventually(lambda: channels.closed() == [True], "the idle channel closed")


async def test_a_held_unary_call_is_never_cut(idle_channel):
    peer, channels, channel, stub = idle_channel
    held = asyncio.ensure_future(stub.Hold(b"long"))
    await eventually(lambda: peer.holding == 1, "the call held")
    await asyncio.sleep(20 * IDLE)          # many idle periods
    assert channels.closed() == [False] and not held.done()
    assert (peer.relay.opened, peer.relay.ended) == (1, 0)
    peer.release.set()
    assert await held == b"long"
    await eventually(lambda: channels.closed() == [True], "the channel closed once idle")


async def test_a_held_stream_is_never_cut(idle_channel):
    peer, channels, channel, stub = idle_channel
    stream = stub.Stream(b"s")
    assert await stream.read() == b"s"
    await eventually(lambda: peer.holding == 1, "the stream held")
    # Short calls beside it come and go on the same channel.
    assert await stub.Echo(b"e") == b"e"
    await asyncio.sleep(20 * IDLE)
    assert channels.closed() == [False]
    peer.release.set()
    assert await stream.read() == b"s!"
    assert await stream.read() is grpc.aio.EOF
    await eventually(lambda: channels.closed() == [True], "the channel closed once idle")


async def test_calls_made_while_the_idle_channel_closes_get_a_fresh_one(idle_channel):
    peer, channels, channel, stub = idle_channel
    channels.slow_close = asyncio.Event()
    assert await stub.Echo(b"first") == b"first"
    # The idle close has begun (the state says no channel is open) and is
    # held there.
    await eventually(lambda: channel.get_state() is IDLE_STATE and len(channels.opened) == 1,
                     "the idle close begun")
    answers = await asyncio.gather(*(stub.Echo(b"%d" % i) for i in range(20)))
    assert answers == [b"%d" % i for i in range(20)]
    assert len(channels.opened) == 2 and channels.closed() == [False, False]
    channels.slow_close.set()
    await eventually(lambda: channels.closed() == [True, True], "both channels closed")


async def test_concurrent_calls_share_one_reopened_channel(idle_channel):
    peer, channels, channel, stub = idle_channel
    assert await stub.Echo(b"0") == b"0"
    await eventually(lambda: channels.closed() == [True], "the idle channel closed")
    # (grpc-core shares a connection between channels to one address, so a
    # channel opened before the old one's connection is gone would take it.)
    await eventually(lambda: peer.relay.ended == 1, "the connection ended")
    answers = await asyncio.gather(*(stub.Echo(b"%d" % i) for i in range(30)))
    assert answers == [b"%d" % i for i in range(30)]
    assert channels.closed() == [True, False] and peer.relay.opened == 2


async def test_close_is_for_good(idle_channel):
    peer, channels, channel, stub = idle_channel
    assert await stub.Echo(b"1") == b"1"
    await channel.close()
    assert channels.closed() == [True] and channel.get_state() is SHUTDOWN
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        await stub.Echo(b"2")
    with pytest.raises(grpc.aio.UsageError, match="closed"):
        await channel.channel_ready()
    await channel.close()           # idempotent
    assert len(channels.opened) == 1


async def test_close_cancels_a_call_in_flight(idle_channel):
    peer, channels, channel, stub = idle_channel
    held = asyncio.ensure_future(stub.Hold(b"x"))
    await eventually(lambda: peer.holding == 1, "the call held")
    await channel.close()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await held
    assert channels.closed() == [True]


async def test_channel_ready_connects_and_the_connection_goes_once_idle(idle_channel):
    peer, channels, channel, stub = idle_channel
    await channel.channel_ready()
    assert channel.get_state() is grpc.ChannelConnectivity.READY
    await eventually(lambda: channels.closed() == [True], "the unused channel closed")
    assert channel.get_state() is IDLE_STATE


async def test_waiting_for_a_state_change_holds_the_channel(idle_channel):
    peer, channels, channel, stub = idle_channel
    # No channel: IDLE, so a wait from any other state returns at once.
    await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
    assert channels.opened == []
    waiting = asyncio.ensure_future(channel.wait_for_state_change(IDLE_STATE))
    await eventually(lambda: len(channels.opened) == 1, "a channel for the watcher")
    await asyncio.sleep(20 * IDLE)
    assert channels.closed() == [False] and not waiting.done()
    assert await stub.Echo(b"x") == b"x"        # connecting is a change
    await waiting
    await eventually(lambda: channels.closed() == [True], "the channel closed once idle")


def test_the_idle_period_must_be_positive():
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            IdleClosingChannel(lambda: None, idle=bad)


async def test_a_hypervisor_client_with_idle_close_calls_across_reconnects(hypervisor):
    client = HypervisorClient.connect(hypervisor.address, 0, hypervisor.hv.dom0_secret,
                                      idle_close=IDLE)
    async with client:
        assert isinstance(client.channel, IdleClosingChannel)
        request = xenstore_pb2.PathRequest(path="/local/domain/0/name")
        first = await call(client.xenstore.Read(request))
        await eventually(lambda: client.channel.get_state() is IDLE_STATE,
                         "the idle connection closed")
        assert await call(client.xenstore.Read(request)) == first


# A process whose only gRPC object is an IdleClosingChannel to ``address``:
# one call, then another for each line on its standard input.
CLIENT = textwrap.dedent("""
    import asyncio, sys
    import grpc
    from xenlab.rpc import IdleClosingChannel

    async def main():
        address, idle = sys.argv[1], float(sys.argv[2])
        channel = IdleClosingChannel(lambda: grpc.aio.insecure_channel(address), idle)
        echo = channel.unary_unary("/%s/Echo")
        loop = asyncio.get_running_loop()
        while True:
            print((await echo(b"called")).decode(), flush=True)
            if not await loop.run_in_executor(None, sys.stdin.readline):
                return
    asyncio.run(main())
""" % SERVICE)
# grpc-core's own threads (its EventEngine's and its timer's), by the names the host shows
GRPC_THREADS = ("event_engine", "lifeguard", "grpc_global_tim")


def grpc_threads(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            pass
    return [name for name in names if name.startswith(GRPC_THREADS)]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc's per-thread comm")
async def test_a_process_whose_channel_went_idle_keeps_no_grpc_thread(server):
    """The point of it all: grpc-core's threads, which wake the process
    several times a second while a channel lives, are gone once it closed."""
    peer, relay, address = server
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, address, "0.2", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ))
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"called\n"
        await eventually(lambda: not grpc_threads(child.pid), "grpc-core's threads gone",
                         every=0.05)
        child.stdin.write(b"again\n")
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"called\n"
        assert relay.opened == 2
        await eventually(lambda: not grpc_threads(child.pid), "grpc-core's threads gone again",
                         every=0.05)
    finally:
        child.kill()
        await child.wait()
