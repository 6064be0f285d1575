"""The save image and migration stream: layout, encoder and a sans-I/O
decoder (docs/SAVE_FORMAT.md).

Modelled on libxc's migration stream v3 (docs/specs/libxc-migration-stream
.pandoc): an image header (big-endian: an all-ones marker, an id, a
version, options), a domain header, then records of type, body length and
body padded to 8 bytes, ending with an END record. Two things are xenlab's
own: every record header carries a CRC-32 of the header and body, and the
END record carries the SHA-256 of every byte before it, so that a flipped
bit, a record lost from the middle or a stream cut short is refused before
anything is built from it. As in libxc, a record type with bit 31 set is
optional: a reader that does not know it skips it; any other unknown type
is refused.

``StreamDecoder`` takes bytes as they come (a file, a socket) and returns
the records it completed; nothing here does I/O, so ``xl save``/``xl
restore`` and a migration stream can share it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from xenlab.xen import abi
from xenlab.xen.errors import XenError

# -- the image header (big-endian, as libxc's) ----------------------------------------
MARKER = 0xFFFFFFFFFFFFFFFF
IMAGE_ID = 0x584C5356           # "XLSV"
VERSION = 1
OPT_BIG_ENDIAN = 0x0001         # options bit 0: records are big-endian (never written)
_IHDR = struct.Struct(">QIIH6x")    # marker, id, version, options, reserved
IHDR_SIZE = _IHDR.size              # 24

# -- the domain header (little-endian, as every record) ------------------------------
GUEST_TYPE_XENLAB_PV = 0x0001
_DHDR = struct.Struct("<IHHII")     # type, page_shift, reserved, xen major, xen minor
DHDR_SIZE = _DHDR.size              # 16, as libxc's
XEN_MAJOR, XEN_MINOR = 4, 19

# -- records ----------------------------------------------------------------------
_RHDR = struct.Struct("<IIII")      # type, body length, crc32, reserved (0)
RHDR_SIZE = _RHDR.size              # 16
OPTIONAL = 0x80000000               # libxc's REC_TYPE_OPTIONAL bit

REC_END = 0x00000000                # body: SHA-256 of every byte before this record
REC_PAGE_DATA = 0x00000001          # count u32, reserved u32, pfn u64[count], pages
REC_VCPU_CONTEXT = 0x00000002       # what the suspended vCPU holds (JSON)
REC_XENSTORE_DATA = 0x00000003      # the domain's nodes, domid-relative
REC_DOMAIN_CONFIG = 0x00000004      # the DomainSpec it was created from (JSON)
REC_DEVICES = 0x00000005            # its devices, as the toolstack set them up (JSON)

RECORD_NAMES = {REC_END: "END", REC_PAGE_DATA: "PAGE_DATA", REC_VCPU_CONTEXT: "VCPU_CONTEXT",
                REC_XENSTORE_DATA: "XENSTORE_DATA", REC_DOMAIN_CONFIG: "DOMAIN_CONFIG",
                REC_DEVICES: "DEVICES"}
# Records a restore cannot do without (each once, except PAGE_DATA).
REQUIRED = (REC_VCPU_CONTEXT, REC_XENSTORE_DATA, REC_DOMAIN_CONFIG, REC_DEVICES)

PAGE_SIZE = abi.PAGE_SIZE
MAX_BATCH = 1024                    # libxc's MAX_BATCH_SIZE
MAX_BODY = 8 + MAX_BATCH * (8 + PAGE_SIZE)   # the largest record: a full page batch
MAX_PFN = (1 << 40) - 1             # libxc's PAGE_DATA keeps pfns in 52 bits; ours far fewer
# A PAGE_DATA entry is libxc's: bits 63-60 the page's type
# (XEN_DOMCTL_PFINFO_* >> 28), 59-52 reserved (0), 51-0 the pfn. Two types
# here: NOTAB, a page whose contents follow, and XTAB, a pfn the domain no
# longer has (given back during pre-copy): no contents; the restore leaves it
# unpopulated.
PFINFO_SHIFT = 60
PFINFO_NOTAB = 0x0
PFINFO_XTAB = 0xF
_PFN_MASK = (1 << 52) - 1
_RESERVED_MASK = ((1 << PFINFO_SHIFT) - 1) & ~_PFN_MASK

# In xenstore records the saved domain's own id is written as DOMID_SELF, so
# that a restore under another id rewrites every permission that named it.
SELF = abi.DOMID_SELF


class StreamError(XenError):
    """A save image or migration stream that cannot be used: one line saying why."""

    def __init__(self, message: str):
        super().__init__(errno.EINVAL, message)


def _pad(n: int) -> int:
    return -n % 8


# -- encoding ------------------------------------------------------------------------
HEADERS_SIZE = IHDR_SIZE + DHDR_SIZE + _pad(DHDR_SIZE)   # the two headers before the first record


def record_extent(header: bytes) -> tuple[int, int]:
    """(type, bytes that follow the header: the body and its padding) of a
    record, from its RHDR_SIZE-byte header: how a reader of a pipe takes one
    image and no byte more (xl migrate's stream goes on with messages after
    it). The record itself is checked by the decoder."""
    rtype, length, _crc, _reserved = _RHDR.unpack(header)
    if length > MAX_BODY:
        name = RECORD_NAMES.get(rtype, f"0x{rtype:08x}")
        raise StreamError(f"record {name} claims {length} bytes (at most {MAX_BODY})")
    return rtype, length + _pad(length)


def image_header() -> bytes:
    return _IHDR.pack(MARKER, IMAGE_ID, VERSION, 0)


def domain_header(page_shift: int = abi.PAGE_SHIFT) -> bytes:
    body = _DHDR.pack(GUEST_TYPE_XENLAB_PV, page_shift, 0, XEN_MAJOR, XEN_MINOR)
    return body + bytes(_pad(len(body)))


def record(rtype: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise ValueError(f"a {RECORD_NAMES.get(rtype, hex(rtype))} record of {len(body)} bytes "
                         f"is over the {MAX_BODY}-byte limit")
    crc = zlib.crc32(body, zlib.crc32(struct.pack("<II", rtype, len(body))))
    return _RHDR.pack(rtype, len(body), crc, 0) + body + bytes(_pad(len(body)))


def json_record(rtype: int, value) -> bytes:
    return record(rtype, json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def page_data(batch: list[tuple[int, bytes | None]]) -> bytes:
    """One PAGE_DATA record: up to MAX_BATCH (pfn, page) pairs; a page of
    None is an XTAB entry (the pfn is no longer the domain's), with no
    contents."""
    if not 0 < len(batch) <= MAX_BATCH:
        raise ValueError(f"a page batch holds 1..{MAX_BATCH} pages, not {len(batch)}")
    entries = [pfn if page is not None else pfn | PFINFO_XTAB << PFINFO_SHIFT
               for pfn, page in batch]
    pages = [bytes(page) for _, page in batch if page is not None]
    if any(len(p) != PAGE_SIZE for p in pages):
        raise ValueError("every page is PAGE_SIZE bytes")
    body = struct.pack(f"<II{len(entries)}Q", len(entries), 0, *entries) + b"".join(pages)
    return record(REC_PAGE_DATA, body)


@dataclass(frozen=True)
class XsNode:
    """A xenstore node, its path relative to the domain's home
    (``local/...``: /local/domain/D/..., ``libxl/...``: /libxl/D/...) and
    its permissions with the domain's own id as DOMID_SELF."""
    path: str
    value: bytes
    perms: tuple[tuple[int, str], ...]


def xenstore_data(nodes: Iterable[XsNode]) -> bytes:
    """XENSTORE_DATA: count u32, then per node path (u16 length), value (u32
    length), permissions (u16 count, then domid u16 and mode byte each)."""
    nodes = list(nodes)
    out = [struct.pack("<I", len(nodes))]
    for node in nodes:
        path = node.path.encode()
        out.append(struct.pack("<H", len(path)) + path)
        out.append(struct.pack("<I", len(node.value)) + node.value)
        out.append(struct.pack("<H", len(node.perms)))
        for domid, mode in node.perms:
            out.append(struct.pack("<Hc", domid, mode.encode()))
    return record(REC_XENSTORE_DATA, b"".join(out))


def end_record(digest: bytes) -> bytes:
    return record(REC_END, digest)


class StreamEncoder:
    """Bytes of a stream, with the running digest its END record needs."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.bytes_out = 0

    def emit(self, data: bytes) -> bytes:
        self._hash.update(data)
        self.bytes_out += len(data)
        return data

    def headers(self) -> bytes:
        return self.emit(image_header() + domain_header())

    def end(self) -> bytes:
        return self.emit(end_record(self._hash.digest()))


# -- decoding ------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    rtype: int
    body: bytes

    @property
    def name(self) -> str:
        return RECORD_NAMES.get(self.rtype, f"0x{self.rtype:08x}")


class StreamDecoder:
    """Feed bytes; get the records they complete. ``done`` once END is read
    and the digest checks; ``finish()`` refuses a stream that stopped short.
    Unknown optional records are dropped here (``skipped`` counts them)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._stage = "image header"
        self.done = False
        self.skipped = 0
        self.offset = 0           # bytes consumed so far

    def feed(self, data: bytes) -> list[Record]:
        if self.done and data:
            raise StreamError(f"{len(data)} byte(s) after the END record")
        self._buf += data
        out = []
        while not self.done:
            got = self._step()
            if got is None:
                break
            if got.rtype != REC_END:
                out.append(got)
        if self.done and self._buf:
            raise StreamError(f"{len(self._buf)} byte(s) after the END record")
        return out

    def finish(self) -> None:
        if not self.done:
            raise StreamError(f"truncated: the stream ends at byte {self.offset + len(self._buf)}, "
                              f"inside the {self._stage}" + (" (no END record)" if self._stage == "records" else ""))

    def _take(self, n: int) -> bytes | None:
        if len(self._buf) < n:
            return None
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self.offset += n
        return chunk

    def _step(self) -> Record | None:
        if self._stage == "image header":
            return self._image_header()
        if self._stage == "domain header":
            return self._domain_header()
        return self._record()

    def _image_header(self) -> None:
        raw = self._take(IHDR_SIZE)
        if raw is None:
            return None
        marker, ident, version, options = _IHDR.unpack(raw)
        if marker != MARKER or ident != IMAGE_ID:
            raise StreamError("not a xenlab save image (bad magic)")
        if version != VERSION:
            raise StreamError(f"save image version {version} is not supported (this xenlab "
                              f"reads version {VERSION})")
        if options & OPT_BIG_ENDIAN:
            raise StreamError("big-endian save images are not supported")
        self._hash.update(raw)
        self._stage = "domain header"
        return self._step()

    def _domain_header(self) -> None:
        raw = self._take(DHDR_SIZE + _pad(DHDR_SIZE))
        if raw is None:
            return None
        gtype, page_shift, _, _, _ = _DHDR.unpack_from(raw)
        if gtype != GUEST_TYPE_XENLAB_PV:
            raise StreamError(f"guest type 0x{gtype:x} is not xenlab's PV guest")
        if page_shift != abi.PAGE_SHIFT:
            raise StreamError(f"page shift {page_shift}: this host's pages are "
                              f"{abi.PAGE_SIZE} bytes")
        self._hash.update(raw)
        self._stage = "records"
        return self._step()

    def _record(self) -> Record | None:
        if len(self._buf) < RHDR_SIZE:
            return None
        rtype, length, crc, reserved = _RHDR.unpack_from(self._buf)
        name = RECORD_NAMES.get(rtype, f"0x{rtype:08x}")
        if length > MAX_BODY:
            raise StreamError(f"record {name} at byte {self.offset} claims {length} bytes "
                              f"(at most {MAX_BODY})")
        total = RHDR_SIZE + length + _pad(length)
        if len(self._buf) < total:
            self._stage = "records"
            return None
        at = self.offset
        raw = self._take(total)
        body = raw[RHDR_SIZE:RHDR_SIZE + length]
        if reserved != 0 or zlib.crc32(body, zlib.crc32(raw[:8])) != crc:
            raise StreamError(f"record {name} at byte {at}: bad checksum (the file is corrupt)")
        if rtype == REC_END:
            if body != self._hash.digest():
                raise StreamError("the END record's digest does not match the stream "
                                  "(a record is missing or altered)")
            self.done = True
            return Record(rtype, body)
        self._hash.update(raw)
        if rtype not in RECORD_NAMES:
            if rtype & OPTIONAL:
                self.skipped += 1
                return self._record()
            raise StreamError(f"record {name} at byte {at} is of an unknown mandatory type")
        return Record(rtype, body)


# -- reading record bodies ------------------------------------------------------------
def parse_page_data(body: bytes) -> Iterator[tuple[int, memoryview | None]]:
    """(pfn, its contents) of each entry; None for an XTAB entry."""
    if len(body) < 8:
        raise StreamError("PAGE_DATA record too short")
    count, _ = struct.unpack_from("<II", body)
    if not 0 < count <= MAX_BATCH or len(body) < 8 + 8 * count:
        raise StreamError(f"PAGE_DATA record of {count} pages has {len(body)} bytes")
    entries = struct.unpack_from(f"<{count}Q", body, 8)
    for entry in entries:
        kind = entry >> PFINFO_SHIFT
        if entry & _RESERVED_MASK:
            raise StreamError(f"PAGE_DATA: entry {entry:#x} has reserved bits set")
        if kind not in (PFINFO_NOTAB, PFINFO_XTAB):
            raise StreamError(f"PAGE_DATA: page type {kind:#x} is not one this stream uses "
                              f"(0: a page, 0xf: XTAB, not present)")
        if entry & _PFN_MASK > MAX_PFN:
            raise StreamError(f"PAGE_DATA: pfn {entry & _PFN_MASK:#x} is out of range")
    with_data = sum(1 for entry in entries if entry >> PFINFO_SHIFT == PFINFO_NOTAB)
    if len(body) != 8 + 8 * count + with_data * PAGE_SIZE:
        contents = f" ({with_data} with contents)" if with_data != count else ""
        raise StreamError(f"PAGE_DATA record of {count} pages{contents} has {len(body)} bytes")
    view = memoryview(body)
    at = 8 + 8 * count
    for entry in entries:
        if entry >> PFINFO_SHIFT == PFINFO_XTAB:
            yield entry & _PFN_MASK, None
        else:
            yield entry, view[at:at + PAGE_SIZE]
            at += PAGE_SIZE


def parse_xenstore_data(body: bytes) -> list[XsNode]:
    try:
        (count,), at = struct.unpack_from("<I", body), 4
        nodes = []
        for _ in range(count):
            (plen,) = struct.unpack_from("<H", body, at)
            # A path or value cut short by the record's end leaves the next
            # unpack_from past it, which raises struct.error.
            path = body[at + 2:at + 2 + plen].decode()
            at += 2 + plen
            (vlen,) = struct.unpack_from("<I", body, at)
            value = body[at + 4:at + 4 + vlen]
            at += 4 + vlen
            (nperms,) = struct.unpack_from("<H", body, at)
            at += 2
            perms = []
            for _ in range(nperms):
                domid, mode = struct.unpack_from("<Hc", body, at)
                perms.append((domid, mode.decode()))
                at += 3
            nodes.append(XsNode(path, bytes(value), tuple(perms)))
    except (struct.error, UnicodeDecodeError):
        raise StreamError("XENSTORE_DATA record is malformed") from None
    if at != len(body):
        raise StreamError("XENSTORE_DATA record has bytes past its last node")
    return nodes


def parse_json(record: Record):
    try:
        return json.loads(record.body)
    except ValueError:
        raise StreamError(f"{record.name} record is not valid JSON") from None


@dataclass
class SaveImage:
    """A whole stream, decoded and checked: what a restore builds from."""
    pages: dict[int, bytes] = field(default_factory=dict)
    vcpu: dict = field(default_factory=dict)
    xenstore: list[XsNode] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    devices: list = field(default_factory=list)
    skipped: int = 0


def read_image(records: Iterable[Record], decoder: StreamDecoder) -> SaveImage:
    """The records of a finished stream, put together; a required record
    missing or repeated is refused."""
    image, seen = SaveImage(), set()
    for rec in records:
        if rec.rtype in seen and rec.rtype != REC_PAGE_DATA:
            raise StreamError(f"record {rec.name} appears twice")
        seen.add(rec.rtype)
        if rec.rtype == REC_PAGE_DATA:
            # A later entry for a pfn wins: pre-copy sends a page again
            # when it changed, and XTAB once the domain gave it back.
            for pfn, page in parse_page_data(rec.body):
                if page is None:
                    image.pages.pop(pfn, None)
                else:
                    image.pages[pfn] = bytes(page)
        elif rec.rtype == REC_XENSTORE_DATA:
            image.xenstore = parse_xenstore_data(rec.body)
        elif rec.rtype == REC_VCPU_CONTEXT:
            image.vcpu = parse_json(rec)
        elif rec.rtype == REC_DOMAIN_CONFIG:
            image.config = parse_json(rec)
        elif rec.rtype == REC_DEVICES:
            image.devices = parse_json(rec)
    decoder.finish()
    missing = [RECORD_NAMES[t] for t in REQUIRED if t not in seen]
    if missing:
        raise StreamError(f"no {', '.join(missing)} record")
    image.skipped = decoder.skipped
    return image


def decode(data: bytes) -> SaveImage:
    """A whole image held in memory."""
    decoder = StreamDecoder()
    return read_image(decoder.feed(data), decoder)
