"""netif requests and responses (io/netif.h) as typed values, and their rings.

Each message packs to and unpacks from the abi struct of the same name; a
ring slot is the union of the request and the response, so unpack reads the
front of a (longer) slot. Frames map to slots as netif.h's "Guest transmit"
wire format says: the first tx request carries the frame's total size and
every request but the last has NETTXF_more_data.
"""
from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from xenlab.xen import abi
from xenlab.xen.errors import XenError
from xenlab.xen.ring import SharedRing

_EXTRA_DATA_LEN = abi.NETIF_EXTRA_INFO.size - 2   # after type and flags

# The same messages as plain tuples, for the driver cores' per-slot paths,
# where an object per slot would cost more than the slot's own work. The
# fields come in the order of the classes below (rx requests with their pad).
pack_tx_request = abi.NETIF_TX_REQUEST.pack              # (gref, offset, flags, id, size)
unpack_tx_request = abi.NETIF_TX_REQUEST.unpack_from
pack_tx_response = abi.NETIF_TX_RESPONSE.pack            # (id, status)
unpack_tx_response = abi.NETIF_TX_RESPONSE.unpack_from
pack_rx_request = abi.NETIF_RX_REQUEST.pack              # (id, pad, gref)
unpack_rx_request = abi.NETIF_RX_REQUEST.unpack_from
pack_rx_response = abi.NETIF_RX_RESPONSE.pack            # (id, offset, flags, status)
unpack_rx_response = abi.NETIF_RX_RESPONSE.unpack_from


class NetifError(XenError):
    """A netif descriptor sequence that netback would refuse."""

    def __init__(self, message: str):
        super().__init__(errno.EINVAL, message)


@dataclass(frozen=True, slots=True)
class TxRequest:
    """netif_tx_request: one slot of a guest-transmitted frame."""

    gref: int      # grant reference of the buffer page
    offset: int    # offset within the buffer page
    flags: int     # NETTXF_*
    id: int        # echoed in the response
    size: int      # first slot: total frame size; later slots: this fragment's size

    def pack(self) -> bytes:
        return pack_tx_request(self.gref, self.offset, self.flags, self.id, self.size)

    @classmethod
    def unpack(cls, buf) -> TxRequest:
        return cls(*unpack_tx_request(buf))


@dataclass(frozen=True, slots=True)
class TxResponse:
    """netif_tx_response."""

    id: int        # the id of the request answered
    status: int    # NETIF_RSP_*

    def pack(self) -> bytes:
        return pack_tx_response(self.id, self.status)

    @classmethod
    def unpack(cls, buf) -> TxResponse:
        return cls(*unpack_tx_response(buf))


@dataclass(frozen=True, slots=True)
class RxRequest:
    """netif_rx_request: a granted page the backend may fill."""

    id: int        # echoed in the response
    gref: int      # grant reference of the receive page

    def pack(self) -> bytes:
        return pack_rx_request(self.id, 0, self.gref)

    @classmethod
    def unpack(cls, buf) -> RxRequest:
        id_, _pad, gref = unpack_rx_request(buf)
        return cls(id_, gref)


@dataclass(frozen=True, slots=True)
class RxResponse:
    """netif_rx_response."""

    id: int        # the id of the request answered
    offset: int    # offset in the page of the received data
    flags: int     # NETRXF_*
    status: int    # < 0: NETIF_RSP_*; otherwise the bytes received in this slot

    def pack(self) -> bytes:
        return pack_rx_response(self.id, self.offset, self.flags, self.status)

    @classmethod
    def unpack(cls, buf) -> RxResponse:
        return cls(*unpack_rx_response(buf))


@dataclass(frozen=True, slots=True)
class ExtraInfo:
    """netif_extra_info: a descriptor overlaying a tx request or an rx response slot."""

    type: int      # XEN_NETIF_EXTRA_TYPE_*
    flags: int     # XEN_NETIF_EXTRA_FLAG_*
    data: bytes = bytes(_EXTRA_DATA_LEN)   # the type-specific union, zero padded

    def __post_init__(self):
        if len(self.data) > _EXTRA_DATA_LEN:
            raise ValueError(f"extra info data is at most {_EXTRA_DATA_LEN} bytes")
        object.__setattr__(self, "data", bytes(self.data).ljust(_EXTRA_DATA_LEN, b"\0"))

    def pack(self) -> bytes:
        return abi.NETIF_EXTRA_INFO.pack(self.type, self.flags, self.data)

    @classmethod
    def unpack(cls, buf) -> ExtraInfo:
        return cls(*abi.NETIF_EXTRA_INFO.unpack_from(buf))


