"""UDP (RFC 768) with its pseudo-header checksum."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from xenlab.net.errors import PacketError
from xenlab.net.ipv4 import IPPROTO_UDP, internet_checksum, pseudo_header_sum

UDP_HLEN = 8
ECHO_PORT = 7                    # RFC 862

_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True)
class UdpPacket:
    sport: int
    dport: int
    payload: bytes

    @classmethod
    def parse(cls, src: IPv4Address, dst: IPv4Address, data: bytes) -> UdpPacket:
        """Decode ``data`` (the IP payload). A zero checksum means the sender
        computed none (RFC 768), so there is nothing to verify."""
        if len(data) < UDP_HLEN:
            raise PacketError("truncated", f"UDP needs {UDP_HLEN} bytes, got {len(data)}")
        sport, dport, length, checksum = _HEADER.unpack_from(data)
        if length < UDP_HLEN:
            raise PacketError("bad_udp_header", f"UDP length {length} < {UDP_HLEN}")
        if length > len(data):
            raise PacketError("truncated", f"UDP length {length}, {len(data)} bytes present")
        datagram = data[:length]
        if checksum and internet_checksum(datagram, pseudo_header_sum(src, dst, IPPROTO_UDP, length)):
            raise PacketError("bad_udp_checksum", "UDP checksum does not verify")
        return cls(sport, dport, bytes(datagram[UDP_HLEN:]))

    def build(self, src: IPv4Address, dst: IPv4Address) -> bytes:
        length = UDP_HLEN + len(self.payload)
        if length > 0xFFFF:
            raise ValueError(f"UDP datagram of {length} bytes exceeds 65535")
        body = _HEADER.pack(self.sport, self.dport, length, 0) + self.payload
        checksum = internet_checksum(body, pseudo_header_sum(src, dst, IPPROTO_UDP, length))
        # A computed zero is sent as all ones; zero on the wire means "no checksum".
        checksum = checksum or 0xFFFF
        return body[:6] + struct.pack("!H", checksum) + body[8:]
