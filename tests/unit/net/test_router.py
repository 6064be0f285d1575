"""IPv4 forwarding: two subnets, a router with a stack on each, hosts with a
default gateway. Frames travel on list-based segments; the clock is the
test's."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from xenlab.net.ethernet import ETH_P_IP, EthernetFrame
from xenlab.net.icmp import (ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY, ICMP_EXC_TTL,
                             ICMP_FRAG_NEEDED, ICMP_HOST_UNREACH, ICMP_NET_UNREACH,
                             ICMP_TIME_EXCEEDED, IcmpMessage)
from xenlab.net.ipv4 import IP_DF, IPPROTO_ICMP, Ipv4Header
from xenlab.net.route import DEFAULT, Route
from xenlab.net.router import Drop, Forward, Reject, Router, decide, decrement_ttl
from xenlab.net.stack import EchoReply, IcmpError, IpStack, StackConfig


MAC_A = bytes.fromhex("00163e000a01")
MAC_B = bytes.fromhex("00163e000b02")
MAC_R0 = bytes.fromhex("00163e0000f0")
MAC_R1 = bytes.fromhex("00163e0000f1")
A, B = IPv4Address("10.0.1.2"), IPv4Address("10.0.2.2")
R0, R1 = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1")


def make_stack(clock, mac, address, gateway=None, **options):
    config = StackConfig(mac=mac, address=IPv4Interface(address),
                         gateway=IPv4Address(gateway) if gateway else None, **options)
    return IpStack(config, clock)


class Net:
    """Host a on 10.0.1.0/24 and host b on 10.0.2.0/24, each with the router
    as its gateway; the router's eth0 and eth1 on the two segments."""

    def __init__(self, clock, forwarding=True, mtu1=1500):
        self.a = make_stack(clock, MAC_A, "10.0.1.2/24", "10.0.1.1")
        self.b = make_stack(clock, MAC_B, "10.0.2.2/24", "10.0.2.1", mtu=mtu1)
        self.r0 = make_stack(clock, MAC_R0, "10.0.1.1/24", forwarding=forwarding)
        self.r1 = make_stack(clock, MAC_R1, "10.0.2.1/24", forwarding=forwarding, mtu=mtu1)
        self.router = Router(forwarding)
        self.router.add("eth0", self.r0)
        self.router.add("eth1", self.r1)
        self.segments = {"eth0": [self.a, self.r0], "eth1": [self.b, self.r1]}
        self.log: list[tuple[str, bytes]] = []     # (segment, frame)

    def segment_of(self, stack):
        return next(name for name, members in self.segments.items() if stack in members)

    def carry(self, sender, frames):
        queue = [(self.segment_of(sender), sender, f) for f in frames]
        while queue:
            segment, src, frame = queue.pop(0)
            self.log.append((segment, frame))
            for peer in self.segments[segment]:
                if peer is src:
                    continue
                queue += [(segment, peer, f) for f in peer.receive(frame)]
                if peer in (self.r0, self.r1):
                    name = "eth0" if peer is self.r0 else "eth1"
                    for out, sent in self.router.forward(name).items():
                        stack = self.r0 if out == "eth0" else self.r1
                        queue += [(out, stack, f) for f in sent]

    def ip_on(self, segment):
        out = []
        for seg, frame in self.log:
            eth = EthernetFrame.parse(frame)
            if seg == segment and eth.ethertype == ETH_P_IP:
                out.append(Ipv4Header.parse(eth.payload))
        return out


def icmp_of(payload: bytes) -> IcmpMessage:
    return IcmpMessage.parse(payload)


