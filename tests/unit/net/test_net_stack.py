"""The guest IP stack: two stacks back to back on a list-based wire."""
from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Interface

import pytest

from xenlab.net.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket
from xenlab.net.ethernet import BROADCAST, ETH_P_ARP, ETH_P_IP, EthernetFrame
from xenlab.net.icmp import ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHOREPLY, IcmpMessage
from xenlab.net.ipv4 import IP_MF, IPPROTO_ICMP, IPPROTO_UDP, Ipv4Header
from xenlab.net.stack import (AddressConflict, ArpFailed, ArpResolved, EchoReply, IcmpError,
                              StackConfig, UdpDatagram)
from xenlab.net.udp import UdpPacket

MAC_A = bytes.fromhex("00163e000001")
MAC_B = bytes.fromhex("00163e000002")
MAC_GW = bytes.fromhex("00163e0000fe")
MAC_X = bytes.fromhex("00163e0000aa")
A = IPv4Address("10.0.0.2")
B = IPv4Address("10.0.0.3")
GW = IPv4Address("10.0.0.1")


def arp_of(frame: bytes) -> ArpPacket:
    eth = EthernetFrame.parse(frame)
    assert eth.ethertype == ETH_P_ARP
    return ArpPacket.parse(eth.payload)


def ip_of(frame: bytes) -> tuple[EthernetFrame, Ipv4Header, bytes]:
    eth = EthernetFrame.parse(frame)
    assert eth.ethertype == ETH_P_IP
    header, payload = Ipv4Header.parse(eth.payload)
    return eth, header, payload


def ip_frame(dst_mac: bytes, src: IPv4Address, dst: IPv4Address, proto: int, payload: bytes,
             src_mac: bytes = MAC_X, **header) -> bytes:
    packet = Ipv4Header(src, dst, proto, **header).build(payload)
    return EthernetFrame(dst_mac, src_mac, ETH_P_IP, packet).build()


def udp_frame(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes,
              dst_mac: bytes = MAC_B, src_mac: bytes = MAC_X) -> bytes:
    datagram = UdpPacket(sport, dport, payload).build(src, dst)
    return ip_frame(dst_mac, src, dst, IPPROTO_UDP, datagram, src_mac)


def echo_frame(src: IPv4Address, dst: IPv4Address, dst_mac: bytes = MAC_B, **header) -> bytes:
    message = IcmpMessage.echo(ICMP_ECHO, 1, 1, b"data").build()
    return ip_frame(dst_mac, src, dst, IPPROTO_ICMP, message, **header)


def teach(stack, ip: IPv4Address, mac: bytes) -> None:
    """Put ip -> mac in the stack's cache with an ARP request addressed to it."""
    request = ArpPacket.request(mac, ip, stack.ip).build()
    stack.receive(EthernetFrame(BROADCAST, mac, ETH_P_ARP, request).build())


# link up and ARP --------------------------------------------------------------

def test_link_up_sends_one_gratuitous_arp_request(pair):
    a, _, _ = pair
    frames = a.link_up()
    assert len(frames) == 1
    eth = EthernetFrame.parse(frames[0])
    assert (eth.dst, eth.src) == (BROADCAST, MAC_A)
    announce = arp_of(frames[0])
    assert announce.op == ARPOP_REQUEST
    assert announce.spa == announce.tpa == A
    assert (announce.sha, announce.tha) == (MAC_A, bytes(6))


def test_gratuitous_arp_updates_only_an_existing_entry(pair, stack_factory):
    a, b, wire = pair
    wire.carry(a, a.link_up())
    assert b.arp_cache() == {}          # unsolicited: not learned
    teach(b, A, MAC_X)                  # b believes A is at MAC_X
    b.pop_events()
    wire.carry(a, a.link_up())          # A announces its real MAC
    assert b.arp_cache()[A][0] == MAC_A
    assert b.pop_events() == [ArpResolved(A, MAC_A)]


