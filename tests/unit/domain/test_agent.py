"""The guest agent over real gRPC, on two guests wired back to back."""
from __future__ import annotations

import asyncio
import shutil
import types
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xenlab.agent_client import (AGENT_TOKEN_MD, NoAgentError, agent_channel, agent_for,
                                 format_ping, pick_address)
from xenlab.domain.agent import (CAPTURE_DROPPED_MD, SERVICE_NAME, GuestAgentServer,
                                 start_guest_agent)
from xenlab.domain.netstack import GuestNetwork
from xenlab.domain.hypercall import GrpcXenStore
from xenlab.domain.xenbus import XenbusClient
from xenlab.net.device import NetDevice
from xenlab.net.ethernet import ETH_P_ARP, EthernetFrame
from xenlab.proto import agent_pb2, agent_pb2_grpc, domains_pb2, xenstore_pb2
from xenlab.testing import short_tempdir

TOKEN_A, TOKEN_0 = "token-of-guest-a", "token-of-dom0"
MAC_A = bytes.fromhex("00163e000001")
MAC_B = bytes.fromhex("00163e000002")


class FakeNic(NetDevice):
    """A netfront stand-in: transmit() reaches the peer on the next loop turn."""

    def __init__(self, name: str, mac: bytes, mtu: int = 1500):
        super().__init__(name, mac, mtu)
        self.peer: FakeNic | None = None
        self.up = True

    @property
    def state(self) -> str:
        return "up" if self.up else "down"

    def transmit(self, frames: list[bytes]) -> None:
        if not self.up or self.peer is None:
            self.drop("link_down", len(frames))
            return
        self.count_tx(frames)
        asyncio.get_running_loop().call_soon(self.peer.deliver, list(frames))


def cable(a: FakeNic, b: FakeNic) -> None:
    a.peer, b.peer = b, a


def kernel_of(*netifs, vifs=()):
    return types.SimpleNamespace(netifs={d.name: d for d in netifs},
                                 vifs={d.name: d for d in vifs}, on_netif_change=[])


class Agents:
    """Guest A (10.0.0.1, eth0, and eth1 without an address) serving its agent,
    wired to guest B (10.0.0.2); dom0 with one vif serving its own."""

    async def start(self, tmp: Path) -> None:
        self.nic_a = FakeNic("eth0", MAC_A)
        self.bare = FakeNic("eth1", bytes.fromhex("00163e000011"))
        self.nic_b = FakeNic("eth0", MAC_B)
        cable(self.nic_a, self.nic_b)
        # Each guest's address from its own kernel command line (Linux's ip=).
        self.net_a, self.net_b, self.net_0 = (
            GuestNetwork(cmdline="ip=10.0.0.1:::255.255.255.0::eth0:off", arp_retry=0.05,
                         arp_retries=2),
            GuestNetwork(cmdline="ip=10.0.0.2:::255.255.255.0::eth0:off"), GuestNetwork())
        self.net_a.attach(kernel_of(self.nic_a, self.bare))
        self.net_b.attach(kernel_of(self.nic_b))
        self.vif = FakeNic("vif1.0", bytes.fromhex("feffffffffff"))
        self.bridge_port = FakeNic("port1", bytes.fromhex("020000000001"))
        cable(self.vif, self.bridge_port)
        self.bridged: list[bytes] = []
        self.bridge_port.receiver = self.bridged.extend
        self.net_0.attach(kernel_of(vifs=(self.vif,)))
        self.server_a = GuestAgentServer(self.net_a, 1, f"unix:{tmp}/agent-d1.sock", TOKEN_A)
        self.server_0 = GuestAgentServer(self.net_0, 0, f"unix:{tmp}/agent-d0.sock", TOKEN_0)
        self.channels = [agent_channel(await s.start(), s.token)
                         for s in (self.server_a, self.server_0)]
        self.a = agent_pb2_grpc.GuestAgentStub(self.channels[0])
        self.dom0 = agent_pb2_grpc.GuestAgentStub(self.channels[1])

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for server in (self.server_a, self.server_0):
            await server.stop(grace=0.1)
        for net in (self.net_a, self.net_b, self.net_0):
            net.close()