def test_ping_crosses_the_router_with_the_ttl_lowered_once_per_hop(clock):
    net = Net(clock)
    net.carry(net.a, net.a.ping(B, 7, 1, b"hello"))
    replies = [e for e in net.a.pop_events() if isinstance(e, EchoReply)]
    assert [(r.src, r.seq, r.payload) for r in replies] == [(B, 1, b"hello")]
    request_on_0 = [h for h, p in net.ip_on("eth0") if icmp_of(p).type == ICMP_ECHO]
    request_on_1 = [h for h, p in net.ip_on("eth1") if icmp_of(p).type == ICMP_ECHO]
    reply_on_0 = [h for h, p in net.ip_on("eth0") if icmp_of(p).type == ICMP_ECHOREPLY]
    assert [h.ttl for h in request_on_0] == [64] and [h.ttl for h in request_on_1] == [63]
    assert [h.ttl for h in reply_on_0] == [63]
    assert (request_on_1[0].src, request_on_1[0].dst) == (A, B)       # no NAT, the source stays
    assert net.router.counters["forwarded"] == 2
    assert net.r0.counters["rx_forwarded"] == 1 and net.r1.counters["rx_forwarded"] == 1


def test_ttl_1_gets_time_exceeded_from_the_router_quoting_the_packet(clock):
    net = Net(clock)
    net.carry(net.a, net.a.ping(B, 7, 1, b"x", ttl=1))
    errors = [e for e in net.a.pop_events() if isinstance(e, IcmpError)]
    assert [(e.src, e.type, e.code) for e in errors] == [(R0, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL)]
    header = Ipv4Header.parse(errors[0].quoted)[0]
    assert (header.src, header.dst, header.ttl) == (A, B, 1)
    assert net.ip_on("eth1") == []                                # nothing went past the router
    assert net.router.counters["ttl_exceeded"] == 1


def test_ttl_2_reaches_the_far_host_with_ttl_1(clock):
    net = Net(clock)
    net.carry(net.a, net.a.ping(B, 7, 1, b"x", ttl=2))
    assert [h.ttl for h, _ in net.ip_on("eth1") if h.src == A] == [1]
    assert any(isinstance(e, EchoReply) for e in net.a.pop_events())


def test_no_route_gets_net_unreachable_from_the_router(clock):
    net = Net(clock)
    net.carry(net.a, net.a.ping("192.0.2.9", 7, 1, b"x"))
    errors = [e for e in net.a.pop_events() if isinstance(e, IcmpError)]
    assert [(e.src, e.type, e.code) for e in errors] == [(R0, ICMP_DEST_UNREACH, ICMP_NET_UNREACH)]
    assert net.router.counters["net_unreachable"] == 1


def test_a_host_does_not_forward(clock):
    net = Net(clock, forwarding=False)
    net.carry(net.a, net.a.ping(B, 7, 1, b"x"))
    assert net.ip_on("eth1") == []
    assert net.r0.counters["ip_not_for_us"] == 1 and net.r0.counters["rx_forwarded"] == 0
    assert not any(isinstance(e, (EchoReply, IcmpError)) for e in net.a.pop_events())


def test_the_routers_other_address_answers_on_either_interface(clock):
    """Weak host model: 10.0.2.1 answers a ping that came in by eth0, from 10.0.2.1."""
    net = Net(clock)
    net.carry(net.a, net.a.ping(R1, 7, 1, b"x"))
    replies = [e for e in net.a.pop_events() if isinstance(e, EchoReply)]
    assert [r.src for r in replies] == [R1]
    assert net.ip_on("eth1") == [] and net.router.counters["forwarded"] == 0


def test_host_unreachable_goes_back_by_the_route_to_the_source_not_out_of_the_failed_interface(clock):
    """It went out of eth1, whose stack has no route to a: it was counted
    no_route and a never heard of it."""
    net = Net(clock)
    net.segments["eth1"] = [net.r1]                       # b is gone
    net.carry(net.a, net.a.ping(B, 7, 1, b"x"))
    for _ in range(5):
        clock.advance(1.0)
        frames = net.r1.poll()
        net.carry(net.r1, frames)
        for out, sent in net.router.forward("eth1").items():
            net.carry(net.r0 if out == "eth0" else net.r1, sent)
    errors = [e for e in net.a.pop_events() if isinstance(e, IcmpError)]
    # From eth0's address: the interface whose route leads back to a, as Linux's icmp_send picks it.
    assert [(e.src, e.type, e.code) for e in errors] == [(R0, ICMP_DEST_UNREACH, ICMP_HOST_UNREACH)]
    assert net.router.counters["host_unreachable"] == 1 and net.r1.counters["arp_unresolved"] == 1


