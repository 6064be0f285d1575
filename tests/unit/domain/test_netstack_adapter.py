"""GuestNetwork: IP stacks on NetDevices, two guests wired back to back."""
from __future__ import annotations

import asyncio
import errno
import time
from ipaddress import IPv4Address, IPv4Interface

import pytest

from xenlab.domain.netstack import PING_MAX_COUNT, GuestNetwork
from xenlab.net.arp import ArpPacket
from xenlab.net.device import NetDevice
from xenlab.net.ipconfig import ip_param_text
from xenlab.net.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame
from xenlab.net.icmp import ICMP_ECHO, ICMP_ECHOREPLY, IcmpMessage
from xenlab.net.ipv4 import IPPROTO_ICMP, Ipv4Header
from xenlab.xen.errors import XenError

MAC_A = bytes.fromhex("00163e000001")
MAC_B = bytes.fromhex("00163e000002")


class FakeNic(NetDevice):
    """A netfront stand-in: transmit() hands frames to the peer on the next
    loop turn (never recursively), or drops them while the link is down."""

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


def ip_cmdline(**addresses: str) -> str:
    """The guest's kernel command line giving each interface its address
    (Linux's ip=), as the lab writes it."""
    return " ".join(ip_param_text(IPv4Interface(address), device)
                    for device, address in addresses.items())


def cable(a: FakeNic, b: FakeNic) -> None:
    a.peer, b.peer = b, a


class FakeKernel:
    """The part of DomainKernel the network adapter reads."""

    def __init__(self, *netifs: NetDevice, vifs: tuple[NetDevice, ...] = ()):
        self.netifs = {dev.name: dev for dev in netifs}
        self.vifs = {dev.name: dev for dev in vifs}
        self.on_netif_change: list = []

    def plug(self, device: NetDevice) -> None:
        self.netifs[device.name] = device
        for callback in list(self.on_netif_change):
            callback(device.name, device)

    def unplug(self, name: str) -> None:
        self.netifs.pop(name)
        for callback in list(self.on_netif_change):
            callback(name, None)


class Guests:
    def __init__(self, **stack_options):
        self.nic_a = FakeNic("eth0", MAC_A)
        self.nic_b = FakeNic("eth0", MAC_B)
        cable(self.nic_a, self.nic_b)
        self.kernel_a = FakeKernel(self.nic_a)
        self.kernel_b = FakeKernel(self.nic_b)
        # eth1 is for an interface a test plugs in later.
        self.a = GuestNetwork(cmdline=ip_cmdline(eth0="10.0.0.1/24", eth1="10.1.0.1/24"),
                              **stack_options)
        self.b = GuestNetwork(cmdline=ip_cmdline(eth0="10.0.0.2/24", eth1="10.1.0.2/24"),
                              **stack_options)
        self.a.attach(self.kernel_a)
        self.b.attach(self.kernel_b)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
async def guests():
    pair = Guests(arp_retry=0.05, arp_retries=2)
    await settle()
    yield pair
    pair.close()


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def take(capture, n: int, timeout: float = 5.0) -> list:
    """The next ``n`` frames of a capture."""
    async def collect():
        frames = []
        async for frame in capture:
            frames.append(frame)
            if len(frames) == n:
                return frames
    return await asyncio.wait_for(collect(), timeout)


def ethertype(frame: bytes) -> int:
    return EthernetFrame.parse(frame).ethertype


def icmp_type(frame: bytes) -> int:
    _, payload = Ipv4Header.parse(EthernetFrame.parse(frame).payload)
    return IcmpMessage.parse(payload).type


# -- link up ----------------------------------------------------------------------------

async def test_link_up_announces_the_address_with_gratuitous_arp():
    nic, peer = FakeNic("eth0", MAC_A), FakeNic("eth0", MAC_B)
    cable(nic, peer)
    seen = []
    peer.receiver = seen.extend
    net = GuestNetwork(cmdline=ip_cmdline(eth0="10.0.0.1/24"))
    net.attach(FakeKernel(nic))
    await settle()
    (frame,) = seen
    arp = ArpPacket.parse(EthernetFrame.parse(frame).payload)
    assert EthernetFrame.parse(frame).dst == BROADCAST
    assert str(arp.spa) == str(arp.tpa) == "10.0.0.1"
    net.close()


# -- ping -------------------------------------------------------------------------------

async def test_ping_resolves_arp_then_gets_one_rtt_per_request(guests):
    with guests.a.capture("eth0", "tx") as capture:
        result = await guests.a.ping("10.0.0.2", count=3, interval=0.01, timeout=5)
        sent = await take(capture, 4)
    assert (result.transmitted, result.received, result.error) == (3, 3, "")
    assert [seq for seq, _ in result.rtts] == [1, 2, 3]
    assert all(rtt >= 0 for _, rtt in result.rtts)
    assert ethertype(sent[0].data) == ETH_P_ARP
    assert [icmp_type(f.data) for f in sent[1:]] == [ICMP_ECHO] * 3