@pytest.fixture
async def agents():
    tmp = short_tempdir()
    lab = Agents()
    await lab.start(tmp)
    try:
        yield lab
    finally:
        await lab.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def refused(call, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert err.value.details()
    return err.value.details()


async def still_serving(agents) -> None:
    reply = await agents.a.InterfaceStats(agent_pb2.StatsRequest(interface="eth0"))
    assert reply.interfaces[0].name == "eth0"


async def frames_of(*messages):
    for message in messages:
        yield message


def frame(n: int = 60, dst: bytes = MAC_B) -> bytes:
    return EthernetFrame(dst, MAC_A, 0x88B5, bytes(n - 14)).build()   # local experimental type


# -- the calls ----------------------------------------------------------------------------

async def test_health_and_service_are_served(agents):
    health = health_pb2_grpc.HealthStub(agents.channels[0])
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_ping(agents):
    reply = await agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.2", count=3, interval=0.01))
    assert (reply.transmitted, reply.received, reply.error) == (3, 3, "")
    assert list(reply.seq) == [1, 2, 3] and len(reply.rtt) == 3
    text = format_ping(reply, "10.0.0.2")
    assert "64 bytes from 10.0.0.2: icmp_seq=1 time=" in text
    assert "3 packets transmitted, 3 received, 0% packet loss" in text
    assert "rtt min/avg/max/mdev = " in text


async def test_ping_without_arp_reply_says_so(agents):
    reply = await agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.77", count=1, timeout=0.5))
    assert (reply.transmitted, reply.received) == (1, 0)
    assert reply.error == "arp: no reply from 10.0.0.77"
    assert reply.unreachable and reply.src == "10.0.0.1"


async def test_send_udp_waits_for_the_echo(agents):
    reply = await agents.a.SendUdp(agent_pb2.SendUdpRequest(
        dst="10.0.0.2", dport=7, payload=b"ping?", wait_reply=True))
    assert reply.replied and reply.reply == b"ping?"
    assert (reply.src, reply.sport) == ("10.0.0.2", 7)
    assert reply.rtt >= 0


async def test_send_udp_without_waiting(agents):
    reply = await agents.a.SendUdp(agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=9, payload=b"x"))
    assert not reply.replied


async def test_inject_frames(agents):
    summary = await agents.a.InjectFrames(frames_of(
        agent_pb2.Frame(data=frame(), interface="eth0"), agent_pb2.Frame(data=b"tiny"),
        agent_pb2.Frame(data=frame(1515)), agent_pb2.Frame(data=frame(1514))))
    assert (summary.accepted, summary.dropped) == (2, 2)
    assert dict(summary.drops) == {"bad_length": 2}


async def test_inject_defaults_to_eth0_and_many_frames_batch(agents):
    before = agents.nic_a.stats()["tx_packets"]
    summary = await agents.a.InjectFrames(frames_of(*[agent_pb2.Frame(data=frame())] * 500))
    assert (summary.accepted, summary.dropped) == (500, 0)
    assert agents.nic_a.stats()["tx_packets"] == before + 500


async def test_inject_counts_the_devices_drops(agents):
    agents.nic_a.up = False
    summary = await agents.a.InjectFrames(frames_of(agent_pb2.Frame(data=frame())))
    assert (summary.accepted, summary.dropped, dict(summary.drops)) == (0, 1, {"link_down": 1})


async def capturing(agents, n: int) -> None:
    """Wait until the agent has ``n`` captures open on eth0."""
    async def settle():
        while agents.net_a.active_captures("eth0") != n:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(settle(), 5)


