"""Ethernet, ARP, IPv4, ICMP and UDP codecs on their own."""
from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, strategies as st

from xenlab.net.arp import ARPOP_REPLY, ARPOP_REQUEST, ArpPacket
from xenlab.net.errors import PacketError
from xenlab.net.ethernet import (BROADCAST, ETH_P_ARP, ETH_P_IP, ETH_ZLEN, EthernetFrame,
                                 format_mac, is_broadcast, is_link_local,
                                 is_locally_administered, is_multicast, is_unicast,
                                 is_valid_unicast, parse_mac, peek_addresses)
from xenlab.net.icmp import ICMP_ECHO, IcmpMessage
from xenlab.net.ipv4 import (IP_MF, IPPROTO_UDP, Ipv4Header, internet_checksum,
                             multicast_mac)
from xenlab.net.udp import UdpPacket
from xenlab.xen.errors import ConfigError

SRC = IPv4Address("10.0.0.2")
DST = IPv4Address("10.0.0.3")
MAC = bytes.fromhex("00163e010203")


# Ethernet ---------------------------------------------------------------------

def test_mac_text_round_trip():
    assert parse_mac("00:16:3E:01:02:03") == MAC
    assert format_mac(MAC) == "00:16:3e:01:02:03"


@pytest.mark.parametrize("text", ["", "00:16:3e:01:02", "00:16:3e:01:02:03:04", "00:16-3e:01:02:03",
                                  "00-16-3e-01-02-03", "0016.3e01.0203", "00:16:3e:01:02:zz",
                                  "0:16:3e:1:2:3", "000:16:3e:01:02:03"])
def test_parse_mac_refuses_what_xl_refuses(text):
    # One grammar for the lab, libxl__parse_mac's: six octets of two hex
    # digits separated by ':'. An error is EINVAL, with the text in it.
    with pytest.raises(ConfigError, match="not a MAC address") as err:
        parse_mac(text)
    assert err.value.errno == errno.EINVAL


def test_parse_mac_short_octets_as_bridge_fdb_takes_them():
    assert parse_mac("0:16:3e:1:2:3", short_octets=True) == MAC
    assert parse_mac("00:16:3e:01:02:03", short_octets=True) == MAC
    for text in ("000:16:3e:01:02:03", "0:16:3e:1:2", ":16:3e:1:2:3"):
        with pytest.raises(ConfigError):
            parse_mac(text, short_octets=True)


def test_format_mac_refuses_a_wrong_length():
    with pytest.raises(ValueError, match="6 bytes, got 5"):
        format_mac(MAC[:5])


def test_address_kinds():
    assert is_broadcast(BROADCAST) and is_multicast(BROADCAST)
    assert is_multicast(bytes.fromhex("01005e000001")) and not is_broadcast(bytes.fromhex("01005e000001"))
    assert is_unicast(MAC) and is_valid_unicast(MAC)
    assert not is_valid_unicast(bytes(6))
    assert is_locally_administered(bytes.fromhex("020000000001")) and not is_locally_administered(MAC)
    assert is_link_local(bytes.fromhex("0180c2000000")) and is_link_local(bytes.fromhex("0180c200000e"))
    assert not is_link_local(bytes.fromhex("0180c2000010"))


def test_frame_round_trip_and_padding():
    frame = EthernetFrame(BROADCAST, MAC, ETH_P_ARP, b"abc")
    raw = frame.build()
    assert len(raw) == 17 and EthernetFrame.parse(raw) == frame
    padded = frame.build(pad=True)
    assert len(padded) == ETH_ZLEN and EthernetFrame.parse(padded).payload[:3] == b"abc"
    assert peek_addresses(raw) == (BROADCAST, MAC)


def test_vlan_tag_is_decoded():
    frame = EthernetFrame(MAC, MAC, ETH_P_IP, b"x", vlan_tci=0x0064)
    raw = frame.build()
    assert raw[12:14] == b"\x81\x00" and EthernetFrame.parse(raw) == frame
    assert EthernetFrame(MAC, MAC, 0x05DC, b"").is_802_3


@pytest.mark.parametrize("length", [0, 13])
def test_short_frame_is_a_packet_error(length):
    with pytest.raises(PacketError) as info:
        EthernetFrame.parse(bytes(length))
    assert info.value.reason == "truncated" and isinstance(info.value, ValueError)


# ARP --------------------------------------------------------------------------

def test_arp_round_trip():
    packet = ArpPacket(ARPOP_REPLY, MAC, SRC, BROADCAST[:1] * 6, DST)
    raw = packet.build()
    assert len(raw) == 28 and ArpPacket.parse(raw + b"pad") == packet
    request = ArpPacket.request(MAC, SRC, SRC)
    assert request.op == ARPOP_REQUEST and request.tha == bytes(6) and request.is_gratuitous


@pytest.mark.parametrize("patch, reason", [
    ((0, b"\x00\x06"), "bad_arp"),          # hardware type IEEE 802
    ((2, b"\x86\xdd"), "bad_arp"),          # protocol IPv6
    ((6, b"\x00\x03"), "bad_arp"),          # RARP op
    ((8, b"\x01" + MAC[1:]), "bad_arp"),    # sender is a group address
    ((8, bytes(6)), "bad_arp"),             # sender MAC all zeroes
])
def test_arp_refusals(patch, reason):
    raw = bytearray(ArpPacket.request(MAC, SRC, DST).build())
    offset, value = patch
    raw[offset:offset + len(value)] = value
    with pytest.raises(PacketError) as info:
        ArpPacket.parse(bytes(raw))
    assert info.value.reason == reason