def test_arp_request_is_answered_and_sender_learned(pair, clock):
    a, b, _ = pair
    request = ArpPacket.request(MAC_A, A, B).build()
    replies = b.receive(EthernetFrame(BROADCAST, MAC_A, ETH_P_ARP, request).build())
    assert len(replies) == 1
    eth = EthernetFrame.parse(replies[0])
    reply = arp_of(replies[0])
    assert (eth.dst, eth.src) == (MAC_A, MAC_B)
    assert (reply.op, reply.sha, reply.spa, reply.tha, reply.tpa) == (ARPOP_REPLY, MAC_B, B, MAC_A, A)
    assert b.arp_cache() == {A: (MAC_A, clock.now + 60.0)}
    assert b.pop_events() == [ArpResolved(A, MAC_A)]


def test_a_refreshed_neighbour_is_reported_once_and_a_moved_one_again(pair):
    _, b, _ = pair
    teach(b, A, MAC_A)
    teach(b, A, MAC_A)
    assert b.pop_events() == [ArpResolved(A, MAC_A)]
    teach(b, A, MAC_X)
    assert b.pop_events() == [ArpResolved(A, MAC_X)]


def test_arp_request_for_another_address_is_not_answered(pair):
    _, b, _ = pair
    request = ArpPacket.request(MAC_A, A, IPv4Address("10.0.0.99")).build()
    assert b.receive(EthernetFrame(BROADCAST, MAC_A, ETH_P_ARP, request).build()) == []
    assert b.arp_cache() == {} and b.counters["rx_delivered"] == 1


def test_someone_else_claiming_our_address_is_reported(pair):
    _, b, _ = pair
    claim = ArpPacket.request(MAC_X, B, B).build()
    assert b.receive(EthernetFrame(BROADCAST, MAC_X, ETH_P_ARP, claim).build()) == []
    assert b.pop_events() == [AddressConflict(B, MAC_X)]
    assert b.counters["arp_conflict"] == 1


def test_arp_table_is_bounded(stack_factory, clock):
    b = stack_factory(MAC_B, "10.0.0.3/16")
    first = IPv4Address("10.0.100.0")
    for i in range(1025):
        clock.advance(0.001)
        teach(b, first + i, MAC_X)
    cache = b.arp_cache()
    assert len(cache) == 1024 and first not in cache and first + 1024 in cache


# ping across the wire ---------------------------------------------------------

def test_ping_waits_for_arp_then_goes_through(pair, clock):
    a, b, wire = pair
    out = a.ping(B, ident=0x42, seq=1, payload=b"hello")
    assert len(out) == 1 and arp_of(out[0]).tpa == B      # only the ARP request so far
    assert a.arp_pending() == {B: 1}
    clock.advance(0.25)
    wire.carry(a, out)
    kinds = [EthernetFrame.parse(f).ethertype for _, f in wire.log]
    assert kinds == [ETH_P_ARP, ETH_P_ARP, ETH_P_IP, ETH_P_IP]   # request, reply, echo, echo reply
    assert a.pop_events() == [ArpResolved(B, MAC_B), EchoReply(B, 0x42, 1, b"hello", clock.now)]
    assert a.arp_cache()[B][0] == MAC_B and b.arp_cache()[A][0] == MAC_A
    assert a.arp_pending() == {}

    _, header, payload = ip_of(wire.frames_from(b)[-1])
    reply = IcmpMessage.parse(payload)
    assert (header.src, header.dst, header.ttl) == (B, A, 64)
    assert (reply.type, reply.ident, reply.seq, reply.payload) == (ICMP_ECHOREPLY, 0x42, 1, b"hello")


def test_packets_queued_before_resolution_are_all_flushed(pair):
    a, b, wire = pair
    out = []
    for seq in range(3):
        out += a.ping(B, 1, seq, b"x")
    assert len(out) == 1                  # one ARP request for the three packets
    wire.carry(a, out)
    assert [e.seq for e in a.pop_events() if isinstance(e, EchoReply)] == [0, 1, 2]