async def test_capture_stops_after_count_and_removes_its_tap(agents):
    stream = agents.a.Capture(agent_pb2.CaptureRequest(interface="eth0", count=4))
    await capturing(agents, 1)
    ping = asyncio.ensure_future(agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.2", count=1)))
    frames = [f async for f in stream]
    await ping
    assert len(frames) == 4
    assert [f.direction for f in frames] == ["tx", "rx", "tx", "rx"]
    assert EthernetFrame.parse(frames[0].data).ethertype == ETH_P_ARP
    assert all(f.interface == "eth0" and f.timestamp > 0 for f in frames)
    assert (await stream.trailing_metadata()).get(CAPTURE_DROPPED_MD) == "0"
    assert agents.net_a.active_captures("eth0") == 0


async def test_capture_one_direction_and_cancel(agents):
    stream = agents.a.Capture(agent_pb2.CaptureRequest(interface="eth0", direction="rx"))
    await capturing(agents, 1)
    await agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.2", count=2, interval=0.01))
    first = await stream.read()
    assert first.direction == "rx"
    stream.cancel()
    await capturing(agents, 0)


async def test_interface_stats(agents):
    agents.nic_a.up = False
    agents.net_a.inject([frame()])
    agents.nic_a.up = True
    reply = await agents.a.InterfaceStats(agent_pb2.StatsRequest())
    by_name = {i.name: i for i in reply.interfaces}
    assert set(by_name) == {"eth0", "eth1"}
    eth0 = by_name["eth0"]
    assert (eth0.mac, eth0.ip, eth0.mtu, eth0.state) == ("00:16:3e:00:00:01", "10.0.0.1/24", 1500, "up")
    assert eth0.drops["link_down"] == 1
    assert eth0.tx_packets >= 1                     # the gratuitous ARP
    assert by_name["eth1"].ip == ""
    one = await agents.a.InterfaceStats(agent_pb2.StatsRequest(interface="eth1"))
    assert [i.name for i in one.interfaces] == ["eth1"]


async def test_dom0_lists_its_vifs(agents):
    reply = await agents.dom0.InterfaceStats(agent_pb2.StatsRequest())
    assert [i.name for i in reply.interfaces] == ["vif1.0"]
    summary = await agents.dom0.InjectFrames(frames_of(agent_pb2.Frame(data=frame())))
    assert summary.accepted == 1                     # the only interface is the default
    await asyncio.sleep(0)
    assert agents.bridged == [frame()]


# -- refusals -----------------------------------------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("request_", [
    agent_pb2.PingRequest(dst="10.0.0.300"),
    agent_pb2.PingRequest(dst=""),
    agent_pb2.PingRequest(dst="10.0.0.2", count=100_001),
    agent_pb2.PingRequest(dst="10.0.0.2", size=65_508),
    agent_pb2.PingRequest(dst="10.0.0.2", interval=0.00001),
    agent_pb2.PingRequest(dst="10.0.0.2", interval=-1),
    agent_pb2.PingRequest(dst="10.0.0.2", timeout=-1),
    agent_pb2.PingRequest(dst="10.0.0.2", size=2000),          # over the MTU
])
async def test_ping_refuses_bad_arguments(agents, request_):
    await refused(agents.a.Ping(request_), INVALID)
    await still_serving(agents)


@pytest.mark.parametrize("request_", [
    agent_pb2.SendUdpRequest(dst="ten", dport=7),
    agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=0),
    agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=70_000),
    agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=7, sport=70_000),
    agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=7, payload=bytes(65_508)),
])
async def test_send_udp_refuses_bad_arguments(agents, request_):
    await refused(agents.a.SendUdp(request_), INVALID)
    await still_serving(agents)


async def test_unknown_interface_is_not_found_with_the_known_ones(agents):
    calls = [
        agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.2", interface="eth9")),
        agents.a.SendUdp(agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=7, interface="eth9")),
        agents.a.InjectFrames(frames_of(agent_pb2.Frame(data=frame(), interface="eth9"))),
        agents.a.InterfaceStats(agent_pb2.StatsRequest(interface="eth9")),
    ]
    for call in calls:
        details = await refused(call, grpc.StatusCode.NOT_FOUND)
        assert "eth0" in details and "eth1" in details
    stream = agents.a.Capture(agent_pb2.CaptureRequest(interface="eth9"))
    details = await refused(stream.read(), grpc.StatusCode.NOT_FOUND)
    assert "eth0, eth1" in details
    await still_serving(agents)


async def test_capture_refuses_an_unknown_direction(agents):
    stream = agents.a.Capture(agent_pb2.CaptureRequest(interface="eth0", direction="up"))
    await refused(stream.read(), INVALID)
    await still_serving(agents)


async def test_no_default_interface_among_several_vifs(agents):
    agents.net_0.add(FakeNic("vif2.0", bytes.fromhex("feffffffffff")), bridged=True)
    details = await refused(agents.dom0.InjectFrames(frames_of(agent_pb2.Frame(data=frame()))),
                            grpc.StatusCode.NOT_FOUND)
    assert "vif1.0, vif2.0" in details