# IPv4 -------------------------------------------------------------------------

def test_internet_checksum_rfc1071_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF
    assert internet_checksum(b"\x01") == ~0x0100 & 0xFFFF      # odd length pads a zero


@given(st.binary(max_size=1600), st.integers(0, 1 << 24))
def test_internet_checksum_is_the_word_by_word_sum(data, initial):
    # RFC 1071's definition, one 16-bit word at a time with the carries
    # folded back, against the one-integer residue the stack computes.
    padded = data + b"\x00" * (len(data) % 2)
    total = initial + sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert internet_checksum(data, initial) == ~total & 0xFFFF


def test_internet_checksum_of_zeros_and_of_all_ones():
    assert internet_checksum(bytes(20)) == 0xFFFF          # a sum of 0 stays 0
    assert internet_checksum(b"\xff" * 20) == 0            # ones' complement zero (0xFFFF)
    assert internet_checksum(b"") == 0xFFFF


def test_ipv4_round_trip_trims_padding():
    header = Ipv4Header(SRC, DST, IPPROTO_UDP, ident=7, options=b"\x01\x01\x01\x00")
    raw = header.build(b"payload")
    parsed, payload = Ipv4Header.parse(raw + bytes(10))
    assert payload == b"payload" and parsed.ttl == 64 and parsed.options == header.options
    assert parsed.total_length == len(raw) and internet_checksum(raw[:24]) == 0


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:19], "truncated"),
    (lambda b: b"\x65" + b[1:], "bad_ip_header"),          # version 6
    (lambda b: b"\x44" + b[1:], "bad_ip_header"),          # IHL 4
    (lambda b: b"\x4f" + b[1:], "truncated"),              # IHL 15: header longer than data
    (lambda b: b[:15] + bytes([b[15] ^ 1]) + b[16:], "bad_ip_checksum"),
    (lambda b: b[:-1], "truncated"),                       # total length past the data
])
def test_ipv4_refusals(mutate, reason):
    raw = Ipv4Header(SRC, DST, IPPROTO_UDP).build(b"12345678")
    with pytest.raises(PacketError) as info:
        Ipv4Header.parse(mutate(raw))
    assert info.value.reason == reason


def test_ipv4_total_length_shorter_than_header():
    raw = bytearray(Ipv4Header(SRC, DST, IPPROTO_UDP).build(b""))
    raw[2:4] = struct.pack("!H", 16)
    raw[10:12] = b"\0\0"
    raw[10:12] = struct.pack("!H", internet_checksum(bytes(raw)))
    with pytest.raises(PacketError) as info:
        Ipv4Header.parse(bytes(raw))
    assert info.value.reason == "bad_ip_header"


def test_fragment_flags():
    assert Ipv4Header(SRC, DST, 1, flags_frag=IP_MF).is_fragment
    assert Ipv4Header(SRC, DST, 1, flags_frag=5).is_fragment
    assert not Ipv4Header(SRC, DST, 1, flags_frag=0x4000).is_fragment     # DF alone


def test_multicast_mac_keeps_low_23_bits():
    assert multicast_mac(IPv4Address("224.128.1.2")) == bytes.fromhex("01005e000102")


# ICMP and UDP -----------------------------------------------------------------

def test_icmp_echo_round_trip_and_corruption():
    raw = IcmpMessage.echo(ICMP_ECHO, 0x1234, 9, b"ping").build()
    message = IcmpMessage.parse(raw)
    assert (message.type, message.ident, message.seq, message.payload) == (ICMP_ECHO, 0x1234, 9, b"ping")
    with pytest.raises(PacketError) as info:
        IcmpMessage.parse(raw[:-1] + b"X")
    assert info.value.reason == "bad_icmp_checksum"


def test_udp_round_trip_and_checksum():
    raw = UdpPacket(5000, 7, b"hello").build(SRC, DST)
    assert UdpPacket.parse(SRC, DST, raw + b"trailer") == UdpPacket(5000, 7, b"hello")
    with pytest.raises(PacketError) as info:
        UdpPacket.parse(SRC, IPv4Address("10.0.0.4"), raw)       # pseudo-header covers dst
    assert info.value.reason == "bad_udp_checksum"
    no_checksum = raw[:6] + b"\0\0" + raw[8:-1] + b"X"
    assert UdpPacket.parse(SRC, DST, no_checksum).payload == b"hellX"


def test_udp_computed_zero_checksum_is_sent_as_ffff():
    probe = UdpPacket(1, 2, b"\0\0").build(SRC, DST)
    # A payload word equal to the checksum over a zero word brings the sum to zero.
    raw = UdpPacket(1, 2, probe[6:8]).build(SRC, DST)
    assert raw[6:8] == b"\xff\xff"
    assert UdpPacket.parse(SRC, DST, raw).payload == probe[6:8]


@pytest.mark.parametrize("data, reason", [
    (b"\0" * 7, "truncated"),
    (struct.pack("!HHHH", 1, 2, 7, 0), "bad_udp_header"),
    (struct.pack("!HHHH", 1, 2, 20, 0) + b"abc", "truncated"),
])
def test_udp_refusals(data, reason):
    with pytest.raises(PacketError) as info:
        UdpPacket.parse(SRC, DST, data)
    assert info.value.reason == reason