async def test_concurrent_pings_use_their_own_identifiers(guests):
    one, two = await asyncio.gather(
        guests.a.ping("10.0.0.2", count=5, interval=0.001, timeout=5),
        guests.a.ping("10.0.0.2", count=5, interval=0.001, timeout=5))
    assert one.received == two.received == 5


async def test_ping_own_address_loops_back(guests):
    result = await guests.a.ping("10.0.0.1", count=2, interval=0.001, timeout=5)
    assert result.received == 2


async def test_ping_with_no_arp_reply_reports_it():
    guests = Guests(arp_retry=0.02, arp_retries=2)
    try:
        result = await guests.a.ping("10.0.0.99", count=1, interval=0.01, timeout=1)
        assert (result.transmitted, result.received) == (1, 0)
        assert result.error == "arp: no reply from 10.0.0.99"
        assert guests.a.stack("eth0").counters["arp_unresolved"] == 1
    finally:
        guests.close()


async def test_stack_events_are_drained(guests):
    await guests.a.ping("10.0.0.2", count=20, interval=0.0001, timeout=5)
    assert len(guests.a.stack("eth0").events) == 0
    assert len(guests.b.stack("eth0").events) == 0


@pytest.mark.parametrize("kwargs", [
    {"dst": "10.0.0"}, {"dst": "nowhere"}, {"dst": "10.0.0.2", "count": 0},
    {"dst": "10.0.0.2", "count": PING_MAX_COUNT + 1}, {"dst": "10.0.0.2", "size": 65508},
    {"dst": "10.0.0.2", "interval": 0.00001}, {"dst": "10.0.0.2", "timeout": -1},
    {"dst": "10.0.0.2", "size": 1500},                  # over the MTU: no fragmentation
    {"dst": "127.0.0.1"},
])
async def test_ping_refuses_bad_arguments(guests, kwargs):
    with pytest.raises(XenError) as err:
        await guests.a.ping(**kwargs)
    assert err.value.errno == errno.EINVAL


async def test_ping_off_link_without_gateway_is_unreachable(guests):
    with pytest.raises(XenError) as err:
        await guests.a.ping("192.168.1.1", count=1)
    assert err.value.errno == errno.ENETUNREACH


# -- UDP --------------------------------------------------------------------------------

async def test_udp_echo_on_port_7(guests):
    result = await guests.a.send_udp("10.0.0.2", 7, b"hello", wait_reply=True, timeout=5)
    assert result.replied
    assert (result.reply, result.src, result.reply_sport) == (b"hello", "10.0.0.2", 7)
    assert result.sport >= 49152


async def test_udp_from_a_chosen_port_without_waiting(guests):
    with guests.b.capture("eth0", "rx") as capture:
        result = await guests.a.send_udp("10.0.0.2", 9999, b"x", sport=4000)
        frames = await take(capture, 2)                     # ARP request, then the datagram
    assert not result.replied and result.sport == 4000
    assert ethertype(frames[-1].data) == ETH_P_IP
    assert guests.b.stack("eth0").counters["udp_port_unreachable"] == 1


async def test_udp_wait_reply_times_out_without_a_listener(guests):
    result = await guests.a.send_udp("10.0.0.2", 9999, b"x", wait_reply=True, timeout=0.2)
    assert not result.replied


async def test_udp_refuses_bad_ports(guests):
    for kwargs in ({"dport": 0}, {"dport": 70000}, {"dport": 7, "sport": 70000}):
        with pytest.raises(XenError) as err:
            await guests.a.send_udp("10.0.0.2", payload=b"", **kwargs)
        assert err.value.errno == errno.EINVAL


# -- inject -----------------------------------------------------------------------------

def echo_request_frame(seq: int = 1) -> bytes:
    message = IcmpMessage.echo(ICMP_ECHO, 0x4242, seq, b"injected").build()
    packet = Ipv4Header(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IPPROTO_ICMP).build(message)
    return EthernetFrame(MAC_B, MAC_A, ETH_P_IP, packet).build()


async def test_inject_counts_accepted_and_bad_length(guests):
    before = guests.nic_a.stats()["tx_packets"]
    with guests.a.capture("eth0", "rx") as capture:
        result = guests.a.inject([echo_request_frame(1), b"short", bytes(1515),
                                  echo_request_frame(2)], "eth0")
        assert guests.nic_a.stats()["tx_packets"] == before + 2
        arrived = await take(capture, 3)       # the peer asks who we are, then answers
    assert (result.accepted, result.dropped, result.drops) == (2, 2, {"bad_length": 2})
    replies = [f for f in arrived if ethertype(f.data) == ETH_P_IP]
    # The peer's stack answered the injected requests as if our stack had sent them.
    assert [icmp_type(f.data) for f in replies] == [ICMP_ECHOREPLY] * 2


