"""xenstored's wire protocol, as bytes: xen/include/public/io/xs_wire.h.

Every message, in either direction, on a unix socket or a domain's store
ring, is a 16-byte ``xsd_sockmsg`` header (type, req_id, tx_id, len: u32
each) followed by ``len`` bytes of payload, at most XENSTORE_PAYLOAD_MAX.
docs/misc/xenstore.txt gives each type's payload: mostly NUL-terminated
strings; a value (WRITE's second part, READ's answer) is raw bytes; an error
is the errno's *name* ("ENOENT"), not its number.

Pure: no I/O. ``MessageReader`` takes bytes as they arrive (a header may be
split across reads) and hands out whole messages; ``encode`` makes one. The
store ring's layout (``struct xenstore_domain_interface``) is here too, so
that the wire format has one home.
"""
from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass


class XsType(enum.IntEnum):
    """enum xsd_sockmsg_type."""
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15            # only in replies: unsolicited, req_id and tx_id 0
    ERROR = 16                  # only in replies
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed: the value is invalid
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


XS_DEBUG = XsType.CONTROL       # the deprecated alias
XS_TYPE_COUNT = 27              # number of valid types
XS_INVALID = 0xFFFF             # guaranteed to remain an invalid type

# enum xs_watch_type: the two strings of a WATCH_EVENT's payload
XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1

# xsd_errors[]: the errno names that may cross the wire, in the header's
# order ("new errors should be added at the end of the array"). A name not
# listed reads as EINVAL on both sides (xenstored's send_error, libxenstore's
# get_error).
XSD_ERRORS: tuple[tuple[int, str], ...] = (
    (errno.EINVAL, "EINVAL"),
    (errno.EACCES, "EACCES"),
    (errno.EEXIST, "EEXIST"),
    (errno.EISDIR, "EISDIR"),
    (errno.ENOENT, "ENOENT"),
    (errno.ENOMEM, "ENOMEM"),
    (errno.ENOSPC, "ENOSPC"),
    (errno.EIO, "EIO"),
    (errno.ENOTEMPTY, "ENOTEMPTY"),
    (errno.ENOSYS, "ENOSYS"),
    (errno.EROFS, "EROFS"),
    (errno.EBUSY, "EBUSY"),
    (errno.EAGAIN, "EAGAIN"),
    (errno.EISCONN, "EISCONN"),
    (errno.E2BIG, "E2BIG"),
    (errno.EPERM, "EPERM"),
)
_NAME_OF = {num: name for num, name in XSD_ERRORS}
_ERRNO_OF = {name: num for num, name in XSD_ERRORS}

# Violating this is very bad (xenstored drops the connection).
XENSTORE_PAYLOAD_MAX = 4096
# Violating these just gets you an error back.
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# struct xsd_sockmsg: type, req_id, tx_id, len. Native u32s in C; xenlab's
# ABI is x86_64's (see abi.py), little endian.
HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size       # 16
_U32 = 0xFFFFFFFF

OK = b"OK\0"                    # the payload of every reply without a payload of its own


# --------------------------------------------------------------------------
# struct xenstore_domain_interface: one page shared between a domain and
# xenstored. Two byte rings with free-running u32 indexes: the domain
# produces on req (req_prod) and xenstored consumes (req_cons); xenstored
# produces replies and watch events on rsp, the domain consumes.
# --------------------------------------------------------------------------
XENSTORE_RING_SIZE = 1024


def MASK_XENSTORE_IDX(idx: int) -> int:
    return idx & (XENSTORE_RING_SIZE - 1)


XS_RING_REQ = 0                             # char req[XENSTORE_RING_SIZE]
XS_RING_RSP = XENSTORE_RING_SIZE            # char rsp[XENSTORE_RING_SIZE]
XS_RING_REQ_CONS = 2 * XENSTORE_RING_SIZE   # XENSTORE_RING_IDX (u32), written by xenstored
XS_RING_REQ_PROD = XS_RING_REQ_CONS + 4     # written by the domain
XS_RING_RSP_CONS = XS_RING_REQ_CONS + 8     # written by the domain
XS_RING_RSP_PROD = XS_RING_REQ_CONS + 12    # written by xenstored
XS_RING_SERVER_FEATURES = XS_RING_REQ_CONS + 16   # bitmap of XENSTORE_SERVER_FEATURE_*
XS_RING_CONNECTION = XS_RING_REQ_CONS + 20        # XENSTORE_CONNECTED / XENSTORE_RECONNECT
XS_RING_ERROR = XS_RING_REQ_CONS + 24             # XENSTORE_ERROR_*
XS_RING_EVTCHN_PORT = XS_RING_REQ_CONS + 28       # filled in by Xen for dom0less domains
XS_RING_INTERFACE_SIZE = XS_RING_REQ_CONS + 32    # 2080 bytes of the page