def test_a_full_arp_queue_drops_the_oldest(clock, stack_factory, wire_factory):
    a = stack_factory(MAC_A, "10.0.0.2/24", arp_queue_limit=2)
    b = stack_factory(MAC_B, "10.0.0.3/24")
    out = []
    for seq in range(3):
        out += a.ping(B, 1, seq, b"x")
    assert a.counters["arp_queue_full"] == 1
    wire_factory(a, b).carry(a, out)
    assert [e.seq for e in a.pop_events() if isinstance(e, EchoReply)] == [1, 2]


def test_known_neighbour_is_sent_to_directly(pair):
    a, b, wire = pair
    teach(a, B, MAC_B)
    out = a.ping(B, 1, 1, b"")
    eth, header, _ = ip_of(out[0])
    assert len(out) == 1 and eth.dst == MAC_B and header.dst == B


# timers -----------------------------------------------------------------------

def test_arp_entries_expire(pair, clock):
    a, b, wire = pair
    wire.carry(a, a.ping(B, 1, 1, b""))
    expires = a.arp_cache()[B][1]
    assert a.next_deadline() == expires == clock.now + 60.0
    clock.advance(59.9)
    assert B in a.arp_cache()
    clock.advance(0.1)
    assert a.poll() == []
    assert a.arp_cache() == {} and a.next_deadline() is None
    out = a.ping(B, 1, 2, b"")
    assert arp_of(out[0]).tpa == B        # must resolve again


def test_a_conversation_past_the_reachable_time_is_checked_by_unicast_never_broadcast(pair, clock):
    a, b, wire = pair
    wire.carry(a, a.ping(B, 1, 1, b""))
    clock.advance(40.0)                       # stale now (reachable 30 s of the 60)
    out = a.ping(B, 1, 2, b"")
    assert len(out) == 1 and ip_of(out[0])[0].dst == MAC_B   # sent at once, to the entry's MAC
    wire.carry(a, out)
    clock.now = a.next_deadline()             # DELAY over: Linux's delay_first_probe_time, 5 s
    probe = a.poll()
    assert len(probe) == 1
    eth = EthernetFrame.parse(probe[0])
    assert (eth.dst, eth.ethertype) == (MAC_B, ETH_P_ARP)   # unicast, to the MAC it holds
    assert arp_of(probe[0]).op == ARPOP_REQUEST and arp_of(probe[0]).tpa == B
    wire.carry(a, probe)                      # b answers: confirmed again
    assert a.arp_states() == {B: "REACHABLE"}
    assert a.next_deadline() == clock.now + 60.0


def test_a_stale_neighbour_that_never_answers_its_probes_is_resolved_by_broadcast_again(pair, clock):
    a, b, wire = pair
    wire.carry(a, a.ping(B, 1, 1, b""))
    clock.advance(40.0)
    wire.cut = True
    assert ip_of(a.ping(B, 1, 2, b"")[0])[0].dst == MAC_B
    probes = []
    while a.arp_cache():
        clock.now = a.next_deadline()
        probes += a.poll()
    assert [EthernetFrame.parse(f).dst for f in probes] == [MAC_B] * 3
    out = a.ping(B, 1, 3, b"")
    assert EthernetFrame.parse(out[0]).dst == BROADCAST and arp_of(out[0]).tpa == B


def test_arp_retries_then_gives_up_and_counts(pair, clock):
    a, _, wire = pair
    wire.cut = True
    start = clock.now
    first = a.ping(B, 1, 1, b"lost")
    a.ping(B, 1, 2, b"lost")
    assert len(first) == 1 and a.next_deadline() == start + 1.0
    clock.advance(0.5)
    assert a.poll() == []
    requests = []
    for _ in range(2):                    # retries 2 and 3 of arp_retries=3
        clock.now = a.next_deadline()
        requests += a.poll()
    assert [arp_of(f).tpa for f in requests] == [B, B]
    clock.now = a.next_deadline()
    assert a.poll() == []                 # no fourth request: give up
    assert a.counters["arp_unresolved"] == 2
    assert ArpFailed(B, 2) in a.pop_events()
    assert a.next_deadline() is None and a.arp_pending() == {}


# UDP --------------------------------------------------------------------------