def test_df_over_the_next_hops_mtu_gets_frag_needed_with_the_mtu(clock):
    net = Net(clock, mtu1=576)
    net.carry(net.a, net.a.send_ip(B, 253, b"\0" * 1000))        # no DF: dropped, not fragmented
    assert net.router.counters["too_big"] == 1
    packet = Ipv4Header(A, B, IPPROTO_ICMP, flags_frag=IP_DF).build(
        IcmpMessage.echo(ICMP_ECHO, 1, 1, b"\0" * 1000).build())
    action = decide(packet, net.router.lookup, lambda name: 576)
    assert action == Reject("frag_needed", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 576)


def test_decide_checks_the_route_before_the_ttl_as_linux(clock):
    net = Net(clock)
    packet = Ipv4Header(A, IPv4Address("192.0.2.1"), 253, ttl=1).build(b"")
    assert decide(packet, net.router.lookup, lambda name: 1500).outcome == "net_unreachable"
    assert decide(b"\x45junk", net.router.lookup, lambda name: 1500) == Drop("malformed")


def test_decide_forwards_to_the_gateway_of_the_best_route(clock):
    net = Net(clock)
    net.r1.routes.add(Route(IPv4Network("172.16.0.0/12"), IPv4Address("10.0.2.9")))
    net.r0.routes.add(Route(DEFAULT, IPv4Address("10.0.1.254")))
    packet = Ipv4Header(A, IPv4Address("172.16.5.5"), 253, ttl=9).build(b"")
    action = decide(packet, net.router.lookup, lambda name: 1500)
    assert isinstance(action, Forward)
    assert (action.interface, action.hop) == ("eth1", IPv4Address("10.0.2.9"))
    assert Ipv4Header.parse(action.packet)[0].ttl == 8        # and its checksum verifies
    far = Ipv4Header(A, IPv4Address("8.8.8.8"), 253).build(b"")
    assert decide(far, net.router.lookup, lambda name: 1500).hop == IPv4Address("10.0.1.254")


@pytest.mark.parametrize("ttl", [2, 64, 255])
def test_decrement_ttl_keeps_the_header_valid(ttl):
    packet = Ipv4Header(A, B, 17, ttl=ttl, options=b"\x01\x01\x01\x00").build(b"payload")
    header, payload = Ipv4Header.parse(decrement_ttl(packet))
    assert (header.ttl, payload, header.options) == (ttl - 1, b"payload", b"\x01\x01\x01\x00")


def test_icmp_errors_to_one_source_are_limited_as_linuxs_icmp_ratelimit(clock):
    """A burst of 6 to one destination, then one a second (icmp_ratelimit,
    XRLIM_BURST_FACTOR): 80 expiring pings from a earn a 6 errors."""
    net = Net(clock)
    for seq in range(80):
        net.carry(net.a, net.a.ping(B, 7, seq, b"x", ttl=1))
    errors = [e for e in net.a.pop_events() if isinstance(e, IcmpError)]
    assert len(errors) == 6
    assert net.router.counters["ttl_exceeded"] == 80
    assert (net.r0.counters["icmp_ratelimited_host"], net.r0.counters["icmp_ratelimited"]) == (74, 0)
    clock.advance(1.0)
    net.carry(net.a, net.a.ping(B, 7, 99, b"x", ttl=1))
    net.carry(net.a, net.a.ping(B, 7, 100, b"x", ttl=1))
    assert len([e for e in net.a.pop_events() if isinstance(e, IcmpError)]) == 1


