"""IPv4 header codec (RFC 791) and the Internet checksum (RFC 1071)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from xenlab.net.errors import PacketError

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_HLEN = 20                     # without options
IP_MAXPACKET = 0xFFFF
DEFAULT_TTL = 64                 # Linux's ip_default_ttl

IP_RF = 0x8000                   # reserved flag
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF

LIMITED_BROADCAST = IPv4Address("255.255.255.255")

_HEADER = struct.Struct("!BBHHHBBH4s4s")


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """The ones' complement of the ones' complement sum of 16-bit words (RFC 1071).
    ``initial`` carries a partial sum in, such as a pseudo-header's."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    # The words' end-around-carry sum, without a step per word: 2**16 is 1
    # modulo 0xFFFF, so the data read as one big-endian integer is congruent
    # to the sum of its 16-bit words, and folding the carries keeps that
    # residue while landing in 1..0xFFFF (0 only for a sum of 0).
    total = initial + int.from_bytes(data, "big")
    if total:
        total = (total - 1) % 0xFFFF + 1
    return ~total & 0xFFFF


def pseudo_header_sum(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> int:
    """The un-folded sum of the pseudo-header that UDP and TCP checksums cover."""
    words = struct.unpack("!4H", src.packed + dst.packed)
    return sum(words) + proto + length


@dataclass(frozen=True)
class Ipv4Header:
    src: IPv4Address
    dst: IPv4Address
    proto: int
    ttl: int = DEFAULT_TTL
    ident: int = 0
    tos: int = 0
    flags_frag: int = 0          # the flags and fragment offset word
    options: bytes = b""
    total_length: int = 0        # filled by build(); as received by parse()

    @property
    def header_length(self) -> int:
        return IP_HLEN + len(self.options)

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_frag & (IP_MF | IP_OFFMASK))

    @classmethod
    def parse(cls, data: bytes) -> tuple[Ipv4Header, bytes]:
        """Validate in the order Linux's ip_rcv_core does and return the header and
        the payload, trimmed to the total length (dropping Ethernet padding)."""
        if len(data) < IP_HLEN:
            raise PacketError("truncated", f"{len(data)} bytes is shorter than an IPv4 header")
        vihl, tos, total, ident, flags_frag, ttl, proto, _, src, dst = _HEADER.unpack_from(data)
        version, hlen = vihl >> 4, (vihl & 0x0F) * 4
        if version != 4 or hlen < IP_HLEN:
            raise PacketError("bad_ip_header", f"version {version}, header length {hlen}")
        if len(data) < hlen:
            raise PacketError("truncated", f"header claims {hlen} bytes, {len(data)} present")
        if internet_checksum(data[:hlen]) != 0:
            raise PacketError("bad_ip_checksum", "header checksum does not verify")
        if total < hlen:
            raise PacketError("bad_ip_header", f"total length {total} < header length {hlen}")
        if total > len(data):
            raise PacketError("truncated", f"total length {total}, {len(data)} bytes present")
        header = cls(IPv4Address(src), IPv4Address(dst), proto, ttl, ident, tos, flags_frag,
                     bytes(data[IP_HLEN:hlen]), total)
        return header, bytes(data[hlen:total])

    def build(self, payload: bytes) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        total = self.header_length + len(payload)
        if total > IP_MAXPACKET:
            raise ValueError(f"IPv4 packet of {total} bytes exceeds {IP_MAXPACKET}")
        vihl = 0x40 | (self.header_length // 4)
        fields = [vihl, self.tos, total, self.ident, self.flags_frag, self.ttl, self.proto,
                  0, self.src.packed, self.dst.packed]
        head = _HEADER.pack(*fields) + self.options
        checksum = internet_checksum(head)
        return head[:10] + struct.pack("!H", checksum) + head[12:] + payload


def multicast_mac(group: IPv4Address) -> bytes:
    """01:00:5e plus the low 23 bits of the group (RFC 1112 section 6.4)."""
    low = int(group) & 0x7FFFFF
    return b"\x01\x00\x5e" + low.to_bytes(3, "big")
