"""The console ring (io/console.h's xencons_interface): its layout, both
ends, wrap-around, a full ring, free-running indexes past 2**32 masked by
each ring's own size, and a peer's index that puts more than a ring
between producer and consumer."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlab.xen import console as cons
from xenlab.xen.console import ConsolePage, ConsoleRingEnd, ConsoleRingError


def ends(in_start: int = 0, out_start: int = 0):
    buf = bytearray(4096)
    page = ConsolePage(buf)
    page.clear()
    for name, value in (("in_cons", in_start), ("in_prod", in_start),
                        ("out_cons", out_start), ("out_prod", out_start)):
        setattr(page, name, value)
    return buf, page, ConsoleRingEnd(page, backend=False), ConsoleRingEnd(page, backend=True)


def test_layout_is_console_h():
    """in[1024], out[2048], then in_cons, in_prod, out_cons, out_prod (u32)
    and the connection byte; a fresh page is disconnected."""
    assert (cons.IN_OFFSET, cons.OUT_OFFSET, cons.IDX_OFFSET, cons.CONNECTION_OFFSET) == (0, 1024, 3072, 3088)
    buf, page, guest, backend = ends()
    assert buf[3088] == cons.XENCONSOLE_DISCONNECTED == 1
    guest.write(b"abc")
    assert buf[1024:1027] == b"abc"
    assert struct.unpack_from("<4I", buf, 3072) == (0, 0, 0, 3)
    backend.write(b"xy")
    assert buf[0:2] == b"xy"
    assert struct.unpack_from("<4I", buf, 3072) == (0, 2, 0, 3)
    assert backend.read() == b"abc" and guest.read() == b"xy"
    assert struct.unpack_from("<4I", buf, 3072) == (2, 2, 3, 3)
    page.connection = cons.XENCONSOLE_CONNECTED
    assert buf[3088] == 0


def test_output_wraps_around_the_2048_byte_ring():
    _, _, guest, backend = ends(out_start=2040)
    data = bytes(range(100))
    assert guest.write(data) == 100
    assert backend.read() == data


def test_input_wraps_around_the_1024_byte_ring():
    _, _, guest, backend = ends(in_start=1000)
    data = bytes(range(200))
    assert backend.write(data) == 200
    assert guest.read() == data


def test_a_full_ring_takes_nothing_more_until_read():
    _, page, guest, backend = ends()
    assert guest.write(b"x" * 3000) == cons.OUT_SIZE
    assert guest.writable() == 0 and guest.write(b"more") == 0
    assert backend.read(10) == b"x" * 10
    assert guest.write(b"more") == 4
    assert backend.write(b"k" * 2000) == cons.IN_SIZE
    assert backend.write(b"k") == 0


def test_indexes_are_free_running_past_2_to_the_32():
    """The u32 counters wrap; the byte positions are the counters masked by
    each ring's size (MASK_XENCONS_IDX), so nothing is lost at the wrap."""
    _, page, guest, backend = ends(in_start=0xFFFFFFF0, out_start=0xFFFFFFF0)
    assert guest.write(b"0123456789abcdefghijklmnop") == 26
    assert page.out_prod == 10                       # 0xFFFFFFF0 + 26, mod 2**32
    assert backend.read() == b"0123456789abcdefghijklmnop"
    assert backend.write(b"Z" * 40) == 40 and guest.read() == b"Z" * 40
    assert page.in_prod == page.in_cons == 24


@pytest.mark.parametrize("field, value, side", [
    ("out_prod", 5000, "backend"),      # the guest claims more output than the ring holds
    ("in_cons", 0x80000000, "backend"),  # the guest's consumer index far from our producer
    ("in_prod", 3000, "guest"),
    ("out_cons", 0xFFFF0000, "guest"),
])
def test_a_peer_index_more_than_a_ring_away_moves_nothing(field, value, side):
    _, page, guest, backend = ends()
    setattr(page, field, value)
    end = backend if side == "backend" else guest
    with pytest.raises(ConsoleRingError):
        end.read() if field.endswith("prod") else end.write(b"x")
    # Nothing moved: our own indexes are as they were.
    assert (end.in_cons, end.out_prod) == (0, 0)


def test_our_own_index_is_never_read_back_from_the_page():
    """A guest that rewrites out_cons (the backend's) cannot make the
    backend read the same bytes twice or skip any: it keeps its own copy."""
    _, page, guest, backend = ends()
    guest.write(b"hello")
    assert backend.read() == b"hello"
    page.out_cons = 0
    assert backend.read() == b""


def test_a_page_too_small_or_read_only_is_refused():
    with pytest.raises(ValueError):
        ConsolePage(bytearray(100))
    with pytest.raises(ValueError):
        ConsolePage(bytes(4096))


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 2**32 - 1),
       chunks=st.lists(st.binary(min_size=0, max_size=900), max_size=20),
       reads=st.lists(st.integers(1, 3000), max_size=20))
def test_every_byte_written_is_read_once_in_order(start, chunks, reads):
    _, _, guest, backend = ends(in_start=start, out_start=start)
    sent, got = bytearray(), bytearray()
    reads = iter(reads)
    for chunk in chunks:
        n = guest.write(chunk)
        sent += chunk[:n]
        got += backend.read(next(reads, None))
        n = backend.write(chunk)
        assert guest.read() == chunk[:n]
    got += backend.read()
    assert bytes(got) == bytes(sent)
