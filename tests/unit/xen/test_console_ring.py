"""The console ring (io/console.h's xencons_interface): its layout, both
ends, wrap-around, a full ring, free-running indexes past 2**32 masked by
each ring's own size, and a peer's index that puts more than a ring
between producer and consumer."""
from __future__ import annotations

import errno
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


# -- bounds on both sides, refusals, and what each call leaves on the page ----------------
def test_a_page_one_byte_short_of_the_interface_is_refused_and_one_that_fits_is_taken():
    with pytest.raises(ValueError, match="^a console ring needs 3089 writable bytes$"):
        ConsolePage(bytearray(cons.INTERFACE_SIZE - 1))
    with pytest.raises(ValueError, match="^a console ring needs 3089 writable bytes$"):
        ConsolePage(memoryview(bytearray(4096)).toreadonly())
    page = ConsolePage(bytearray(cons.INTERFACE_SIZE))
    page.clear()
    assert page.connection == cons.XENCONSOLE_DISCONNECTED


def test_clear_empties_the_interface_and_nothing_past_it():
    buf = bytearray(b"\xff" * 4096)
    page = ConsolePage(buf)
    page.clear()
    assert buf[:cons.CONNECTION_OFFSET] == bytes(cons.CONNECTION_OFFSET)
    assert buf[cons.CONNECTION_OFFSET] == cons.XENCONSOLE_DISCONNECTED
    assert buf[cons.INTERFACE_SIZE:] == b"\xff" * (4096 - cons.INTERFACE_SIZE)
    assert (page.in_cons, page.in_prod, page.out_cons, page.out_prod) == (0, 0, 0, 0)


def test_the_connection_byte_and_the_indexes_keep_their_width():
    buf, page, _, _ = ends()
    page.connection = 0x1FF
    page.out_prod = 2**32 + 7
    assert buf[cons.CONNECTION_OFFSET] == 0xFF and page.connection == 0xFF
    assert struct.unpack_from("<I", buf, cons.IDX_OFFSET + 12)[0] == 7 == page.out_prod
    assert buf[cons.CONNECTION_OFFSET + 1] == 0


def test_release_lets_the_page_go():
    """A bytearray cannot be resized while a view of it is held: after
    release none is (so the mmap under a real page may be closed)."""
    buf = bytearray(4096)
    page = ConsolePage(buf)
    with pytest.raises(BufferError):
        buf.append(0)
    page.release()
    buf.append(0)


def test_a_ring_exactly_full_of_the_peers_bytes_is_read_whole():
    """prod - cons == the ring's size is a full ring, not a broken one."""
    _, page, guest, backend = ends()
    page.in_prod = cons.IN_SIZE
    assert guest.readable() == cons.IN_SIZE and len(guest.read()) == cons.IN_SIZE
    assert page.in_cons == cons.IN_SIZE and guest.readable() == 0
    page.out_prod = cons.OUT_SIZE
    assert backend.readable() == cons.OUT_SIZE and len(backend.read()) == cons.OUT_SIZE
    assert page.out_cons == cons.OUT_SIZE


@pytest.mark.parametrize("side, field, size", [("guest", "in_prod", cons.IN_SIZE),
                                               ("backend", "out_prod", cons.OUT_SIZE)])
def test_a_producer_one_past_a_full_ring_is_refused_with_eio(side, field, size):
    _, page, guest, backend = ends()
    end = guest if side == "guest" else backend
    setattr(page, field, size + 1)
    with pytest.raises(ConsoleRingError) as err:
        end.readable()
    assert err.value.errno == errno.EIO
    assert err.value.message == (f"producer index {size + 1} is {size + 1} bytes past consumer "
                                 f"0: more than the {size}-byte ring")
    with pytest.raises(ConsoleRingError):
        end.read()
    assert end.in_cons == 0 and getattr(page, field.replace("prod", "cons")) == 0


@pytest.mark.parametrize("side, field, size", [("guest", "out_cons", cons.OUT_SIZE),
                                               ("backend", "in_cons", cons.IN_SIZE)])
def test_a_consumer_exactly_a_ring_behind_leaves_no_room_and_one_more_is_refused(side, field,
                                                                                 size):
    _, page, guest, backend = ends()
    end = guest if side == "guest" else backend
    setattr(page, field, (-size) & 0xFFFFFFFF)
    assert end.writable() == 0 and end.write(b"x") == 0
    setattr(page, field, (-size - 1) & 0xFFFFFFFF)
    with pytest.raises(ConsoleRingError) as err:
        end.writable()
    assert err.value.errno == errno.EIO
    assert err.value.message == (f"consumer index {2**32 - size - 1} is {size + 1} bytes "
                                 f"behind producer 0: more than the {size}-byte ring")
    setattr(page, field, (-size + 1) & 0xFFFFFFFF)
    assert end.writable() == 1 and end.write(b"xy") == 1


