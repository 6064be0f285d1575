"""The event-channel doorbell: the wire format both sides speak.

The doorbell is the data-plane half of event channels (DESIGN section 2): a
unix SOCK_SEQPACKET connection between a domain and the hypervisor, so that
a notification costs one datagram instead of a gRPC round trip. Each
datagram is exactly one message:

    header   magic u8 (0xEC), version u8 (1), op u8, reserved u8 (0)
    HELLO    domid u16, secret_len u16, secret (utf-8)      domain -> hypervisor, first
    OK       domid u16, reserved u16                        hypervisor -> domain
    ERROR    errno i32, msg_len u16, reserved u16, msg      hypervisor -> domain, then close
    SEND     count u16, reserved u16, port u32 * count      domain -> hypervisor (EVTCHNOP_send, batched)
    UPCALL   vcpu u32                                       hypervisor -> domain

An UPCALL says only "the 0->1 edge of evtchn_upcall_pending happened on this
vCPU"; which ports are pending is read from shared_info, as a real guest's
upcall handler does. Everything is little-endian. ``decode`` validates every
field and raises ``XenError(EPROTO)`` on anything malformed; it never trusts
a length it has not checked against the datagram.
"""
from __future__ import annotations

import errno as _errno
import struct
from dataclasses import dataclass

from xenlab.xen import abi
from xenlab.xen.errors import XenError

MAGIC = 0xEC
VERSION = 1

OP_HELLO = 1
OP_OK = 2
OP_ERROR = 3
OP_SEND = 4
OP_UPCALL = 5

HEADER = struct.Struct("<BBBx")
_HELLO = struct.Struct("<HH")
_OK = struct.Struct("<H2x")
_ERROR = struct.Struct("<iH2x")
_SEND = struct.Struct("<H2x")
_PORT = struct.Struct("<I")
_UPCALL = struct.Struct("<I")

MAX_SECRET = 256          # bytes of utf-8
MAX_ERROR_TEXT = 256      # longer messages are cut, not refused
MAX_SEND_BATCH = 512      # ports in one SEND
DOMID_MAX = abi.DOMID_FIRST_RESERVED - 1
# Receivers read MAX_DATAGRAM + 1 bytes: a datagram that fills the buffer was
# truncated by the kernel and is refused as oversized.
MAX_DATAGRAM = HEADER.size + _SEND.size + _PORT.size * MAX_SEND_BATCH


def malformed(why: str) -> XenError:
    return XenError(_errno.EPROTO, f"malformed doorbell message: {why}")


def _header(op: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, op)


@dataclass(frozen=True)
class Hello:
    domid: int
    secret: str

    def encode(self) -> bytes:
        raw = self.secret.encode()
        if not 0 <= self.domid <= DOMID_MAX:
            raise ValueError(f"domid {self.domid} outside 0..{DOMID_MAX}")
        if not 0 < len(raw) <= MAX_SECRET:
            raise ValueError(f"secret must be 1..{MAX_SECRET} bytes")
        return _header(OP_HELLO) + _HELLO.pack(self.domid, len(raw)) + raw


@dataclass(frozen=True)
class Ok:
    domid: int

    def encode(self) -> bytes:
        return _header(OP_OK) + _OK.pack(self.domid)


@dataclass(frozen=True)
class Error:
    errno: int
    message: str

    def encode(self) -> bytes:
        raw = self.message.encode()[:MAX_ERROR_TEXT]
        return _header(OP_ERROR) + _ERROR.pack(self.errno, len(raw)) + raw


@dataclass(frozen=True)
class Send:
    ports: tuple[int, ...]

    def encode(self) -> bytes:
        if not 0 < len(self.ports) <= MAX_SEND_BATCH:
            raise ValueError(f"a SEND carries 1..{MAX_SEND_BATCH} ports, not {len(self.ports)}")
        body = b"".join(_PORT.pack(p) for p in self.ports)
        return _header(OP_SEND) + _SEND.pack(len(self.ports)) + body


@dataclass(frozen=True)
class Upcall:
    vcpu: int

    def encode(self) -> bytes:
        return _header(OP_UPCALL) + _UPCALL.pack(self.vcpu)


Message = Hello | Ok | Error | Send | Upcall


def send_batches(ports) -> list[bytes]:
    """Encode any number of ports as as few SEND datagrams as possible."""
    ports = tuple(ports)
    return [Send(ports[i:i + MAX_SEND_BATCH]).encode()
            for i in range(0, len(ports), MAX_SEND_BATCH)]


def _fixed(body: bytes, fmt: struct.Struct, what: str) -> tuple:
    if len(body) != fmt.size:
        raise malformed(f"{what} body is {len(body)} bytes, expected {fmt.size}")
    return fmt.unpack(body)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise malformed(f"{what} is not utf-8") from None


def _decode_hello(body: bytes) -> Hello:
    if len(body) < _HELLO.size:
        raise malformed("HELLO too short")
    domid, n = _HELLO.unpack_from(body)
    if not 0 < n <= MAX_SECRET or len(body) != _HELLO.size + n:
        raise malformed(f"HELLO secret length {n} does not match the datagram")
    if domid > DOMID_MAX:
        raise malformed(f"HELLO domid {domid} is reserved")
    return Hello(domid, _text(body[_HELLO.size:], "HELLO secret"))


def _decode_ok(body: bytes) -> Ok:
    (domid,) = _fixed(body, _OK, "OK")
    return Ok(domid)


def _decode_error(body: bytes) -> Error:
    if len(body) < _ERROR.size:
        raise malformed("ERROR too short")
    err, n = _ERROR.unpack_from(body)
    if n > MAX_ERROR_TEXT or len(body) != _ERROR.size + n:
        raise malformed(f"ERROR text length {n} does not match the datagram")
    return Error(err, body[_ERROR.size:].decode(errors="replace"))


def _decode_send(body: bytes) -> Send:
    if len(body) < _SEND.size:
        raise malformed("SEND too short")
    (count,) = _SEND.unpack_from(body)
    if not 0 < count <= MAX_SEND_BATCH or len(body) != _SEND.size + count * _PORT.size:
        raise malformed(f"SEND count {count} does not match the datagram")
    ports = tuple(p for (p,) in _PORT.iter_unpack(body[_SEND.size:]))
    return Send(ports)


def _decode_upcall(body: bytes) -> Upcall:
    (vcpu,) = _fixed(body, _UPCALL, "UPCALL")
    if vcpu >= abi.XEN_LEGACY_MAX_VCPUS:
        raise malformed(f"UPCALL vcpu {vcpu} out of range")
    return Upcall(vcpu)


_DECODERS = {
    OP_HELLO: _decode_hello,
    OP_OK: _decode_ok,
    OP_ERROR: _decode_error,
    OP_SEND: _decode_send,
    OP_UPCALL: _decode_upcall,
}


def decode(data: bytes) -> Message:
    """Parse one datagram; XenError(EPROTO) if it is not exactly one valid message."""
    if len(data) < HEADER.size:
        raise malformed(f"{len(data)} bytes is shorter than the header")
    if len(data) > MAX_DATAGRAM:
        raise malformed(f"{len(data)} bytes is longer than any message")
    magic, version, op = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise malformed(f"bad magic {magic:#04x}")
    if version != VERSION:
        raise malformed(f"unsupported version {version}")
    if data[3] != 0:
        raise malformed("reserved header byte is not zero")
    decoder = _DECODERS.get(op)
    if decoder is None:
        raise malformed(f"unknown op {op}")
    return decoder(bytes(data[HEADER.size:]))
