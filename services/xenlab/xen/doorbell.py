"""The event-channel doorbell: the wire format both sides speak.

The doorbell is the data-plane half of event channels (docs/ARCHITECTURE.md, "The two planes"): a
unix SOCK_SEQPACKET connection between a domain and the hypervisor, so that
a notification costs one datagram instead of a gRPC round trip. Each
datagram is exactly one message:

    header   magic u8 (0xEC), version u8 (2), op u8, reserved u8 (0)
    HELLO    domid u16, secret_len u16, flags u16, reserved u16, secret (utf-8)
                                                            domain -> hypervisor, first
    OK       domid u16, flags u16                           hypervisor -> domain
    ERROR    errno i32, msg_len u16, reserved u16, msg      hypervisor -> domain, then close
    SEND     count u16, reserved u16, port u32 * count      domain -> hypervisor (EVTCHNOP_send, batched)
    UPCALL   vcpu u32                                       hypervisor -> domain
    COPY     seq u32, count u16, reserved u16, op * count   domain -> hypervisor (GNTTABOP_copy)
    COPIED   seq u32, count u16, reserved u16, i16 * count  hypervisor -> domain: one GNTST_* per op
    CHANNEL  port u32, vcpu u32                             hypervisor -> domain, with one descriptor

An UPCALL says only "the 0->1 edge of evtchn_upcall_pending happened on this
vCPU"; which ports are pending is read from shared_info, as a real guest's
upcall handler does.

HELLO's flag HELLO_MEMORY asks for the domain's memory object: a domain
whose launcher could not hand it over (a container that mounts no segment)
takes it this way, once. The OK then has OK_MEMORY set and carries the
object as the datagram's one SCM_RIGHTS descriptor, which the domain maps
and closes (xenlab.domain.memory.map_memory_object). The hypervisor looks
the object up by the domid HELLO authenticated, so a domain only ever gets
its own, and only the first time it asks: after that it holds the mapping
only, and cannot come back for a descriptor it could resize the segment
through. A refusal is an ERROR, as for bad credentials. Version 2 added the
flags (version 1's HELLO had none, its OK a reserved u16).

HELLO's flag HELLO_PAGING asks for the domain's paging pool object (its
shadow tables or nested P2M, which its MMU walks; a domain in direct mode
has none and is refused ENOENT). The OK then has OK_PAGING set and carries
a read-only descriptor of the object, after the memory object's when both
were asked for: the domain maps it PROT_READ and cannot write a table the
hypervisor keeps, nor make a writable mapping of it, nor resize it. Unlike
the memory object it may be asked for again.

HELLO's flag HELLO_CHANNELS asks for a notification object per interdomain
event channel, as KVM's irqfd/ioeventfd and vhost-user's kick and call fds:
when one of the domain's ports becomes interdomain with another domain's,
the hypervisor sends a CHANNEL naming the port and the vCPU it notifies,
with one end of a unix SOCK_SEQPACKET pair as the datagram's one SCM_RIGHTS
descriptor; the peer gets the other end with its own CHANNEL. A datagram
written on the end is EVTCHNOP_send on that port, delivered to the peer
without the hypervisor; a datagram read on it is the peer's send, which
the domain's kernel turns into the port's pending bit in its own
shared_info (the 2-level rules: set_pending honours the mask, and only the
0->1 edge upcalls). The bytes carry nothing. The hypervisor keeps both ends
and revokes the channel by shutting the pair down: from then on a write
fails (EPIPE) and a read sees the end of the stream, whoever holds a copy.
A CHANNEL for a port that already has one replaces it.

A COPY op is struct gnttab_copy (grant_table.h) without its status field,
28 bytes: source (ptr u64, domid u16, offset u16), dest (ptr u64, domid u16,
offset u16), len u16, flags u16. ``ptr`` is a grant reference when the
side's GNTCOPY_*_gref flag is set, else a gfn. The hypervisor answers every
COPY with one COPIED carrying the same seq, in the order the COPYs came; the
seq lets a domain keep several batches in flight on one connection.

Everything is little-endian. ``decode`` validates every field and raises
``XenError(EPROTO)`` on anything malformed; it never trusts a length it has
not checked against the datagram. What the fields name (a grant, a frame, a
domain) is the hypervisor's to check, op by op, exactly as for the gRPC
GrantTable.Copy call.
"""
from __future__ import annotations

import errno as _errno
import struct
from dataclasses import dataclass
from typing import NamedTuple

from xenlab.xen import abi
from xenlab.xen.errors import XenError

MAGIC = 0xEC
VERSION = 2

