"""ICMP for IPv4 (RFC 792): echo, and the error messages a host sends and reads."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from xenlab.net.errors import PacketError
from xenlab.net.ipv4 import internet_checksum

ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12

ICMP_NET_UNREACH = 0             # codes of ICMP_DEST_UNREACH
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4             # the next hop's MTU in the low 16 bits of "rest" (RFC 1191)

ICMP_EXC_TTL = 0                 # codes of ICMP_TIME_EXCEEDED
ICMP_EXC_FRAGTIME = 1

ERROR_TYPES = frozenset({ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAMETERPROB})

ICMP_HLEN = 8
# An error quotes the offending datagram so the whole reply fits in 576 bytes,
# the size every host must accept (RFC 1122 3.2.2, Linux's icmp_send).
ICMP_ERROR_MAX = 576

_HEADER = struct.Struct("!BBHI")
_ECHO = struct.Struct("!HH")


@dataclass(frozen=True)
class IcmpMessage:
    type: int
    code: int
    rest: int                    # the 32-bit "rest of header" word
    payload: bytes

    @classmethod
    def parse(cls, data: bytes) -> IcmpMessage:
        if len(data) < ICMP_HLEN:
            raise PacketError("truncated", f"ICMP needs {ICMP_HLEN} bytes, got {len(data)}")
        if internet_checksum(data) != 0:
            raise PacketError("bad_icmp_checksum", "ICMP checksum does not verify")
        type_, code, _, rest = _HEADER.unpack_from(data)
        return cls(type_, code, rest, bytes(data[ICMP_HLEN:]))

    def build(self) -> bytes:
        body = _HEADER.pack(self.type, self.code, 0, self.rest) + self.payload
        checksum = internet_checksum(body)
        return body[:2] + struct.pack("!H", checksum) + body[4:]

    @classmethod
    def echo(cls, type_: int, ident: int, seq: int, payload: bytes) -> IcmpMessage:
        rest, = struct.unpack("!I", _ECHO.pack(ident, seq))
        return cls(type_, 0, rest, payload)

    @classmethod
    def unreachable(cls, code: int, original: bytes) -> IcmpMessage:
        return cls(ICMP_DEST_UNREACH, code, 0, original)

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def seq(self) -> int:
        return self.rest & 0xFFFF