async def test_inject_reports_the_devices_own_drops(guests):
    guests.nic_a.up = False
    result = guests.a.inject([echo_request_frame()] * 3)
    assert (result.accepted, result.dropped, result.drops) == (0, 3, {"link_down": 3})


async def test_inject_to_an_unknown_interface_names_the_known_ones(guests):
    with pytest.raises(XenError) as err:
        guests.a.inject([echo_request_frame()], "eth7")
    assert err.value.errno == errno.ENOENT and "eth0" in err.value.message


# -- capture ----------------------------------------------------------------------------

async def test_capture_sees_both_directions(guests):
    with guests.a.capture() as capture:
        await guests.a.ping("10.0.0.2", count=1, timeout=5)
        frames = await take(capture, 4)      # ARP request, ARP reply, echo, echo reply
        assert guests.a.active_captures("eth0") == 1
    assert [f.direction for f in frames] == ["tx", "rx", "tx", "rx"]
    assert {f.interface for f in frames} == {"eth0"}
    assert guests.a.active_captures("eth0") == 0


async def test_capture_keeps_the_newest_when_the_reader_lags(guests):
    with guests.a.capture("eth0", "tx", limit=2) as capture:
        guests.a.inject([echo_request_frame(seq) for seq in range(1, 6)])
        frames = await take(capture, 2)
        assert capture.dropped == 3
    assert frames[0].data == echo_request_frame(4) and frames[1].data == echo_request_frame(5)


async def test_capture_refuses_an_unknown_direction(guests):
    with pytest.raises(XenError) as err:
        guests.a.capture("eth0", "sideways")
    assert err.value.errno == errno.EINVAL


# -- interfaces coming and going ---------------------------------------------------------

async def test_interface_going_away_ends_its_users(guests):
    with guests.a.capture("eth0") as capture:
        ping = asyncio.create_task(guests.a.ping("10.0.0.2", count=1000, interval=0.01, timeout=5))
        await take(capture, 4)               # the ping is under way
        guests.kernel_a.unplug("eth0")
        result = await asyncio.wait_for(ping, 5)
        with pytest.raises(XenError) as gone:
            await asyncio.wait_for(take(capture, 10_000), 5)
    assert result.error == "interface eth0 went away" and result.transmitted < 1000
    assert gone.value.errno == errno.ENOENT
    assert guests.a.interfaces() == []
    assert guests.nic_a.receiver is None
    with pytest.raises(XenError) as err:
        await guests.a.ping("10.0.0.2")
    assert err.value.errno == errno.EADDRNOTAVAIL


async def test_interface_appearing_gets_a_stack(guests):
    nic = FakeNic("eth1", bytes.fromhex("00163e000011"))
    peer = FakeNic("eth1", bytes.fromhex("00163e000012"))
    cable(nic, peer)
    guests.kernel_a.plug(nic)
    guests.kernel_b.plug(peer)
    assert [d.name for d in guests.a.interfaces()] == ["eth0", "eth1"]
    # Routed by subnet: no interface named.
    result = await guests.a.ping("10.1.0.2", count=1, timeout=5)
    assert result.received == 1
    assert nic.stats()["tx_packets"] >= 2


async def test_interface_without_address_still_injects_captures_and_counts():
    bare, peer = FakeNic("eth0", MAC_A), FakeNic("eth0", MAC_B)
    cable(bare, peer)
    net, other = GuestNetwork(), GuestNetwork(cmdline=ip_cmdline(eth0="10.0.0.2/24"))
    net.attach(FakeKernel(bare))
    other.attach(FakeKernel(peer))
    try:
        with net.capture() as capture:
            result = net.inject([echo_request_frame()])
            # Ours, then the peer's gratuitous ARP and its question about our source.
            frames = await take(capture, 3)
        assert result.accepted == 1
        assert [f.direction for f in frames] == ["tx", "rx", "rx"]
        assert net.unaddressed("eth0") == 2
        assert not net.has_stack()
        with pytest.raises(XenError) as err:
            await net.send_udp("10.0.0.2", 7, b"x")
        assert err.value.errno == errno.EADDRNOTAVAIL
    finally:
        net.close()
        other.close()


async def test_backend_vifs_are_listed_but_left_to_netback():
    vif = FakeNic("vif1.0", MAC_A)
    bridge_side = []
    vif.receiver = bridge_side.extend
    kernel = FakeKernel(vifs=(vif,))
    net = GuestNetwork()
    net.attach(kernel)
    assert [d.name for d in net.interfaces()] == ["vif1.0"]
    assert net.stack("vif1.0") is None and not net.has_stack()
    assert vif.receiver == bridge_side.extend
    net.close()
    assert vif.receiver == bridge_side.extend