def test_a_read_takes_no_more_than_its_limit_and_consumes_only_that():
    _, page, guest, backend = ends()
    guest.write(b"abcdef")
    assert backend.read(0) == b"" and page.out_cons == 0
    assert backend.read(1) == b"a" and page.out_cons == 1
    assert backend.read(5) == b"bcdef" and page.out_cons == 6
    assert backend.read(5) == b"" and page.out_cons == 6


def test_writing_nothing_moves_nothing():
    buf, page, guest, _ = ends()
    before = bytes(buf)
    assert guest.write(b"") == 0
    assert bytes(buf) == before and guest.out_prod == 0


def test_each_end_starts_from_the_indexes_on_the_page():
    """A backend attached to a ring the guest has used (xenconsoled
    restarted) starts where the page says, not at 0."""
    _, page, guest, _ = ends(in_start=100, out_start=200)
    guest.write(b"hello")
    backend = ConsoleRingEnd(page, backend=True)
    assert (backend.in_cons, backend.out_prod) == (200, 100)
    assert backend.read() == b"hello"
    assert backend.write(b"k") == 1 and guest.read() == b"k"
    assert (page.in_prod, page.in_cons, page.out_cons, page.out_prod) == (101, 101, 205, 205)


def test_a_read_that_wraps_copies_the_tail_then_the_head():
    buf, page, guest, backend = ends(out_start=cons.OUT_SIZE - 3)
    buf[cons.OUT_OFFSET + cons.OUT_SIZE - 3:cons.OUT_OFFSET + cons.OUT_SIZE] = b"ABC"
    buf[cons.OUT_OFFSET:cons.OUT_OFFSET + 2] = b"DE"
    page.out_prod = cons.OUT_SIZE + 2
    assert backend.read() == b"ABCDE"


def test_a_write_that_wraps_fills_the_tail_then_the_head():
    buf, page, guest, _ = ends(out_start=cons.OUT_SIZE - 3)
    assert guest.write(b"123456") == 6
    assert buf[cons.OUT_OFFSET + cons.OUT_SIZE - 3:cons.OUT_OFFSET + cons.OUT_SIZE] == b"123"
    assert buf[cons.OUT_OFFSET:cons.OUT_OFFSET + 4] == b"456\0"
    assert page.out_prod == cons.OUT_SIZE + 3


def test_a_page_of_exactly_the_interface_holds_both_rings_whole():
    """The rings are views of exactly their size at their offsets, whatever
    the buffer's length: a full ring each way on a 3089-byte page touches
    neither the other ring nor the indexes."""
    buf = bytearray(cons.INTERFACE_SIZE)
    page = ConsolePage(buf)
    page.clear()
    assert (len(page.in_), len(page.out)) == (cons.IN_SIZE, cons.OUT_SIZE)
    guest, backend = ConsoleRingEnd(page, backend=False), ConsoleRingEnd(page, backend=True)
    assert guest.write(b"o" * 3000) == cons.OUT_SIZE
    assert backend.write(b"i" * 3000) == cons.IN_SIZE
    assert buf[:cons.OUT_OFFSET] == b"i" * cons.IN_SIZE
    assert buf[cons.OUT_OFFSET:cons.IDX_OFFSET] == b"o" * cons.OUT_SIZE
    assert struct.unpack_from("<4I", buf, cons.IDX_OFFSET) == (0, cons.IN_SIZE, 0, cons.OUT_SIZE)
    assert backend.read() == b"o" * cons.OUT_SIZE and guest.read() == b"i" * cons.IN_SIZE


def test_a_call_that_moves_nothing_writes_nothing_to_the_page():
    """An empty read or write leaves the shared indexes alone, even those
    this end owns and its peer has scribbled on: an end publishes its own
    copy only with bytes moved."""
    buf, page, guest, backend = ends()
    guest.write(b"hello")
    backend.read()
    page.out_cons, page.in_prod = 1234, 99        # the indexes the backend owns
    before = bytes(buf)
    assert backend.read() == b"" and backend.write(b"") == 0
    assert bytes(buf) == before
    buf, page, guest, backend = ends()
    page.in_cons, page.out_prod = 55, 66          # the indexes the guest owns
    before = bytes(buf)
    assert guest.read() == b"" and guest.write(b"") == 0
    assert bytes(buf) == before
