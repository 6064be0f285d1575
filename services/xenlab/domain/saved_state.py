"""The guest kernel's suspend record: what a suspending kernel keeps of
itself in its own memory, and a resumed kernel reads back (docs/SAVE_FORMAT.md).

A PV Linux guest needs nothing of the kind: all of its state is in its
RAM, which the toolstack saves page by page. xenlab's kernel keeps its IP
stacks as Python objects outside its frames, so before SCHEDOP_shutdown
(suspend) it writes what must survive (each interface's IP configuration,
its ARP cache with each entry's remaining lifetime, its counters) into
frames it takes from its own free memory, in the layout below, and passes
the gfn of the first (the descriptor) with the hypercall, as a PV Linux
passes its start_info's. The toolstack saves those frames like any other
and never reads them; a restored kernel is started with that gfn and reads
the record back before it hands out any frame.

Layout (little-endian):

    descriptor frame: magic "XLKSDESC", count u32, then count u32 gfns: the
                      frames that hold the record, in order
    record, across those frames:
      header (32 bytes): magic "XLKSUSP\0", version u32, body length u32,
                         CRC-32 of the body u32, frames u32, reserved 8 bytes
      body: items of type u16, length u16, value
        IFACE   (1): name[16], mac[6], prefix u8, flags u8 (bit 0: ip_forward),
                     address u32, gateway u32 (0: none), mtu u16
        ROUTE   (2): name[16], network u32, prefix u8, gateway u32 (0: on-link)
        NEIGH   (3): name[16], address u32, mac[6], remaining lifetime u32 (ms)
        COUNTER (4): name[16], value u64, counter name (the rest)

Pure: bytes in, bytes out.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from xenlab.xen import abi

MAX_FRAMES = 16            # the record's frames at most (64 KiB)
DESC_MAGIC = b"XLKSDESC"
_DESC = struct.Struct("<8sI")
MAGIC = b"XLKSUSP\0"
VERSION = 1
_HDR = struct.Struct("<8sIIII8x")
_ITEM = struct.Struct("<HH")
IFACE, ROUTE, NEIGH, COUNTER = 1, 2, 3, 4
_IFACE = struct.Struct("<16s6sBBIIH")
_ROUTE = struct.Struct("<16sIBI")
_NEIGH = struct.Struct("<16sI6sI")
_COUNTER = struct.Struct("<16sQ")
MAX_BYTES = MAX_FRAMES * abi.PAGE_SIZE


class SavedStateError(ValueError):
    """No usable suspend record where the resumed kernel was told to look."""


@dataclass
class SavedInterface:
    name: str
    mac: bytes
    address: IPv4Interface
    gateway: IPv4Address | None = None
    mtu: int = 1500
    forwarding: bool = False
    routes: list[tuple[IPv4Network, IPv4Address | None]] = field(default_factory=list)
    neighbours: list[tuple[IPv4Address, bytes, float]] = field(default_factory=list)  # ip, mac, seconds left
    counters: dict[str, int] = field(default_factory=dict)


def _name(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 15:
        raise ValueError(f"interface name {text!r} is longer than IFNAMSIZ-1")
    return raw


def _unname(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


def encode(interfaces: list[SavedInterface]) -> bytes:
    """The whole record, header and body. Neighbours that would not fit go
    first, those closest to expiry first (as a full table drops them)."""
    fixed, neigh = [], []
    for iface in interfaces:
        name = _name(iface.name)
        gw = int(iface.gateway) if iface.gateway is not None else 0
        fixed.append((IFACE, _IFACE.pack(name, iface.mac, iface.address.network.prefixlen,
                                         int(iface.forwarding), int(iface.address.ip), gw,
                                         iface.mtu)))
        for net, via in iface.routes:
            fixed.append((ROUTE, _ROUTE.pack(name, int(net.network_address), net.prefixlen,
                                             int(via) if via is not None else 0)))
        for cname, value in sorted(iface.counters.items()):
            fixed.append((COUNTER, _COUNTER.pack(name, min(value, (1 << 64) - 1)) + cname.encode()[:200]))
        for ip, mac, left in iface.neighbours:
            ms = max(0, min(int(left * 1000), 0xFFFFFFFF))
            neigh.append((ms, (NEIGH, _NEIGH.pack(name, int(ip), mac, ms))))
    room = MAX_BYTES - _HDR.size - sum(_ITEM.size + len(v) for _, v in fixed)
    if room < 0:
        raise ValueError("the interfaces' configuration alone is over the record's size")
    neigh.sort(key=lambda item: -item[0])
    keep = room // (_ITEM.size + _NEIGH.size)
    items = fixed + [item for _, item in neigh[:keep]]
    body = b"".join(_ITEM.pack(t, len(v)) + v for t, v in items)
    frames = -(-(_HDR.size + len(body)) // abi.PAGE_SIZE)
    return _HDR.pack(MAGIC, VERSION, len(body), zlib.crc32(body), frames) + body


def frames_needed(record: bytes) -> int:
    return -(-len(record) // abi.PAGE_SIZE)


def pages(record: bytes) -> list[bytes]:
    return [record[i:i + abi.PAGE_SIZE] for i in range(0, len(record), abi.PAGE_SIZE)]


def descriptor(gfns: list[int]) -> bytes:
    """The frame whose gfn goes with SCHEDOP_shutdown(suspend): where the
    record's frames are."""
    if not 0 < len(gfns) <= MAX_FRAMES:
        raise ValueError(f"a suspend record spans 1..{MAX_FRAMES} frames, not {len(gfns)}")
    return _DESC.pack(DESC_MAGIC, len(gfns)) + struct.pack(f"<{len(gfns)}I", *gfns)