OP_HELLO = 1
OP_OK = 2
OP_ERROR = 3
OP_SEND = 4
OP_UPCALL = 5
OP_COPY = 6
OP_COPIED = 7
OP_CHANNEL = 8

HEADER = struct.Struct("<BBBx")
_HELLO = struct.Struct("<HHH2x")           # domid, secret_len, flags
_OK = struct.Struct("<HH")                 # domid, flags
_ERROR = struct.Struct("<iH2x")
_SEND = struct.Struct("<H2x")
_PORT = struct.Struct("<I")
_UPCALL = struct.Struct("<I")
_COPY = struct.Struct("<IH2x")              # COPY and COPIED: seq, count
GNTTAB_COPY = struct.Struct("<QHHQHHHH")    # one gnttab_copy, status left out
_STATUS = struct.Struct("<h")
_CHANNEL = struct.Struct("<II")             # port, vcpu

HELLO_MEMORY = 0x1        # HELLO: hand me my memory object
HELLO_CHANNELS = 0x2      # HELLO: hand me a notification object per interdomain channel
HELLO_PAGING = 0x4        # HELLO: hand me my paging pool, read-only
HELLO_FLAGS = HELLO_MEMORY | HELLO_CHANNELS | HELLO_PAGING
OK_MEMORY = 0x1           # OK: the memory object is attached (SCM_RIGHTS)
OK_PAGING = 0x2           # OK: the paging pool is attached, read-only (after the memory object)
OK_FLAGS = OK_MEMORY | OK_PAGING

MAX_SECRET = 256          # bytes of utf-8
MAX_ERROR_TEXT = 256      # longer messages are cut, not refused
MAX_SEND_BATCH = 512      # ports in one SEND
# Ops in one COPY: a full tx or rx ring of slots, each split at most once
# where it straddles two of netback's scratch pages.
MAX_COPY_BATCH = 512
GNTCOPY_FLAGS = abi.GNTCOPY_source_gref | abi.GNTCOPY_dest_gref
DOMID_MAX = abi.DOMID_FIRST_RESERVED - 1
# Receivers read MAX_DATAGRAM + 1 bytes: a datagram that fills the buffer was
# truncated by the kernel and is refused as oversized.
MAX_DATAGRAM = max(HEADER.size + _SEND.size + _PORT.size * MAX_SEND_BATCH,
                   HEADER.size + _COPY.size + GNTTAB_COPY.size * MAX_COPY_BATCH)


def malformed(why: str) -> XenError:
    return XenError(_errno.EPROTO, f"malformed doorbell message: {why}")


def _header(op: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, op)


@dataclass(frozen=True)
class Hello:
    domid: int
    secret: str
    flags: int = 0              # HELLO_*

    @property
    def wants_memory(self) -> bool:
        return bool(self.flags & HELLO_MEMORY)

    @property
    def wants_channels(self) -> bool:
        return bool(self.flags & HELLO_CHANNELS)

    @property
    def wants_paging(self) -> bool:
        return bool(self.flags & HELLO_PAGING)

    def encode(self) -> bytes:
        raw = self.secret.encode()
        if not 0 <= self.domid <= DOMID_MAX:
            raise ValueError(f"domid {self.domid} outside 0..{DOMID_MAX}")
        if not 0 < len(raw) <= MAX_SECRET:
            raise ValueError(f"secret must be 1..{MAX_SECRET} bytes")
        if self.flags & ~HELLO_FLAGS:
            raise ValueError(f"HELLO flags {self.flags:#x} name no HELLO_* bit")
        return _header(OP_HELLO) + _HELLO.pack(self.domid, len(raw), self.flags) + raw


@dataclass(frozen=True)
class Ok:
    domid: int
    flags: int = 0              # OK_*

    @property
    def carries_memory(self) -> bool:
        return bool(self.flags & OK_MEMORY)

    @property
    def carries_paging(self) -> bool:
        return bool(self.flags & OK_PAGING)

    @property
    def descriptors(self) -> int:
        """How many descriptors the datagram carries (SCM_RIGHTS)."""
        return self.carries_memory + self.carries_paging

    def encode(self) -> bytes:
        if self.flags & ~OK_FLAGS:
            raise ValueError(f"OK flags {self.flags:#x} name no OK_* bit")
        return _header(OP_OK) + _OK.pack(self.domid, self.flags)


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


class GnttabCopy(NamedTuple):
    """One struct gnttab_copy: each ptr is a grant ref if that side's
    GNTCOPY_*_gref flag is set, else a gfn; domid may be DOMID_SELF."""

    source_ptr: int
    source_domid: int
    source_offset: int
    dest_ptr: int
    dest_domid: int
    dest_offset: int
    len: int
    flags: int