XENSTORE_SERVER_FEATURE_RECONNECTION = 1    # the ability to reconnect a ring
XENSTORE_SERVER_FEATURE_ERROR = 2           # the presence of the "error" field
XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4      # XS_WATCH takes a <depth> parameter
XENSTORE_SERVER_FEATURE_DOMID_ANY = 8       # DOMID_ANY in node permissions

XENSTORE_CONNECTED = 0          # the steady state
XENSTORE_RECONNECT = 1          # reconnect in progress

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1         # communication problem
XENSTORE_ERROR_RINGIDX = 2      # invalid ring index
XENSTORE_ERROR_PROTO = 3        # protocol violation (payload too long)

# grant_table.h: GNTTAB_RESERVED_XENSTORE, the grant the domain builder
# fills in for xenstored to map the store page with.
GNTTAB_RESERVED_XENSTORE = 1


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------
class WireError(ValueError):
    """A stream xenstored cannot go on reading: the connection must end.
    ``code`` is the XENSTORE_ERROR_* a ring reports for it."""

    def __init__(self, message: str, code: int = XENSTORE_ERROR_PROTO):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class XsMessage:
    type: int
    req_id: int = 0
    tx_id: int = 0
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        try:
            return XsType(self.type).name
        except ValueError:
            return f"type {self.type}"


def encode(msg: XsMessage) -> bytes:
    """The header and payload of one message."""
    if len(msg.payload) > XENSTORE_PAYLOAD_MAX:
        raise WireError(f"a payload is {XENSTORE_PAYLOAD_MAX} bytes at most, not {len(msg.payload)}")
    for name in ("type", "req_id", "tx_id"):
        if not 0 <= getattr(msg, name) <= _U32:
            raise WireError(f"{name} {getattr(msg, name)} does not fit in a u32")
    return HEADER.pack(msg.type, msg.req_id, msg.tx_id, len(msg.payload)) + msg.payload


class MessageReader:
    """Whole messages out of a byte stream, one at a time, as xenstored's
    handle_input reads them: a header (possibly in pieces), then exactly
    ``len`` payload bytes. A header announcing more than
    XENSTORE_PAYLOAD_MAX is fatal: the stream cannot be resynchronised."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: WireError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out in a message."""
        return len(self._buf)

    def next(self) -> XsMessage | None:
        """The next whole message, or None until more bytes arrive."""
        if self._broken is not None:
            raise self._broken
        if len(self._buf) < HEADER_SIZE:
            return None
        type_, req_id, tx_id, length = HEADER.unpack_from(self._buf)
        if length > XENSTORE_PAYLOAD_MAX:
            self._broken = WireError(f"a header announces {length} payload bytes; "
                                     f"the most is {XENSTORE_PAYLOAD_MAX}")
            raise self._broken
        end = HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        return XsMessage(type_, req_id, tx_id, payload)


# --------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------
def onearg(payload: bytes) -> bytes | None:
    """The payload as its one NUL-terminated string, or None if it is not
    exactly that (xenstored's onearg)."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings at the start of the payload; bytes after
    the last NUL are not a string (xenstored's get_strings)."""
    parts = payload.split(b"\0")
    return parts[:-1]


def count_strings(payload: bytes) -> int:
    """xs_count_strings: how many NULs, i.e. terminated strings."""
    return payload.count(b"\0")


def join(*parts: bytes) -> bytes:
    """Strings, each NUL-terminated."""
    return b"".join(p + b"\0" for p in parts)


def error_payload(err: int) -> bytes:
    """XS_ERROR's payload: the errno's name, or EINVAL for a name the
    header does not list (xenstored's send_error)."""
    return _NAME_OF.get(err, "EINVAL").encode() + b"\0"


def error_from_payload(payload: bytes) -> int:
    """The errno an XS_ERROR carries; EINVAL for a name not in xsd_errors
    (libxenstore's get_error)."""
    name = payload.split(b"\0", 1)[0].decode("ascii", "replace")
    return _ERRNO_OF.get(name, errno.EINVAL)


def error_name(err: int) -> str:
    return _NAME_OF.get(err, "EINVAL")


PERM_LETTERS = "nrwb"       # none, read, write, both: <perm-as-string> is a letter and a domid


def perm_to_string(domid: int, letter: str) -> bytes:
    return f"{letter}{domid}".encode()


def perm_from_string(text: bytes) -> tuple[int, str]:
    """``b"r5"`` -> (5, "r"). ValueError when malformed (xs_strings_to_perms)."""
    if len(text) < 2 or chr(text[0]) not in PERM_LETTERS or not text[1:].isdigit():
        raise ValueError(f"bad permission {text!r}: n, r, w or b and a domain id")
    return int(text[1:]), chr(text[0])


def parse_domid(text: bytes) -> int:
    """<domid>: a decimal 0..65535. ValueError otherwise (xenstored's
    atoi would take garbage as 0; refusing it is kinder)."""
    if not text.isdigit() or len(text) > 5 or int(text) > 0xFFFF:
        raise ValueError(f"bad domain id {text!r}")
    return int(text)