def test_udp_echo_on_port_7(pair):
    a, b, wire = pair
    sock = a.bind_udp(5000)
    wire.carry(a, sock.sendto(B, 7, b"echo me"))
    assert sock.pending == 1
    assert sock.recv() == UdpDatagram(B, 7, 5000, b"echo me")
    assert sock.recv() is None
    assert UdpDatagram(B, 7, 5000, b"echo me") in a.pop_events()


def test_udp_to_a_bound_socket(pair):
    a, b, wire = pair
    sock = b.bind_udp(9000)
    wire.carry(a, a.send_udp(B, 1234, 9000, b"data"))
    assert sock.recv() == UdpDatagram(A, 1234, 9000, b"data")
    _, header, payload = ip_of(wire.frames_from(a)[-1])
    assert header.ttl == 64 and payload[6:8] != b"\0\0"      # checksum always computed on send


def test_unbound_port_answers_icmp_port_unreachable(pair):
    a, b, wire = pair
    wire.carry(a, a.send_udp(B, 1234, 9999, b"nobody"))
    assert b.counters["udp_port_unreachable"] == 1
    eth, header, payload = ip_of(wire.frames_from(b)[-1])
    error = IcmpMessage.parse(payload)
    assert (header.dst, error.type, error.code) == (A, ICMP_DEST_UNREACH, 3)
    quoted, _ = Ipv4Header.parse(error.payload)
    assert (quoted.src, quoted.dst, quoted.proto) == (A, B, IPPROTO_UDP)
    [event] = [e for e in a.pop_events() if isinstance(e, IcmpError)]
    assert (event.src, event.type, event.code) == (B, 3, 3)


def test_unbound_port_reached_by_broadcast_is_not_answered(pair):
    _, b, _ = pair
    frame = udp_frame(A, IPv4Address("10.0.0.255"), 1234, 9999, b"x", dst_mac=BROADCAST)
    assert b.receive(frame) == []
    assert b.counters["udp_port_unreachable"] == 1


def test_udp_echo_to_the_subnet_broadcast_answers_from_the_interface_address(pair):
    # Found by the stack fuzzer: a broadcast has no local address to answer
    # from, and building the reply's checksum crashed the stack.
    a, b, wire = pair
    teach(b, A, MAC_A)
    frame = udp_frame(A, IPv4Address("10.0.0.255"), 5000, 7, b"anyone", dst_mac=BROADCAST,
                      src_mac=MAC_A)
    [reply] = b.receive(frame)
    eth, header, payload = ip_of(reply)
    assert (eth.dst, header.src, header.dst) == (MAC_A, B, A)
    assert UdpPacket.parse(B, A, payload) == UdpPacket(7, 5000, b"anyone")


def test_echo_service_does_not_answer_another_echo_service(pair):
    a, b, wire = pair
    wire.carry(a, a.send_udp(B, 7, 7, b"ping-pong"))
    assert b.counters["udp_echo_loop"] == 1
    assert len(wire.frames_from(b)) == 1          # just the ARP reply


def test_bind_udp_refuses_a_taken_port(pair):
    a, _, _ = pair
    with pytest.raises(OSError) as info:
        a.bind_udp(7)
    assert info.value.errno == errno.EADDRINUSE
    sock = a.bind_udp(5000)
    with pytest.raises(OSError) as info:
        a.bind_udp(5000)
    assert info.value.errno == errno.EADDRINUSE
    sock.close()
    assert a.bind_udp(5000).port == 5000
    with pytest.raises(OSError) as info:
        sock.recv()
    assert info.value.errno == errno.EBADF


def test_bind_udp_zero_picks_distinct_ephemeral_ports(pair):
    a, _, _ = pair
    first, second = a.bind_udp(0), a.bind_udp(0)
    assert 49152 <= first.port < second.port <= 65535


def test_closed_socket_port_is_unreachable_again(pair):
    a, b, wire = pair
    b.bind_udp(9000).close()
    wire.carry(a, a.send_udp(B, 1, 9000, b""))
    assert b.counters["udp_port_unreachable"] == 1