async def test_dom0_has_no_ip_stack(agents):
    for call in (agents.dom0.Ping(agent_pb2.PingRequest(dst="10.0.0.2")),
                 agents.dom0.SendUdp(agent_pb2.SendUdpRequest(dst="10.0.0.2", dport=7))):
        details = await refused(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert details == "dom0 has no IP stack"
    await agents.dom0.InterfaceStats(agent_pb2.StatsRequest())


async def test_interface_without_address_cannot_ping(agents):
    details = await refused(agents.a.Ping(agent_pb2.PingRequest(dst="10.0.0.2", interface="eth1")),
                            grpc.StatusCode.FAILED_PRECONDITION)
    assert "eth1 has no IPv4 address" in details
    await still_serving(agents)


async def test_off_link_without_gateway_is_a_failed_precondition(agents):
    await refused(agents.a.Ping(agent_pb2.PingRequest(dst="192.0.2.1")),
                  grpc.StatusCode.FAILED_PRECONDITION)
    await still_serving(agents)


# -- publishing and finding the agent -------------------------------------------------

async def boot_agent(hypervisor, name: str):
    """A domain created by the toolstack (launcher none), whose agent this
    test runs where the hypervisor said it should, with the token it gave."""
    reply = await hypervisor.dom0.domains.Create(domains_pb2.CreateDomainRequest(
        spec=domains_pb2.DomainSpec(name=name, memory_mb=16, launcher="none")))
    domid = reply.info.domid
    client = hypervisor.client_as(domid, reply.secret)
    nic = FakeNic("eth0", MAC_A)
    kernel = kernel_of(nic)
    kernel.domid = domid
    kernel.start_info = types.SimpleNamespace(domid=domid, agent=reply.agent,
                                              agent_token=reply.agent_token, doorbell="",
                                              cmd_line="ip=10.9.0.1:::255.255.255.0::eth0:off")
    kernel.xenbus = XenbusClient(GrpcXenStore(client.xenstore), domid)
    running = await start_guest_agent(kernel)
    running.nic = nic
    return reply, running


async def test_kernel_agent_is_published_and_found(hypervisor):
    reply, running = await boot_agent(hypervisor, "guest")
    domid = reply.info.domid
    assert running is not None
    socket_path = Path(reply.agent.removeprefix("unix:"))
    assert running.server.address == reply.agent
    assert socket_path.stat().st_mode & 0o077 == 0
    try:
        async with await agent_for(hypervisor.dom0, domid) as agent:
            reply = await agent.InterfaceStats(agent_pb2.StatsRequest())
            assert [(i.name, i.ip) for i in reply.interfaces] == [("eth0", "10.9.0.1/24")]
    finally:
        await running.stop()
    assert not socket_path.exists()
    with pytest.raises(NoAgentError, match=f"domain {domid} has no guest agent yet"):
        await agent_for(hypervisor.dom0, domid)


async def test_another_guest_calling_an_agent_is_refused_before_its_request_is_read(hypervisor):
    """The break: any local process that reached an agent's socket (another
    guest, another user under TCP) could drive that guest's interfaces. Now
    every GuestAgent call needs the token only the toolstack holds."""
    reply, running = await boot_agent(hypervisor, "victim")
    before = (dict(running.nic.counters), dict(running.nic.drops))
    try:
        for token in ("", "a-guessed-token", reply.agent_token[:-1]):
            channel = agent_channel(reply.agent, token) if token else grpc.aio.insecure_channel(reply.agent)
            stub = agent_pb2_grpc.GuestAgentStub(channel)
            details = await refused(stub.InterfaceStats(agent_pb2.StatsRequest()),
                                    grpc.StatusCode.UNAUTHENTICATED)
            assert AGENT_TOKEN_MD in details
            # A streaming call is refused the same way, before any frame is taken.
            frames = (agent_pb2.Frame(data=bytes(60)) for _ in range(3))
            await refused(stub.InjectFrames(frames), grpc.StatusCode.UNAUTHENTICATED)
            await channel.close()
        assert (dict(running.nic.counters), dict(running.nic.drops)) == before
        health = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(reply.agent))
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop()


async def test_the_toolstack_never_takes_the_agent_address_a_guest_wrote(hypervisor):
    """The break: a guest pointed /local/domain/D/data/agent at another
    guest's socket, and `xenlab ping`/`capture` of it acted on that guest."""
    web_reply, web = await boot_agent(hypervisor, "web")
    evil_reply, evil = await boot_agent(hypervisor, "evil")
    try:
        evil_client = hypervisor.client_as(evil_reply.info.domid, evil_reply.secret)
        await XenbusClient(GrpcXenStore(evil_client.xenstore), evil_reply.info.domid).write(
            "data/agent", web_reply.agent)
        async with await agent_for(hypervisor.dom0, evil_reply.info.domid) as agent:
            assert agent.address == evil_reply.agent != web_reply.agent
        # The record is the toolstack's: the guest can neither read its token nor rewrite it.
        record = f"/libxl/{evil_reply.info.domid}/agent"
        for call in (evil_client.xenstore.Read(xenstore_pb2.PathRequest(path=f"{record}/token")),
                     evil_client.xenstore.Write(xenstore_pb2.WriteRequest(
                         path=f"{record}/address", value=web_reply.agent.encode()))):
            await refused(call, grpc.StatusCode.PERMISSION_DENIED)
    finally:
        await web.stop()
        await evil.stop()


