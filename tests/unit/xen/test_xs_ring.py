"""The store ring (xenlab.xen.xs_ring) on a bytearray page: both ends, the
wrap-around, and a hostile peer's indexes."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlab.xen import xs_wire as w
from xenlab.xen.xs_ring import XsRingEnd, XsRingError, XsRingPage

U32 = 0xFFFFFFFF


def ends(start: int = 0):
    buf = bytearray(4096)
    page = XsRingPage(buf)
    for field in ("req_cons", "req_prod", "rsp_cons", "rsp_prod"):
        setattr(page, field, start)
    return buf, page, XsRingEnd(page, server=False), XsRingEnd(page, server=True)


@given(st.integers(0, U32), st.lists(st.binary(min_size=0, max_size=1500), max_size=20),
       st.data())
def test_bytes_cross_both_rings_in_order_across_the_wrap(start, chunks, data):
    _, _, guest, server = ends(start)
    for direction in ((guest, server), (server, guest)):
        producer, consumer = direction
        sent, got = b"", b""
        for chunk in chunks:
            while chunk:
                n = producer.write(chunk)
                sent += chunk[:n]
                chunk = chunk[n:]
                got += consumer.read(data.draw(st.integers(1, w.XENSTORE_RING_SIZE)))
        while len(got) < len(sent):
            got += consumer.read()
        assert got == sent
        assert consumer.readable() == 0 and producer.writable() == w.XENSTORE_RING_SIZE


def test_a_full_ring_takes_nothing_more():
    _, page, guest, server = ends()
    assert guest.write(b"x" * 2000) == w.XENSTORE_RING_SIZE
    assert guest.write(b"y") == 0
    assert server.read(10) == b"x" * 10
    assert guest.write(b"yy") == 2
    assert page.req_prod - page.req_cons == w.XENSTORE_RING_SIZE - 8


@pytest.mark.parametrize("prod_delta", [w.XENSTORE_RING_SIZE + 1, 0x80000000, U32])
def test_a_producer_index_past_the_ring_is_an_error(prod_delta):
    _, page, _, server = ends(100)
    page.req_prod = (100 + prod_delta) & U32
    with pytest.raises(XsRingError) as info:
        server.read()
    assert info.value.code == w.XENSTORE_ERROR_RINGIDX


@pytest.mark.parametrize("cons", [1, 500, 0x7FFFFFFF])
def test_a_consumer_index_ahead_of_our_producer_is_an_error(cons):
    _, page, _, server = ends()
    page.rsp_cons = cons
    with pytest.raises(XsRingError):
        server.write(b"reply")


def test_our_own_indexes_are_never_read_back():
    _, page, guest, server = ends()
    guest.write(b"abcdef")
    assert server.read(3) == b"abc"
    page.req_cons = 0                       # the guest rewinds xenstored's index
    assert server.read() == b"def"          # nothing is read twice
    assert page.req_cons == 6
    server.write(b"123")
    assert guest.read() == b"123"
    page.rsp_prod = 0                       # the guest rewinds xenstored's other index
    server.write(b"45")
    assert page.rsp_prod == 5               # ours, not the guest's
    assert guest.read() == b"45"


def test_exactly_a_ring_ahead_is_allowed():
    _, page, guest, server = ends()
    page.req_prod = w.XENSTORE_RING_SIZE
    assert server.readable() == w.XENSTORE_RING_SIZE
    assert len(server.read()) == w.XENSTORE_RING_SIZE


def test_the_page_fields_are_where_xs_wire_h_puts_them():
    buf, page, _, _ = ends()
    page.server_features = w.XENSTORE_SERVER_FEATURE_ERROR
    page.connection = w.XENSTORE_RECONNECT
    page.error = w.XENSTORE_ERROR_PROTO
    assert buf[2064:2076] == bytes([2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0])
    page.clear()
    assert buf[:w.XS_RING_INTERFACE_SIZE] == bytes(w.XS_RING_INTERFACE_SIZE)
    page.release()


def test_a_page_too_small_or_read_only_is_refused():
    with pytest.raises(ValueError):
        XsRingPage(bytearray(100))
    with pytest.raises(ValueError):
        XsRingPage(bytes(4096))