def test_full_socket_queue_drops(stack_factory):
    b = stack_factory(MAC_B, "10.0.0.3/24", udp_queue_limit=1)
    sock = b.bind_udp(9000)
    for _ in range(2):
        b.receive(udp_frame(A, B, 1, 9000, b"x"))
    assert sock.pending == 1 and b.counters["udp_rcvbuf_full"] == 1


# checksums and malformed input --------------------------------------------------

@pytest.mark.parametrize("build, offset, reason", [
    (lambda: echo_frame(A, B), 14 + 10, "bad_ip_checksum"),
    (lambda: echo_frame(A, B), -1, "bad_icmp_checksum"),
    (lambda: udp_frame(A, B, 1, 7, b"abcd"), -1, "bad_udp_checksum"),
    (lambda: udp_frame(A, B, 1, 7, b"abcd"), 14 + 20 + 1, "bad_udp_checksum"),
])
def test_corrupt_byte_is_counted_by_reason(pair, build, offset, reason):
    _, b, _ = pair
    frame = bytearray(build())
    frame[offset] ^= 0x40
    assert b.receive(bytes(frame)) == []
    assert b.drops() == {reason: 1}


def test_udp_without_checksum_is_accepted(pair):
    _, b, _ = pair
    sock = b.bind_udp(9000)
    frame = bytearray(udp_frame(A, B, 1, 9000, b"abcd"))
    frame[14 + 20 + 6:14 + 20 + 8] = b"\0\0"
    frame[-1] ^= 0xFF
    b.receive(bytes(frame))
    assert sock.recv().payload == b"abc\x9b"


@pytest.mark.parametrize("frame, reason", [
    (echo_frame(A, B, dst_mac=MAC_X), "not_for_us"),
    (echo_frame(A, B, dst_mac=bytes.fromhex("01005e000001")), "not_for_us"),
    (EthernetFrame(MAC_B, MAC_A, 0x86DD, b"v6").build(), "bad_ethertype"),
    (EthernetFrame(MAC_B, MAC_A, ETH_P_IP, b"x", vlan_tci=5).build(), "bad_ethertype"),
    (EthernetFrame(MAC_B, bytes.fromhex("030000000001"), ETH_P_IP, b"x").build(), "bad_src_mac"),
    (echo_frame(A, B, flags_frag=IP_MF), "fragment"),
    (echo_frame(A, B, flags_frag=8), "fragment"),
    (echo_frame(A, B, ttl=0), "ttl"),
    (echo_frame(A, IPv4Address("10.0.0.9")), "ip_not_for_us"),
    (echo_frame(IPv4Address("127.0.0.1"), B), "martian_source"),
    (echo_frame(B, B), "martian_source"),
    (echo_frame(A, IPv4Address("10.0.0.255"), dst_mac=BROADCAST), "icmp_broadcast"),
    (ip_frame(MAC_B, A, B, IPPROTO_ICMP, IcmpMessage(13, 0, 0, b"").build()), "icmp_unhandled"),
])
def test_drops_by_reason(pair, frame, reason):
    _, b, _ = pair
    assert b.receive(frame) == []
    assert b.drops() == {reason: 1}
    assert b.counters["rx_frames"] == 1 and b.counters["rx_delivered"] == 0


def test_oversize_frame_is_counted(pair):
    _, b, _ = pair
    assert b.receive(echo_frame(A, B)[:14] + bytes(1501)) == []
    assert b.drops() == {"oversize": 1}


def test_unknown_protocol_answers_protocol_unreachable(pair):
    _, b, _ = pair
    teach(b, A, MAC_A)
    [reply] = b.receive(ip_frame(MAC_B, A, B, 6, b"\0" * 20, src_mac=MAC_A))
    _, header, payload = ip_of(reply)
    error = IcmpMessage.parse(payload)
    assert (header.dst, error.type, error.code) == (A, ICMP_DEST_UNREACH, 2)
    assert b.counters["ip_proto_unreachable"] == 1


@pytest.mark.parametrize("length", range(61))
def test_truncated_frames_never_raise(pair, length):
    _, b, _ = pair
    teach(b, A, MAC_A)
    b.counters.clear()
    for full in (echo_frame(A, B), udp_frame(A, B, 1, 7, b"x" * 20),
                 EthernetFrame(MAC_B, MAC_A, ETH_P_ARP, ArpPacket.request(MAC_A, A, B).build()).build()):
        b.receive(full.ljust(60, b"\0")[:length])
    dropped = sum(b.drops().values())
    assert b.counters["rx_delivered"] + dropped == 3