@dataclass(frozen=True, slots=True)
class GsoInfo:
    """The gso member of netif_extra_info's union (XEN_NETIF_EXTRA_TYPE_GSO)."""

    size: int           # the maximum payload of each segment
    type: int           # XEN_NETIF_GSO_TYPE_*
    features: int = 0   # XEN_NETIF_GSO_FEAT_* (none defined)

    def pack(self) -> bytes:
        return abi.NETIF_EXTRA_GSO.pack(self.size, self.type, 0, self.features)

    @classmethod
    def unpack(cls, data) -> GsoInfo:
        size, type_, _pad, features = abi.NETIF_EXTRA_GSO.unpack_from(data)
        return cls(size, type_, features)


def make_tx_ring(buf) -> SharedRing:
    """The netif_tx shared ring (NET_TX_RING_SIZE slots) over one page."""
    return SharedRing(buf, abi.NETIF_TX_SLOT)


def make_rx_ring(buf) -> SharedRing:
    """The netif_rx shared ring (NET_RX_RING_SIZE slots) over one page."""
    return SharedRing(buf, abi.NETIF_RX_SLOT)


def split_frame(length: int, first_offset: int = 0) -> list[tuple[int, int]]:
    """(offset, size) chunks of a frame laid out from first_offset, one per page.

    No chunk crosses a page boundary (netback refuses offset + size > 4096);
    chunks after the first start at offset 0 of the next page.
    """
    if length <= 0:
        raise ValueError(f"frame length must be positive, got {length}")
    if not 0 <= first_offset < abi.PAGE_SIZE:
        raise ValueError(f"first offset {first_offset} is outside a page")
    chunks = []
    offset = first_offset
    while length:
        size = min(length, abi.PAGE_SIZE - offset)
        chunks.append((offset, size))
        length -= size
        offset = 0
    return chunks


def tx_frame_requests(chunks: Sequence[tuple[int, int]], grefs: Sequence[int],
                      ids: Sequence[int], flags: int = 0) -> list[TxRequest]:
    """The tx requests of one frame, as netif.h's "Guest transmit" lays them out.

    The first request carries ``flags`` and the total frame size; every later
    one its own chunk size. All but the last have NETTXF_more_data. Extra info
    slots (flags with NETTXF_extra_info) go right after the first request; that
    is the caller's to place.
    """
    if not chunks or not len(chunks) == len(grefs) == len(ids):
        raise ValueError("need one gref and one id per chunk, and at least one chunk")
    if flags & abi.NETTXF_more_data:
        raise ValueError("NETTXF_more_data is set per slot, not by the caller")
    total = sum(size for _, size in chunks)
    if total > abi.XEN_NETIF_MAX_TX_SIZE:
        raise ValueError(f"frame of {total} bytes exceeds XEN_NETIF_MAX_TX_SIZE")
    last = len(chunks) - 1
    requests = []
    for i, ((offset, size), gref, id_) in enumerate(zip(chunks, grefs, ids)):
        more = abi.NETTXF_more_data if i < last else 0
        if i == 0:
            requests.append(TxRequest(gref, offset, flags | more, id_, total))
        else:
            requests.append(TxRequest(gref, offset, more, id_, size))
    return requests


def tx_chunk_sizes(requests: Sequence[TxRequest]) -> list[int]:
    """Each slot's own data size in one tx frame (the first is the total minus the rest).

    As netback's xenvif_count_requests, a later slot larger than what remains
    of the first slot's total is an error (netback drops the frame).
    """
    if not requests:
        raise ValueError("a frame has at least one request")
    rest = [r.size for r in requests[1:]]
    first = requests[0].size - sum(rest)
    if first < 0:
        raise NetifError(f"fragments total {sum(rest)} bytes, more than the frame's "
                         f"{requests[0].size}")
    return [first, *rest]


# xenlab's own xenstore key, in the frontend's and the backend's directory
# (netif.h has no such feature): the frontend keeps its buffer pages granted
# for the whole connection, so the backend may map each once and copy
# through the mapping instead of through the hypervisor. Xen's
# ``feature-persistent`` is blkif's key for the same idea, for block devices
# only, which is why this one carries xenlab's name.
FEATURE_XENLAB_PERSISTENT = "feature-xenlab-persistent"