def test_icmp_errors_to_many_sources_are_limited_by_the_hosts_bucket(clock):
    """50 at once at most (icmp_msgs_burst), whoever they go to."""
    net = Net(clock)
    for host in range(10, 90):
        src = IPv4Address(f"10.0.1.{host}")
        packet = Ipv4Header(src, B, 17, ttl=1).build(b"\0" * 8)
        net.r0.receive(EthernetFrame(MAC_R0, MAC_A, ETH_P_IP, packet).build())
        net.router.forward("eth0")
    assert net.router.counters["ttl_exceeded"] == 80
    assert (net.r0.counters["icmp_ratelimited"], net.r0.counters["icmp_ratelimited_host"]) == (30, 0)


def test_frag_needed_is_never_rate_limited(clock):
    net = Net(clock, mtu1=576)
    for seq in range(20):
        packet = Ipv4Header(A, B, IPPROTO_ICMP, flags_frag=IP_DF, ident=seq).build(
            IcmpMessage.echo(ICMP_ECHO, 1, seq, b"\0" * 1000).build())
        net.r0.receive(EthernetFrame(MAC_R0, MAC_A, ETH_P_IP, packet).build())
        net.router.forward("eth0")
    assert net.router.counters["frag_needed"] == 20
    assert net.r0.counters["icmp_ratelimited_host"] == net.r0.counters["icmp_ratelimited"] == 0


def test_removing_an_interface_forgets_its_address_and_routes(clock):
    net = Net(clock)
    assert R1 in net.r0.local_addresses
    net.router.remove("eth1")
    assert net.r0.local_addresses == frozenset()
    assert net.router.lookup(B) is None


def test_outcomes_are_counted_by_the_interface_the_packets_came_in_by(clock):
    net = Net(clock)
    net.carry(net.a, net.a.ping(B, 7, 1, b"x"))
    net.carry(net.a, net.a.ping(B, 7, 2, b"x", ttl=1))
    assert net.router.by_interface["eth0"]["forwarded"] == 1
    assert net.router.by_interface["eth0"]["ttl_exceeded"] == 1
    assert net.router.by_interface["eth1"]["forwarded"] == 1     # the echo reply


def test_a_directed_broadcast_to_the_far_subnet_is_not_forwarded(clock):
    """10.0.2.255 from a: a broadcast to the router itself, as Linux takes it
    (bc_forwarding off); the router had ARPed for 10.0.2.255 on eth1."""
    net = Net(clock)
    net.carry(net.a, net.a.ping("10.0.2.255", 7, 1, b"x"))
    assert net.ip_on("eth1") == [] and not any(
        eth.ethertype != ETH_P_IP for seg, frame in net.log if seg == "eth1"
        for eth in [EthernetFrame.parse(frame)])
    assert net.router.counters["forwarded"] == 0
    assert net.r0.counters["icmp_broadcast"] == 1           # icmp_echo_ignore_broadcasts


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80))
def test_decide_takes_any_bytes_without_raising(data):
    router = Router(True)
    router.add("eth0", make_stack(lambda: 0.0, MAC_R0, "10.0.1.1/24", forwarding=True))
    action = decide(data, router.lookup, lambda name: 1500)
    if isinstance(action, Forward):
        assert Ipv4Header.parse(action.packet)[0].ttl == Ipv4Header.parse(data)[0].ttl - 1


@settings(max_examples=300, deadline=None)
@given(ttl=st.integers(0, 255), dst=st.integers(0, 2**32 - 1), ident=st.integers(0, 0xFFFF),
       payload=st.binary(max_size=64))
def test_a_forwarded_packet_differs_only_in_its_ttl_and_checksum(ttl, dst, ident, payload):
    router = Router(True)
    router.add("eth0", make_stack(lambda: 0.0, MAC_R0, "10.0.1.1/24", "10.0.1.254", forwarding=True))
    packet = Ipv4Header(A, IPv4Address(dst), 17, ttl=ttl, ident=ident).build(payload)
    action = decide(packet, router.lookup, lambda name: 1500)
    if ttl <= 1:
        assert action.outcome == "ttl_exceeded"
        return
    assert isinstance(action, Forward)
    out = action.packet
    assert out[8] == ttl - 1 and out[:8] == packet[:8] and out[12:] == packet[12:]
    assert Ipv4Header.parse(out)[1] == payload