# sending ----------------------------------------------------------------------

def test_off_link_destination_goes_via_the_gateway(pair, stack_factory, wire_factory):
    a, _, _ = pair
    router = stack_factory(MAC_GW, "10.0.0.1/24")
    far = IPv4Address("192.0.2.9")
    wire = wire_factory(a, router)
    out = a.ping(far, 1, 1, b"far")
    assert arp_of(out[0]).tpa == GW
    wire.carry(a, out)
    eth, header, _ = ip_of(wire.frames_from(a)[-1])
    assert (eth.dst, header.dst) == (MAC_GW, far)
    assert router.counters["ip_not_for_us"] == 1          # a host does not forward
    assert far not in a.arp_cache()


def test_off_link_without_gateway_is_unreachable(stack_factory):
    a = stack_factory(MAC_A, "10.0.0.2/24")
    with pytest.raises(OSError) as info:
        a.ping(IPv4Address("192.0.2.9"), 1, 1, b"")
    assert info.value.errno == errno.ENETUNREACH
    assert a.counters["tx_frames"] == 0


def test_oversize_send_is_refused(pair):
    a, _, _ = pair
    with pytest.raises(ValueError, match="MTU 1500"):
        a.send_udp(B, 1, 2, bytes(1473))
    with pytest.raises(ValueError, match="MTU 1500"):
        a.ping(B, 1, 1, bytes(1473))
    assert a.arp_pending() == {} and a.counters["tx_frames"] == 0
    assert len(a.send_udp(B, 1, 2, bytes(1472))) == 1     # exactly the MTU is fine


def test_broadcast_needs_no_arp(pair):
    a, _, _ = pair
    [frame] = a.send_udp(IPv4Address("255.255.255.255"), 68, 67, b"hi")
    eth, header, _ = ip_of(frame)
    assert eth.dst == BROADCAST and header.dst == IPv4Address("255.255.255.255")
    [frame] = a.send_udp(IPv4Address("10.0.0.255"), 1, 2, b"hi")
    assert EthernetFrame.parse(frame).dst == BROADCAST


def test_ping_own_address_loops_back(pair, clock):
    a, _, _ = pair
    assert a.ping(A, 5, 6, b"self") == []
    assert a.pop_events() == [EchoReply(A, 5, 6, b"self", clock.now)]
    assert a.counters["rx_loopback"] == 2


def test_argument_checks(pair):
    a, _, _ = pair
    for call in (lambda: a.ping(B, 70000, 1, b""), lambda: a.send_udp(B, 1, 0, b""),
                 lambda: a.send_ip(B, 256, b""), lambda: a.send_ip("not an ip", 1, b""),
                 lambda: a.send_ip(IPv4Address("127.0.0.1"), 1, b"")):
        with pytest.raises(ValueError):
            call()


def test_counters_track_bytes(pair):
    a, b, wire = pair
    wire.carry(a, a.ping(B, 1, 1, b"x"))
    sent = wire.frames_from(a)
    assert a.counters["tx_frames"] == len(sent) and a.counters["tx_bytes"] == sum(map(len, sent))
    assert b.counters["rx_frames"] == len(sent) and b.counters["rx_bytes"] == sum(map(len, sent))


@pytest.mark.parametrize("options", [
    {"mac": bytes.fromhex("01005e000001")},
    {"mac": bytes(6)},
    {"mac": "00:16:3e:00:00:01"},
    {"mtu": 67},
    {"arp_retries": 0},
    {"arp_timeout": 0},
    {"gateway": IPv4Address("10.0.0.2")},
    {"address": "10.0.0.2/24"},
])
def test_config_refuses_nonsense(options):
    fields = {"mac": MAC_A, "address": IPv4Interface("10.0.0.2/24")} | options
    with pytest.raises(ValueError):
        StackConfig(**fields)
