"""netif codec: sizes and byte offsets as io/netif.h lays them out, round trips, frames."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlab.xen import abi
from xenlab.xen.netif import (ExtraInfo, GsoInfo, NetifError, RxRequest, RxResponse,
                              TxRequest, TxResponse, make_rx_ring, make_tx_ring, split_frame,
                              tx_chunk_sizes, tx_frame_requests)
from xenlab.xen.ring import BackRing, FrontRing

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i16 = st.integers(-0x8000, 0x7FFF)


def _field(buf: bytes, offset: int, fmt: str) -> int:
    return struct.unpack_from("<" + fmt, buf, offset)[0]


def test_tx_request_layout():
    raw = TxRequest(gref=0x11223344, offset=0x5566, flags=0x0708, id=0x99AA, size=0xBBCC).pack()
    assert len(raw) == 12
    assert _field(raw, 0, "I") == 0x11223344
    assert _field(raw, 4, "H") == 0x5566
    assert _field(raw, 6, "H") == 0x0708
    assert _field(raw, 8, "H") == 0x99AA
    assert _field(raw, 10, "H") == 0xBBCC


def test_tx_response_layout():
    raw = TxResponse(id=0x1234, status=abi.NETIF_RSP_DROPPED).pack()
    assert len(raw) == 4
    assert _field(raw, 0, "H") == 0x1234
    assert _field(raw, 2, "h") == -2


def test_rx_request_layout():
    raw = RxRequest(id=0x1234, gref=0xDEADBEEF).pack()
    assert len(raw) == 8
    assert _field(raw, 0, "H") == 0x1234
    assert _field(raw, 2, "H") == 0          # pad
    assert _field(raw, 4, "I") == 0xDEADBEEF


def test_rx_response_layout():
    raw = RxResponse(id=1, offset=0x0203, flags=0x0405, status=-1).pack()
    assert len(raw) == 8
    assert (_field(raw, 0, "H"), _field(raw, 2, "H"), _field(raw, 4, "H"),
            _field(raw, 6, "h")) == (1, 0x0203, 0x0405, -1)


def test_extra_info_layout():
    raw = ExtraInfo(type=abi.XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
                    flags=abi.XEN_NETIF_EXTRA_FLAG_MORE, data=b"\x01\x00\x5e\x00\x00\x01").pack()
    assert raw == bytes([2, 1, 0x01, 0x00, 0x5E, 0x00, 0x00, 0x01])


def test_gso_extra_layout():
    # netif.h: struct { uint16_t size; uint8_t type; uint8_t pad; uint16_t features; } gso
    raw = ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0,
                    GsoInfo(1448, abi.XEN_NETIF_GSO_TYPE_TCPV6).pack()).pack()
    assert raw == bytes([1, 0, 0xA8, 0x05, 2, 0, 0, 0])
    assert GsoInfo.unpack(ExtraInfo.unpack(raw).data) == GsoInfo(1448, abi.XEN_NETIF_GSO_TYPE_TCPV6)


def test_extra_info_pads_and_refuses_long_data():
    assert ExtraInfo(1, 0, b"\x05").data == b"\x05" + bytes(5)
    assert ExtraInfo(1, 0).data == bytes(6)
    with pytest.raises(ValueError):
        ExtraInfo(1, 0, bytes(7))


def test_ring_geometry():
    assert abi.RING_SLOTS_OFFSET == 64
    assert abi.NETIF_TX_SLOT == 12 and abi.NETIF_RX_SLOT == 8
    assert abi.NET_TX_RING_SIZE == 256 and abi.NET_RX_RING_SIZE == 256
    tx, rx = make_tx_ring(bytearray(abi.PAGE_SIZE)), make_rx_ring(bytearray(abi.PAGE_SIZE))
    assert (tx.size, tx.slot_size) == (256, 12)
    assert (rx.size, rx.slot_size) == (256, 8)


def test_flag_and_status_values():
    assert (abi.NETTXF_csum_blank, abi.NETTXF_data_validated, abi.NETTXF_more_data,
            abi.NETTXF_extra_info) == (1, 2, 4, 8)
    assert (abi.NETRXF_data_validated, abi.NETRXF_csum_blank, abi.NETRXF_more_data,
            abi.NETRXF_extra_info, abi.NETRXF_gso_prefix) == (1, 2, 4, 8, 16)
    assert (abi.NETIF_RSP_OKAY, abi.NETIF_RSP_ERROR, abi.NETIF_RSP_DROPPED,
            abi.NETIF_RSP_NULL) == (0, -1, -2, 1)
    assert (abi.XEN_NETIF_EXTRA_TYPE_NONE, abi.XEN_NETIF_EXTRA_TYPE_GSO,
            abi.XEN_NETIF_EXTRA_TYPE_MCAST_ADD, abi.XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
            abi.XEN_NETIF_EXTRA_TYPE_HASH, abi.XEN_NETIF_EXTRA_FLAG_MORE) == (0, 1, 2, 3, 4, 1)
    assert abi.XEN_NETIF_NR_SLOTS_MIN == 18


@given(u32, u16, u16, u16, u16)
def test_tx_request_round_trip(gref, offset, flags, id_, size):
    req = TxRequest(gref, offset, flags, id_, size)
    assert TxRequest.unpack(req.pack()) == req


@given(u16, i16)
def test_tx_response_round_trip(id_, status):
    rsp = TxResponse(id_, status)
    assert TxResponse.unpack(rsp.pack()) == rsp


@given(u16, u32)
def test_rx_request_round_trip(id_, gref):
    req = RxRequest(id_, gref)
    assert RxRequest.unpack(req.pack()) == req


@given(u16, u16, u16, i16)
def test_rx_response_round_trip(id_, offset, flags, status):
    rsp = RxResponse(id_, offset, flags, status)
    assert RxResponse.unpack(rsp.pack()) == rsp


@given(st.integers(0, 255), st.integers(0, 255), st.binary(min_size=6, max_size=6))
def test_extra_info_round_trip(type_, flags, data):
    extra = ExtraInfo(type_, flags, data)
    assert ExtraInfo.unpack(extra.pack()) == extra


def test_messages_travel_through_a_tx_ring():
    sring = make_tx_ring(bytearray(abi.PAGE_SIZE))
    sring.init()
    front, back = FrontRing(sring), BackRing(sring)
    sent = [TxRequest(8, 0, abi.NETTXF_extra_info, 3, 60),
            ExtraInfo(abi.XEN_NETIF_EXTRA_TYPE_GSO, 0, b"\xb4\x05\x01\x00\x00\x00")]
    for msg in sent:
        front.put_request(msg.pack())
    assert front.push_requests_and_check_notify()
    assert TxRequest.unpack(back.get_request()) == sent[0]
    assert ExtraInfo.unpack(back.get_request()) == sent[1]
    back.put_response(TxResponse(3, abi.NETIF_RSP_OKAY).pack())
    back.put_response(TxResponse(0, abi.NETIF_RSP_NULL).pack())
    back.push_responses()
    got = [TxResponse.unpack(front.get_response()) for _ in range(2)]
    assert got == [TxResponse(3, 0), TxResponse(0, 1)]


def test_unpack_reads_the_front_of_a_longer_slot():
    slot = TxResponse(7, -1).pack() + b"\xff" * 8
    assert TxResponse.unpack(slot) == TxResponse(7, -1)


# -- frames <-> slots --------------------------------------------------------

def test_split_frame_single_page():
    assert split_frame(60) == [(0, 60)]
    assert split_frame(1514, first_offset=100) == [(100, 1514)]
    assert split_frame(4096) == [(0, 4096)]


def test_split_frame_crosses_pages():
    assert split_frame(1514, first_offset=4000) == [(4000, 96), (0, 1418)]
    assert split_frame(9000, first_offset=10) == [(10, 4086), (0, 4096), (0, 818)]


@given(st.integers(1, 0xFFFF), st.integers(0, abi.PAGE_SIZE - 1))
def test_split_frame_properties(length, first_offset):
    chunks = split_frame(length, first_offset)
    assert sum(size for _, size in chunks) == length
    assert chunks[0][0] == first_offset
    assert all(off == 0 for off, _ in chunks[1:])
    assert all(size > 0 and off + size <= abi.PAGE_SIZE for off, size in chunks)
    # every chunk but the last runs to the end of its page
    assert all(off + size == abi.PAGE_SIZE for off, size in chunks[:-1])


@pytest.mark.parametrize("length,offset", [(0, 0), (-1, 0), (10, -1), (10, 4096)])
def test_split_frame_refuses_bad_arguments(length, offset):
    with pytest.raises(ValueError):
        split_frame(length, offset)


def test_tx_frame_requests_single_slot():
    (req,) = tx_frame_requests([(100, 60)], grefs=[9], ids=[4], flags=abi.NETTXF_csum_blank)
    assert req == TxRequest(9, 100, abi.NETTXF_csum_blank, 4, 60)


def test_tx_frame_requests_multi_slot_mirrors_netif_h():
    chunks = split_frame(9000, first_offset=10)
    reqs = tx_frame_requests(chunks, grefs=[20, 21, 22], ids=[1, 2, 3],
                             flags=abi.NETTXF_csum_blank)
    # Fragment 1: flags = NETTXF_*, size = total packet size
    assert reqs[0] == TxRequest(20, 10, abi.NETTXF_csum_blank | abi.NETTXF_more_data, 1, 9000)
    # Fragment N: size = fragment size; more_data on all but the last
    assert reqs[1] == TxRequest(21, 0, abi.NETTXF_more_data, 2, 4096)
    assert reqs[2] == TxRequest(22, 0, 0, 3, 818)
    assert tx_chunk_sizes(reqs) == [4086, 4096, 818]


@given(st.integers(1, abi.XEN_NETIF_MAX_TX_SIZE), st.integers(0, abi.PAGE_SIZE - 1))
def test_tx_frame_round_trip(length, first_offset):
    chunks = split_frame(length, first_offset)
    n = len(chunks)
    reqs = tx_frame_requests(chunks, grefs=list(range(n)), ids=list(range(100, 100 + n)))
    assert reqs[0].size == length
    assert [bool(r.flags & abi.NETTXF_more_data) for r in reqs] == [True] * (n - 1) + [False]
    assert tx_chunk_sizes(reqs) == [size for _, size in chunks]
    wire = [TxRequest.unpack(r.pack()) for r in reqs]
    assert wire == reqs


def test_tx_frame_requests_refuses_misuse():
    with pytest.raises(ValueError):
        tx_frame_requests([(0, 10)], grefs=[1], ids=[1], flags=abi.NETTXF_more_data)
    with pytest.raises(ValueError):
        tx_frame_requests([(0, 10), (0, 10)], grefs=[1], ids=[1, 2])
    with pytest.raises(ValueError):
        tx_frame_requests([], grefs=[], ids=[])
    too_long = split_frame(abi.XEN_NETIF_MAX_TX_SIZE + 1)
    with pytest.raises(ValueError):
        tx_frame_requests(too_long, grefs=list(range(len(too_long))),
                          ids=list(range(len(too_long))))


def test_tx_chunk_sizes_refuses_fragments_larger_than_the_frame():
    reqs = [TxRequest(1, 0, abi.NETTXF_more_data, 1, 100), TxRequest(2, 0, 0, 2, 101)]
    with pytest.raises(NetifError) as exc:
        tx_chunk_sizes(reqs)
    assert exc.value.errno == 22