def read_descriptor(frame: bytes) -> list[int]:
    magic, count = _DESC.unpack_from(frame)
    if magic != DESC_MAGIC:
        raise SavedStateError("no suspend record descriptor (bad magic)")
    if not 0 < count <= MAX_FRAMES:
        raise SavedStateError(f"suspend record descriptor lists {count} frames")
    return list(struct.unpack_from(f"<{count}I", frame, _DESC.size))


def header_length(first_frame: bytes) -> int:
    """How many bytes the record that starts in ``first_frame`` takes."""
    magic, version, length, _, _ = _HDR.unpack_from(first_frame)
    if magic != MAGIC:
        raise SavedStateError("no suspend record (bad magic)")
    if version != VERSION:
        raise SavedStateError(f"suspend record version {version}, this kernel reads {VERSION}")
    if _HDR.size + length > MAX_BYTES:
        raise SavedStateError(f"suspend record claims {length} bytes")
    return _HDR.size + length


def decode(data: bytes) -> list[SavedInterface]:
    total = header_length(data)
    _, _, length, crc, _ = _HDR.unpack_from(data)
    body = bytes(data[_HDR.size:total])
    if len(body) != length or zlib.crc32(body) != crc:
        raise SavedStateError("suspend record: bad checksum")
    by_name: dict[str, SavedInterface] = {}
    at = 0
    try:
        while at < len(body):
            rtype, n = _ITEM.unpack_from(body, at)
            value = body[at + _ITEM.size:at + _ITEM.size + n]
            at += _ITEM.size + n
            if rtype == IFACE:
                name, mac, prefix, flags, ip, gw, mtu = _IFACE.unpack(value)
                iface = SavedInterface(_unname(name), mac,
                                       IPv4Interface((IPv4Address(ip), prefix)),
                                       IPv4Address(gw) if gw else None, mtu, bool(flags & 1))
                by_name[iface.name] = iface
            elif rtype == ROUTE:
                name, net, prefix, gw = _ROUTE.unpack(value)
                by_name[_unname(name)].routes.append(
                    (IPv4Network((IPv4Address(net), prefix)), IPv4Address(gw) if gw else None))
            elif rtype == NEIGH:
                name, ip, mac, ms = _NEIGH.unpack(value)
                by_name[_unname(name)].neighbours.append((IPv4Address(ip), mac, ms / 1000))
            elif rtype == COUNTER:
                name, count = _COUNTER.unpack_from(value)
                by_name[_unname(name)].counters[value[_COUNTER.size:].decode()] = count
            # Other types: a later kernel's; this one has no use for them.
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as err:
        raise SavedStateError(f"suspend record is malformed: {err}") from None
    return list(by_name.values())
