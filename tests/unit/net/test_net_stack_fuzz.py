"""Whatever arrives on the wire, receive() neither raises nor loses count of it."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlab.net.arp import ArpPacket
from xenlab.net.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame
from xenlab.net.icmp import IcmpMessage
from xenlab.net.ipv4 import IPPROTO_ICMP, IPPROTO_UDP, Ipv4Header
from xenlab.net.stack import RX_DROP_REASONS, IpStack, StackConfig
from xenlab.net.udp import UdpPacket
from xenlab.testing import ManualClock

MAC = bytes.fromhex("00163e000002")
ME = IPv4Address("10.0.0.3")
PEER = IPv4Address("10.0.0.2")


def fresh_stack() -> tuple[IpStack, ManualClock]:
    clock = ManualClock(0.0)
    config = StackConfig(mac=MAC, address=IPv4Interface("10.0.0.3/24"),
                         gateway=IPv4Address("10.0.0.1"), mtu=1500)
    stack = IpStack(config, clock)
    stack.bind_udp(9000)
    return stack, clock


def check_accounting(stack: IpStack, replies: list[bytes]) -> None:
    counters = stack.counters
    drops = sum(counters[reason] for reason in RX_DROP_REASONS)
    assert counters["rx_frames"] + counters["rx_loopback"] == counters["rx_delivered"] + drops
    for frame in replies:
        eth = EthernetFrame.parse(frame)
        assert eth.src == MAC and len(frame) <= 1514


addresses = st.sampled_from([ME, PEER, IPv4Address("10.0.0.255"), IPv4Address("255.255.255.255"),
                             IPv4Address("10.0.0.1"), IPv4Address("192.0.2.1"),
                             IPv4Address("0.0.0.0"), IPv4Address("224.0.0.1")])
PEER_MAC = bytes.fromhex("00163e000001")
OTHERS = [BROADCAST, bytes.fromhex("01005e000001"), bytes.fromhex("00163e0000aa"), bytes(6)]
# Mostly the plausible case, so that frames get past Ethernet and into the upper layers.
dst_macs = st.sampled_from([MAC] * 6 + OTHERS)
src_macs = st.sampled_from([PEER_MAC] * 6 + OTHERS + [MAC])
macs = st.sampled_from([MAC, PEER_MAC] + OTHERS)
src_addresses = st.one_of(st.just(PEER), addresses)
dst_addresses = st.one_of(st.just(ME), addresses)
ports = st.sampled_from([0, 7, 9000, 9999, 19])


@st.composite
def l4(draw, src, dst):
    kind = draw(st.sampled_from(["icmp", "udp", "raw"]))
    if kind == "icmp":
        message = IcmpMessage(draw(st.sampled_from([0, 3, 8, 11, 13])), draw(st.integers(0, 255)),
                              draw(st.integers(0, 2**32 - 1)), draw(st.binary(max_size=64)))
        return IPPROTO_ICMP, message.build()
    if kind == "udp":
        datagram = UdpPacket(draw(ports), draw(ports), draw(st.binary(max_size=64)))
        return IPPROTO_UDP, datagram.build(src, dst)
    return draw(st.integers(0, 255)), draw(st.binary(max_size=64))


@st.composite
def ip_frames(draw):
    src, dst = draw(src_addresses), draw(dst_addresses)
    proto, payload = draw(l4(src, dst))
    header = Ipv4Header(src, dst, proto, ttl=draw(st.sampled_from([64, 64, 1, 0])),
                        flags_frag=draw(st.sampled_from([0, 0, 0x4000, 0x2000, 1])),
                        options=draw(st.sampled_from([b"", b"\x01\x01\x01\x00"])))
    return EthernetFrame(draw(dst_macs), draw(src_macs), ETH_P_IP, header.build(payload)).build()


@st.composite
def arp_frames(draw):
    packet = ArpPacket(draw(st.sampled_from([1, 2, 3])), draw(src_macs), draw(src_addresses),
                       draw(macs), draw(dst_addresses))
    return EthernetFrame(draw(dst_macs), draw(src_macs), ETH_P_ARP, packet.build()).build()


@st.composite
def damaged(draw, frames):
    """A well-formed frame, then maybe cut short, maybe one byte flipped."""
    frame = bytearray(draw(frames))
    if draw(st.integers(0, 3)) == 0 and frame:
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] ^= draw(st.integers(1, 255))
    if draw(st.integers(0, 3)) == 0:
        frame = frame[:draw(st.integers(0, len(frame)))]
    return bytes(frame)


any_frame = st.one_of(st.binary(max_size=1600), damaged(ip_frames()), damaged(arp_frames()),
                      st.binary(min_size=1515, max_size=1600))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_frame)
def test_receive_never_raises_and_counts_every_frame(frame):
    stack, _ = fresh_stack()
    replies = stack.receive(frame)
    check_accounting(stack, replies)
    assert stack.counters["rx_frames"] == 1


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(any_frame, st.floats(0, 30)), max_size=20))
def test_frames_and_time_in_any_order(steps):
    stack, clock = fresh_stack()
    for frame, dt in steps:
        clock.now += dt
        replies = stack.receive(frame) + stack.poll()
        check_accounting(stack, replies)
        deadline = stack.next_deadline()
        assert deadline is None or deadline > clock.now
    assert stack.counters["rx_frames"] == len(steps)