# -- time -------------------------------------------------------------------------------

async def test_the_stack_runs_on_the_injected_clock():
    guests = Guests(clock=lambda: time.monotonic() + 1e6)
    try:
        result = await guests.a.ping("10.0.0.2", count=1, timeout=5)
        assert result.received == 1 and 0 <= result.rtts[0][1] < 1e6
        (expires,) = [until for _, until in guests.a.stack("eth0").arp_cache().values()]
        assert expires > 1e6
    finally:
        guests.close()


async def test_an_idle_stack_is_not_polled(guests):
    await guests.a.ping("10.0.0.2", count=1, timeout=5)    # leaves an ARP entry to expire in 60 s
    await asyncio.sleep(0.1)      # past the resolved request's retry time, which may still wake it once
    stack = guests.a.stack("eth0")
    polls = []
    real_poll = stack.poll
    stack.poll = lambda: polls.append(1) or real_poll()
    await asyncio.sleep(0.1)
    assert polls == []


# -- perf (iperf -u) ------------------------------------------------------------------

async def test_perf_between_two_guests_counts_every_datagram(guests):
    reports = guests.b.perf_serve(port=5001, interval=0.1, timeout=2.0)
    assert await reports.__anext__() is None                # listening
    received = asyncio.ensure_future(_collect(reports))
    sent = [r async for r in guests.a.perf_send("10.0.0.2", 5001, rate=400_000, length=100,
                                                duration=0.3, interval=0.1)]
    got = await asyncio.wait_for(received, 5)
    assert sent[-1].total and got[-1].total
    offered = sent[-1].datagrams
    assert 0 < offered <= 150 and sent[-1].bytes == offered * 100    # 500 datagrams/s for 0.3 s
    assert got[-1].datagrams + got[-1].lost == offered and got[-1].datagrams > 0
    assert sum(r.datagrams for r in sent[:-1]) == offered


async def test_perf_serve_with_no_sender_ends_after_its_timeout_with_nothing(guests):
    reports = [r async for r in guests.b.perf_serve(port=5001, interval=0.05, timeout=0.2)]
    assert reports[0] is None
    assert reports[-1].total and reports[-1].datagrams == 0


async def test_perf_send_with_no_route_is_an_error_not_a_stream_of_losses(guests):
    with pytest.raises(XenError) as err:
        async for _ in guests.a.perf_send("192.0.2.1", duration=0.1):
            pass
    assert err.value.errno == errno.ENETUNREACH


async def _collect(reports) -> list:
    return [r async for r in reports]


# -- where the address comes from -------------------------------------------------------

def test_the_address_is_the_command_lines_never_the_devices():
    # A device that carries an address of its own (as netfront once copied
    # the backend's ip node) does not address the guest: ip= does.
    nic = FakeNic("eth0", MAC_A)
    nic.ip = "10.0.0.9/24"
    net = GuestNetwork(cmdline=ip_cmdline(eth0="10.0.0.1/24"))
    net.attach(FakeKernel(nic))
    try:
        assert str(net.stack("eth0").config.address) == "10.0.0.1/24"
    finally:
        net.close()


@pytest.mark.parametrize("cmdline, why", [
    ("", "the kernel command line has no ip= for it (a vif's ip= is Domain-0's); give "
         "ip=ADDR::GW:MASK:HOST:eth0:off in extra="),
    ("ip=dhcp", "its ip= on the kernel command line gives no address (autoconfiguration dhcp "
                "is not emulated); give ip=ADDR::GW:MASK:HOST:eth0:off"),
    ("ip=10.0.0.1:::255.255.255.0::eth1:off", "the kernel command line has no ip= for it (a "
     "vif's ip= is Domain-0's); give ip=ADDR::GW:MASK:HOST:eth0:off in extra="),
])
def test_an_interface_the_command_line_gives_no_address_says_why(cmdline, why, caplog):
    nic = FakeNic("eth0", MAC_A)
    nic.ip = "10.0.0.9/24"
    net = GuestNetwork(cmdline=cmdline)
    net.attach(FakeKernel(nic))
    try:
        assert net.stack("eth0") is None and not net.has_stack()
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == \
            [f"eth0: no IPv4 address: {why}"]
    finally:
        net.close()


async def test_ping_tells_of_each_reply_as_it_comes(guests):
    """As ping(8) prints each reply on arrival (the console's ping does)."""
    heard = []
    result = await guests.a.ping("10.0.0.2", count=3, interval=0.01, timeout=5,
                                 on_reply=lambda seq, rtt: heard.append((seq, rtt)))
    assert heard == result.rtts and [seq for seq, _ in heard] == [1, 2, 3]