async def test_agent_for_a_domain_without_one(hypervisor):
    domid, _ = await hypervisor.create_domain("quiet")
    with pytest.raises(NoAgentError, match=f"/local/domain/{domid}/data/agent"):
        await agent_for(hypervisor.dom0, domid)


# -- ping(8) text ----------------------------------------------------------------------

def test_format_ping_like_ping8():
    reply = agent_pb2.PingReply(transmitted=4, received=3, rtt=[0.000412, 0.0015, 0.0123],
                                seq=[1, 2, 4])
    text = format_ping(reply, "10.0.0.2")
    assert text.splitlines()[:4] == [
        "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.",
        "64 bytes from 10.0.0.2: icmp_seq=1 time=0.412 ms",
        "64 bytes from 10.0.0.2: icmp_seq=2 time=1.50 ms",
        "64 bytes from 10.0.0.2: icmp_seq=4 time=12.3 ms",
    ]
    assert "--- 10.0.0.2 ping statistics ---" in text
    assert "4 packets transmitted, 3 received, 25% packet loss" in text
    assert "rtt min/avg/max/mdev = 0.412/4.737/12.300/5.366 ms" in text


def test_format_ping_unreachable_is_from_the_senders_address_per_request():
    # It printed "From 10.0.0.9: arp: ..." (the destination as the source).
    reply = agent_pb2.PingReply(transmitted=3, received=1, rtt=[0.001], seq=[2], src="10.0.0.1",
                                unreachable=True, error="arp: no reply from 10.0.0.9")
    lines = format_ping(reply, "10.0.0.9").splitlines()
    assert lines[2:4] == ["From 10.0.0.1 icmp_seq=1 Destination Host Unreachable",
                          "From 10.0.0.1 icmp_seq=3 Destination Host Unreachable"]
    assert "3 packets transmitted, 1 received, +2 errors, 66.6667% packet loss" in lines


def test_format_ping_prints_icmp_errors_from_routers_in_sequence_order():
    reply = agent_pb2.PingReply(transmitted=3, received=1, rtt=[0.001], seq=[2], src="10.0.1.2",
                                errors=[agent_pb2.PingError(seq=3, src="10.0.1.1", type=3, code=0),
                                        agent_pb2.PingError(seq=1, src="10.0.1.1", type=11, code=0)])
    lines = format_ping(reply, "10.0.2.2").splitlines()
    assert lines[1:4] == ["From 10.0.1.1 icmp_seq=1 Time to live exceeded",
                          "64 bytes from 10.0.2.2: icmp_seq=2 time=1.00 ms",
                          "From 10.0.1.1 icmp_seq=3 Destination Net Unreachable"]
    assert "3 packets transmitted, 1 received, +2 errors, 66.6667% packet loss" in lines


def test_format_ping_with_another_error_says_it_as_ping_does():
    reply = agent_pb2.PingReply(transmitted=1, received=0, error="interface eth0 went away")
    text = format_ping(reply, "10.0.0.9")
    assert "ping: interface eth0 went away" in text
    assert "1 packets transmitted, 0 received, 100% packet loss" in text
    assert "rtt" not in text


# -- domain names as destinations --------------------------------------------------------

def test_pick_address_prefers_a_subnet_the_source_is_on_else_the_first_interface():
    router = [("eth1", "10.0.2.1/24"), ("eth0", "10.0.1.1/24")]
    assert pick_address(["10.0.2.2/24"], router) == "10.0.2.1"
    assert pick_address(["10.0.1.2/24"], router) == "10.0.1.1"
    assert pick_address(["192.168.0.2/24"], router) == "10.0.1.1"       # eth0: via a gateway
    assert pick_address([], [("eth10", "10.0.10.1/24"), ("eth2", "10.0.3.1/24")]) == "10.0.3.1"
    assert pick_address(["10.0.2.2/24"], []) is None


def test_format_ping_with_a_name_prints_it_as_ping_prints_a_host_name():
    reply = agent_pb2.PingReply(transmitted=1, received=1, rtt=[0.002], seq=[1])
    lines = format_ping(reply, "10.0.2.2", name="db").splitlines()
    assert lines[:2] == ["PING db (10.0.2.2) 56(84) bytes of data.",
                         "64 bytes from db (10.0.2.2): icmp_seq=1 time=2.00 ms"]
    assert "--- db ping statistics ---" in lines