@dataclass(frozen=True)
class Copy:
    seq: int
    ops: tuple[GnttabCopy, ...]

    def encode(self) -> bytes:
        n = len(self.ops)
        if not 0 < n <= MAX_COPY_BATCH:
            raise ValueError(f"a COPY carries 1..{MAX_COPY_BATCH} ops, not {n}")
        out = bytearray(HEADER.size + _COPY.size + n * GNTTAB_COPY.size)
        HEADER.pack_into(out, 0, MAGIC, VERSION, OP_COPY)
        _COPY.pack_into(out, HEADER.size, self.seq, n)
        pos = HEADER.size + _COPY.size
        pack = GNTTAB_COPY.pack_into
        try:
            for op in self.ops:
                pack(out, pos, *op)
                pos += GNTTAB_COPY.size
        except struct.error as err:
            raise ValueError(f"a COPY op does not fit gnttab_copy: {err}") from None
        return bytes(out)


@dataclass(frozen=True)
class Copied:
    seq: int
    statuses: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.statuses)
        if not 0 < n <= MAX_COPY_BATCH:
            raise ValueError(f"a COPIED carries 1..{MAX_COPY_BATCH} statuses, not {n}")
        return (_header(OP_COPIED) + _COPY.pack(self.seq, n)
                + struct.pack(f"<{n}h", *self.statuses))


@dataclass(frozen=True)
class Channel:
    """The datagram's descriptor is the notification object of ``port``,
    whose events go to ``vcpu``."""
    port: int
    vcpu: int

    def encode(self) -> bytes:
        return _header(OP_CHANNEL) + _CHANNEL.pack(self.port, self.vcpu)


Message = Hello | Ok | Error | Send | Upcall | Copy | Copied | Channel


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
    domid, n, flags = _HELLO.unpack_from(body)
    if not 0 < n <= MAX_SECRET or len(body) != _HELLO.size + n:
        raise malformed(f"HELLO secret length {n} does not match the datagram")
    if domid > DOMID_MAX:
        raise malformed(f"HELLO domid {domid} is reserved")
    if flags & ~HELLO_FLAGS:
        raise malformed(f"HELLO flags {flags:#x} name no HELLO_* bit")
    return Hello(domid, _text(body[_HELLO.size:], "HELLO secret"), flags)


def _decode_ok(body: bytes) -> Ok:
    domid, flags = _fixed(body, _OK, "OK")
    if flags & ~OK_FLAGS:
        raise malformed(f"OK flags {flags:#x} name no OK_* bit")
    return Ok(domid, flags)


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


def _copy_header(body: bytes, what: str, item: int) -> tuple[int, int]:
    if len(body) < _COPY.size:
        raise malformed(f"{what} too short")
    seq, count = _COPY.unpack_from(body)
    if not 0 < count <= MAX_COPY_BATCH or len(body) != _COPY.size + count * item:
        raise malformed(f"{what} count {count} does not match the datagram")
    return seq, count


def _decode_copy(body: bytes) -> Copy:
    seq, _ = _copy_header(body, "COPY", GNTTAB_COPY.size)
    ops = tuple(map(GnttabCopy._make, GNTTAB_COPY.iter_unpack(memoryview(body)[_COPY.size:])))
    for op in ops:
        if op.flags & ~GNTCOPY_FLAGS:
            raise malformed(f"COPY flags {op.flags:#x} name no GNTCOPY_* bit")
    return Copy(seq, ops)


def _decode_copied(body: bytes) -> Copied:
    seq, count = _copy_header(body, "COPIED", _STATUS.size)
    return Copied(seq, struct.unpack_from(f"<{count}h", body, _COPY.size))


def _decode_channel(body: bytes) -> Channel:
    port, vcpu = _fixed(body, _CHANNEL, "CHANNEL")
    if port >= abi.EVTCHN_2L_NR_CHANNELS:
        raise malformed(f"CHANNEL port {port} out of range")
    if vcpu >= abi.XEN_LEGACY_MAX_VCPUS:
        raise malformed(f"CHANNEL vcpu {vcpu} out of range")
    return Channel(port, vcpu)


_DECODERS = {
    OP_HELLO: _decode_hello,
    OP_OK: _decode_ok,
    OP_ERROR: _decode_error,
    OP_SEND: _decode_send,
    OP_UPCALL: _decode_upcall,
    OP_COPY: _decode_copy,
    OP_COPIED: _decode_copied,
    OP_CHANNEL: _decode_channel,
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
