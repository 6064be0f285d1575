"""The io/ring.h shared ring: a frontend and a backend on one real page.

The notify and final-check results are compared with a reference written from
Xen's macros (RING_PUSH_*_AND_CHECK_NOTIFY, RING_FINAL_CHECK_FOR_*), in u32
arithmetic, including runs whose free-running indexes wrap past 2^32.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import struct
from collections import deque

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from xenlab.xen import abi
from xenlab.xen.errors import XenError
from xenlab.xen.ring import BackRing, FrontRing, RingEmpty, RingError, RingFull, SharedRing

U32 = 0xFFFFFFFF
u32 = st.integers(0, U32)
# 8 and 12 are the netif rx/tx slots (256 entries); the big slots give 16, 8 and 4 entries
# so that full rings and index wraps are reached within a run.
SLOT_SIZES = st.sampled_from([8, 12, 250, 500, 1000])
STARTS = st.one_of(st.just(0), st.just(0xFFFFFF00), st.integers(U32 - 40, U32), u32)


def xen_notify(old: int, new: int, event: int) -> bool:
    """RING_PUSH_*_AND_CHECK_NOTIFY: (RING_IDX)(new - event) < (RING_IDX)(new - old)."""
    return (new - event) & U32 < (new - old) & U32


def new_ring(slot_size: int, start: int = 0) -> tuple[bytearray, SharedRing]:
    buf = bytearray(abi.PAGE_SIZE)
    sring = SharedRing(buf, slot_size)
    sring.init()
    if start:
        sring.req_prod = sring.rsp_prod = start
        sring.req_event = sring.rsp_event = start + 1
    return buf, sring


def payload(n: int, slot_size: int) -> bytes:
    return n.to_bytes(8, "little")[:slot_size]


class RingMachine(RuleBasedStateMachine):
    """Front and back in random interleavings against a model of what each has produced."""

    @initialize(slot_size=SLOT_SIZES, start=STARTS)
    def setup(self, slot_size, start):
        self.buf, self.sring = new_ring(slot_size, start)
        self.size = self.sring.size
        self.slot_size = slot_size
        self.front = FrontRing(self.sring, attach=True)
        self.back = BackRing(self.sring, attach=True)
        self.reqs_private, self.reqs_pushed = deque(), deque()
        self.in_service = deque()          # consumed by the backend, not answered yet
        self.rsps_private, self.rsps_pushed = deque(), deque()
        self.sent, self.answered = [], []
        self.counter = 0
        # SHARED_RING_INIT sets both events to prod + 1: both ends start waiting for a kick.
        self.back_asleep = self.front_asleep = True
        self.start = start

    def _pad(self, data: bytes) -> bytes:
        return data.ljust(self.slot_size, b"\0")

    def _outstanding(self) -> int:
        return (len(self.reqs_private) + len(self.reqs_pushed) + len(self.in_service)
                + len(self.rsps_private) + len(self.rsps_pushed))

    # -- frontend ------------------------------------------------------------
    @rule()
    def put_request(self):
        if self.front.full():
            with pytest.raises(RingFull):
                self.front.put_request(b"x")
            assert self._outstanding() == self.size
            note_event("ring full")
            return
        before = self.front.req_prod_pvt
        n = self.counter
        self.counter += 1
        assert self.front.put_request(payload(n, self.slot_size)) == before
        assert self.front.req_prod_pvt == (before + 1) & U32
        self.reqs_private.append(n)
        self.sent.append(n)

    @rule(k=st.integers(1, 64))
    def burst(self, k):
        for _ in range(min(k, self.front.free_requests())):
            self.put_request()
        self.push_requests_and_check_notify()

    @rule()
    def push_requests(self):
        self.front.push_requests()
        assert self.sring.req_prod == self.front.req_prod_pvt
        if self.reqs_private:
            self.back_asleep = False       # a plain push is always followed by a kick
        self.reqs_pushed.extend(self.reqs_private)
        self.reqs_private.clear()

    @rule()
    def push_requests_and_check_notify(self):
        old, new, event = self.sring.req_prod, self.front.req_prod_pvt, self.sring.req_event
        notify = self.front.push_requests_and_check_notify()
        assert notify == xen_notify(old, new, event)
        note_event(f"request push notify={notify}")
        assert self.sring.req_prod == new
        if new < self.start:
            note_event("req_prod wrapped past 2^32")
        if self.reqs_private and self.back_asleep:
            assert notify, "a backend that went to sleep must be woken by new requests"
        if notify:
            self.back_asleep = False
        self.reqs_pushed.extend(self.reqs_private)
        self.reqs_private.clear()

    @rule()
    def get_response(self):
        if not self.rsps_pushed:
            with pytest.raises(RingEmpty):
                self.front.get_response()
            return
        n = self.rsps_pushed.popleft()
        assert self.front.get_response() == self._pad(payload(n | 1 << 60, self.slot_size))
        self.answered.append(n)

    @rule()
    def final_check_for_responses(self):
        work = self.front.final_check_for_responses()
        assert work == bool(self.rsps_pushed)
        if not work:
            assert self.sring.rsp_event == (self.front.rsp_cons + 1) & U32
            self.front_asleep = True

    # -- backend -------------------------------------------------------------
    @rule()
    def get_request(self):
        assert self.back.request_cons_overflow(self.back.req_cons) == (
            len(self.in_service) >= self.size)
        if not self.reqs_pushed:
            with pytest.raises(RingEmpty):
                self.back.get_request()
            return
        n = self.reqs_pushed.popleft()
        assert self.back.get_request() == self._pad(payload(n, self.slot_size))
        self.in_service.append(n)

    @rule()
    def put_response(self):
        if not self.in_service:
            with pytest.raises(RingError):
                self.back.put_response(b"r")
            return
        n = self.in_service.popleft()
        self.back.put_response(payload(n | 1 << 60, self.slot_size))
        self.rsps_private.append(n)

    @rule()
    def push_responses(self):
        self.back.push_responses()
        assert self.sring.rsp_prod == self.back.rsp_prod_pvt
        if self.rsps_private:
            self.front_asleep = False
        self.rsps_pushed.extend(self.rsps_private)
        self.rsps_private.clear()

    @rule()
    def push_responses_and_check_notify(self):
        old, new, event = self.sring.rsp_prod, self.back.rsp_prod_pvt, self.sring.rsp_event
        notify = self.back.push_responses_and_check_notify()
        assert notify == xen_notify(old, new, event)
        if self.rsps_private and self.front_asleep:
            assert notify, "a frontend that went to sleep must be woken by new responses"
        if notify:
            self.front_asleep = False
        self.rsps_pushed.extend(self.rsps_private)
        self.rsps_private.clear()

    @rule()
    def final_check_for_requests(self):
        work = self.back.final_check_for_requests()
        assert work == bool(self.reqs_pushed)
        if not work:
            assert self.sring.req_event == (self.back.req_cons + 1) & U32
            self.back_asleep = True

    @precondition(lambda self: self.sent)
    @rule()
    def drain(self):
        """Everything sent comes back, in order, with each end finishing asleep."""
        self.push_requests_and_check_notify()
        while self.reqs_pushed:
            self.get_request()
        self.final_check_for_requests()
        while self.in_service:
            self.put_response()
        self.push_responses_and_check_notify()
        while self.rsps_pushed:
            self.get_response()
        self.final_check_for_responses()
        assert self.answered == self.sent
        assert self.back_asleep and self.front_asleep

    # -- invariants ----------------------------------------------------------
    @invariant()
    def fifo_nothing_lost_or_duplicated(self):
        if hasattr(self, "front"):
            assert self.answered == self.sent[:len(self.answered)]
            assert [*self.answered, *self.rsps_pushed, *self.rsps_private, *self.in_service,
                    *self.reqs_pushed, *self.reqs_private] == self.sent

    @invariant()
    def counts_agree_with_the_model(self):
        if hasattr(self, "front"):
            outstanding = self._outstanding()
            assert 0 <= outstanding <= self.size
            assert self.front.free_requests() == self.size - outstanding
            assert self.front.full() == (outstanding == self.size)
            assert self.back.unconsumed_requests() == len(self.reqs_pushed)
            assert self.front.unconsumed_responses() == len(self.rsps_pushed)
            assert not self.back.request_overflow()
            assert not self.front.response_overflow()


RingMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=120,
                                         deadline=None)
TestRingMachine = RingMachine.TestCase


# -- the page ----------------------------------------------------------------

def test_header_layout_is_little_endian_u32_at_the_abi_offsets():
    buf, sring = new_ring(12)
    sring.req_prod, sring.req_event = 0x01020304, 0x05060708
    sring.rsp_prod, sring.rsp_event = 0x11121314, 0xFFFFFFFF
    assert struct.unpack_from("<I", buf, abi.RING_REQ_PROD)[0] == 0x01020304
    assert struct.unpack_from("<I", buf, abi.RING_REQ_EVENT)[0] == 0x05060708
    assert struct.unpack_from("<I", buf, abi.RING_RSP_PROD)[0] == 0x11121314
    assert struct.unpack_from("<I", buf, abi.RING_RSP_EVENT)[0] == 0xFFFFFFFF
    sring.req_prod = 1 << 32 | 5                  # indexes are u32: they wrap on store
    assert sring.req_prod == 5


def test_init_is_shared_ring_init():
    buf = bytearray(b"\xaa" * abi.PAGE_SIZE)
    sring = SharedRing(buf, 12)
    sring.init()
    assert (sring.req_prod, sring.req_event, sring.rsp_prod, sring.rsp_event) == (0, 1, 0, 1)
    assert buf[abi.RING_PVT:abi.RING_SLOTS_OFFSET] == bytes(48)
    assert buf[abi.RING_SLOTS_OFFSET:] == b"\xaa" * (abi.PAGE_SIZE - 64)   # slots untouched


def test_slots_start_at_64_and_are_masked():
    buf, sring = new_ring(12)
    assert sring.size == 256
    sring.slot(1)[:] = b"A" * 12
    assert buf[64 + 12:64 + 24] == b"A" * 12
    assert sring.slot(257).tobytes() == b"A" * 12
    assert sring.slot(U32).tobytes() == buf[64 + 255 * 12:64 + 256 * 12]


def test_buffer_checks():
    with pytest.raises(ValueError, match="^a shared ring needs a writable buffer$"):
        SharedRing(bytes(abi.PAGE_SIZE), 12)
    with pytest.raises(ValueError, match="^a shared ring needs a 4096-byte page, got 4095$"):
        SharedRing(bytearray(abi.PAGE_SIZE - 1), 12)
    SharedRing(bytearray(abi.PAGE_SIZE), 12)
    with pytest.raises(ValueError, match="^slot size 0 does not fit a ring page$"):
        SharedRing(bytearray(abi.PAGE_SIZE), 0)
    with pytest.raises(ValueError, match="^slot size 4033 does not fit a ring page$"):
        SharedRing(bytearray(abi.PAGE_SIZE), abi.PAGE_SIZE - abi.RING_SLOTS_OFFSET + 1)
    big = SharedRing(bytearray(abi.PAGE_SIZE), abi.PAGE_SIZE - abi.RING_SLOTS_OFFSET)
    assert big.size == 1
    assert SharedRing(bytearray(abi.PAGE_SIZE), 1).size == 2048   # 4032 slots, rounded down


def test_a_page_that_is_not_4_byte_aligned_is_refused():
    """Each index is one aligned 32-bit access, or the peer could see it torn."""
    raw = bytearray(abi.PAGE_SIZE + 8)
    aligned = -ctypes.addressof((ctypes.c_char * 1).from_buffer(raw)) % 4
    buf = memoryview(raw)
    SharedRing(buf[aligned:aligned + abi.PAGE_SIZE], 12)
    for offset in (aligned + 1, aligned + 2, aligned + 3):
        with pytest.raises(ValueError, match="^a shared ring page must be 4-byte aligned$"):
            SharedRing(buf[offset:offset + abi.PAGE_SIZE], 12)


def test_release_lets_an_mmap_close():
    mm = mmap.mmap(-1, 2 * abi.PAGE_SIZE)
    sring = SharedRing(memoryview(mm)[abi.PAGE_SIZE:], 8)
    sring.init()
    assert mm[abi.PAGE_SIZE + abi.RING_REQ_EVENT] == 1
    sring.release()
    mm.close()


# -- u32 wrap ----------------------------------------------------------------

def test_requests_and_responses_across_the_u32_wrap():
    buf, sring = new_ring(1000, start=0xFFFFFFFE)     # 4 slots
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    assert (front.req_prod_pvt, front.rsp_cons) == (0xFFFFFFFE, 0xFFFFFFFE)
    seen = []
    for rnd in range(3):
        for i in range(4):
            front.put_request(bytes([rnd, i]))
        assert front.full()
        with pytest.raises(RingFull):
            front.put_request(b"")
        # each round finds the backend asleep after its final check, so each round kicks
        assert front.push_requests_and_check_notify()
        assert back.unconsumed_requests() == 4
        while back.unconsumed_requests():
            back.put_response(back.get_request()[:2])
        assert not back.final_check_for_requests()
        assert back.push_responses_and_check_notify()
        while front.unconsumed_responses():
            seen.append(front.get_response()[:2])
        assert not front.final_check_for_responses()
    assert seen == [bytes([r, i]) for r in range(3) for i in range(4)]
    assert sring.req_prod == sring.rsp_prod == (0xFFFFFFFE + 12) & U32 == 10
    assert (front.req_prod_pvt, back.req_cons, back.rsp_prod_pvt) == (10, 10, 10)


def test_notify_across_the_wrap_matches_the_macro():
    buf, sring = new_ring(12, start=0xFFFFFFFF)
    front = FrontRing(sring, attach=True)
    assert sring.req_event == 0                      # prod + 1 wrapped
    for _ in range(3):
        front.put_request(b"q")
    assert front.push_requests_and_check_notify()    # 0xFFFFFFFF -> 2 passes event 0
    assert xen_notify(0xFFFFFFFF, 2, 0)


def test_batched_event_holds_off_notifications():
    """A consumer may set req_event further ahead (ring.h: "create batches of work")."""
    buf, sring = new_ring(12, start=0xFFFFFFFC)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    sring.req_event = (back.req_cons + 5) & U32
    kicks = []
    for _ in range(6):
        front.put_request(b"q")
        kicks.append(front.push_requests_and_check_notify())
    assert kicks == [False, False, False, False, True, False]


@given(old=u32, k=st.integers(0, 256), event=u32)
def test_notify_is_true_exactly_when_the_push_passes_the_event(old, k, event):
    buf, sring = new_ring(12, start=old)
    sring.req_event = event
    front = FrontRing(sring, attach=True)
    for _ in range(k):
        front.put_request(b"")
    passed = any((old + i) & U32 == event for i in range(1, k + 1))
    assert front.push_requests_and_check_notify() == xen_notify(old, (old + k) & U32, event)
    assert xen_notify(old, (old + k) & U32, event) == passed


# -- misbehaving peers --------------------------------------------------------

@settings(max_examples=500)
@given(slot_size=SLOT_SIZES, start=STARTS, data=st.data(),
       garbage=st.tuples(u32, u32, u32, u32), slot_junk=st.binary(min_size=1, max_size=64))
def test_hostile_frontend_cannot_push_the_backend_past_the_ring(slot_size, start, data,
                                                                garbage, slot_junk):
    buf, sring = new_ring(slot_size, start)
    size = sring.size
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    sent = data.draw(st.integers(0, size))
    for _ in range(sent):
        front.put_request(b"ok")
    front.push_requests()
    taken = data.draw(st.integers(0, sent))
    for _ in range(taken):
        back.get_request()
    for _ in range(data.draw(st.integers(0, taken))):
        back.put_response(b"r")
    back.push_responses()

    # The frontend scribbles over the whole header and the slots.
    req_prod = garbage[0]
    sring.req_prod, sring.req_event, sring.rsp_prod, sring.rsp_event = garbage
    buf[abi.RING_SLOTS_OFFSET:abi.RING_SLOTS_OFFSET + len(slot_junk)] = slot_junk

    cons, pvt = back.req_cons, back.rsp_prod_pvt
    in_service = (cons - pvt) & U32
    n = back.unconsumed_requests()
    assert 0 <= n <= size - in_service
    assert n == min((req_prod - cons) & U32, size - in_service)
    assert back.request_overflow() == ((req_prod - pvt) & U32 > size)

    got = [back.get_request() for _ in range(n)]
    assert all(len(r) == slot_size for r in got)
    assert back.unconsumed_requests() == 0
    with pytest.raises(RingEmpty):
        back.get_request()
    assert back.req_cons == (cons + n) & U32
    assert (back.req_cons - back.rsp_prod_pvt) & U32 <= size
    assert back.request_cons_overflow(back.req_cons) == ((back.req_cons - pvt) & U32 >= size)

    # The backend still answers everything it took, and its own index wins.
    while (back.req_cons - back.rsp_prod_pvt) & U32:
        back.put_response(b"r")
    with pytest.raises(RingError):
        back.put_response(b"r")
    back.push_responses_and_check_notify()
    assert sring.rsp_prod == back.rsp_prod_pvt == back.req_cons


@given(start=STARTS, outstanding=st.integers(0, 256), rsp_prod=u32)
def test_hostile_backend_cannot_push_the_frontend_past_its_requests(start, outstanding,
                                                                    rsp_prod):
    buf, sring = new_ring(12, start)
    front = FrontRing(sring, attach=True)
    for _ in range(outstanding):
        front.put_request(b"q")
    front.push_requests()
    sring.rsp_prod = rsp_prod
    n = front.unconsumed_responses()
    assert n == min((rsp_prod - front.rsp_cons) & U32, outstanding)
    assert front.response_overflow() == ((rsp_prod - front.rsp_cons) & U32 > 256)
    for _ in range(n):
        front.get_response()
    assert 0 <= front.free_requests() <= 256


def test_get_request_copies_the_slot_once():
    """A frontend rewriting a slot after the backend read it changes nothing (no double fetch)."""
    buf, sring = new_ring(12)
    front, back = FrontRing(sring), BackRing(sring)
    front.put_request(b"first-value!")
    front.push_requests()
    req = back.get_request()
    sring.slot(0)[:] = b"second-value"
    assert req == b"first-value!"
    assert isinstance(req, bytes)


def test_short_messages_are_zero_padded_and_long_ones_refused():
    buf, sring = new_ring(12)
    front = FrontRing(sring)
    sring.slot(0)[:] = b"\xff" * 12
    front.put_request(b"ab")
    assert sring.slot(0).tobytes() == b"ab" + bytes(10)
    with pytest.raises(ValueError):
        front.put_request(bytes(13))


def test_front_attach_refuses_an_impossible_header():
    buf, sring = new_ring(12)
    sring.req_prod, sring.rsp_prod = 1000, 0
    with pytest.raises(RingError):
        FrontRing(sring, attach=True)


def test_front_attach_takes_a_full_ring_but_not_one_more():
    _, sring = new_ring(12)
    sring.req_prod, sring.rsp_prod = 256 + 9, 9
    front = FrontRing(sring, attach=True)
    assert front.full() and front.free_requests() == 0
    sring.req_prod += 1
    with pytest.raises(RingError, match="257 requests outstanding"):
        FrontRing(sring, attach=True)


def test_ring_errors_are_xen_errors():
    assert issubclass(RingFull, XenError) and RingFull().errno == errno.ENOSPC
    assert RingEmpty().errno == errno.EAGAIN


def test_put_responses_writes_them_in_order_across_the_wrap_or_none():
    buf, sring = new_ring(1000, start=0xFFFFFFFE)     # 4 slots
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    for i in range(3):
        front.put_request(bytes([i]))
    front.push_requests()
    taken = [back.get_request()[:1] for _ in range(3)]
    with pytest.raises(RingError):
        back.put_responses([b"x"] * 4)               # only 3 consumed: nothing written
    assert back.rsp_prod_pvt == 0xFFFFFFFE
    back.put_responses([t + b"!" for t in taken])
    assert back.rsp_prod_pvt == 1
    assert back.push_responses_and_check_notify()
    assert [front.get_response()[:2] for _ in range(3)] == [b"\0!", b"\1!", b"\2!"]
    front.put_request(b"3")
    front.push_requests()
    back.get_request()
    with pytest.raises(ValueError):
        back.put_responses([b"y" * (sring.slot_size + 1)])
    assert back.rsp_prod_pvt == 1


def test_bulk_puts_and_takes_match_one_at_a_time_across_the_wrap():
    buf, sring = new_ring(1000, start=0xFFFFFFFD)     # 4 slots
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    with pytest.raises(RingFull):
        front.put_requests([b"r"] * 5)               # nothing written
    assert front.req_prod_pvt == 0xFFFFFFFD
    assert front.put_requests([bytes([i]) for i in range(4)]) == 0xFFFFFFFD
    front.push_requests()
    with pytest.raises(RingEmpty):
        back.get_requests(5)                         # nothing taken
    assert [r[:1] for r in back.get_requests(3)] == [b"\0", b"\1", b"\2"]
    assert back.get_request()[:1] == b"\3" and back.get_requests(0) == []
    back.put_responses([b"a", b"b", b"c", b"d"])
    back.push_responses()
    assert [r[:1] for r in front.get_responses(2)] + [front.get_response()[:1]] + \
        [r[:1] for r in front.get_responses(1)] == [b"a", b"b", b"c", b"d"]
    assert front.rsp_cons == back.req_cons == 1      # 0xFFFFFFFD + 4, wrapped


@pytest.mark.parametrize("start", [0, U32 - 1])
def test_peek_requests_reads_the_unconsumed_ones_and_consumes_none(start):
    _, sring = new_ring(8, start)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    assert back.peek_requests() == []
    front.put_requests([payload(n, 8) for n in range(5)])
    assert back.peek_requests() == []                 # not pushed: not there yet
    front.push_requests()
    assert back.get_request() == payload(0, 8)
    peeked = back.peek_requests()
    assert peeked == [payload(n, 8) for n in range(1, 5)]
    sring.slot(start + 1)[:] = payload(99, 8)            # a peek is a copy, and only a hint
    assert peeked[0] == payload(1, 8)
    assert back.unconsumed_requests() == 4
    assert back.get_requests(4) == [payload(n, 8) for n in (99, 2, 3, 4)]


def test_peek_is_bounded_by_the_ring_whatever_req_prod_says():
    _, sring = new_ring(8)
    back = BackRing(sring)
    sring.req_prod = 0x7FFFFFFF                       # a hostile frontend
    assert back.unconsumed_requests() == sring.size   # a count first: a bad bound fails fast
    assert len(back.peek_requests()) == sring.size


# -- refusals say why ----------------------------------------------------------

def test_ring_refusals_carry_their_errno_and_message():
    full, empty = RingFull(), RingEmpty()
    assert (full.errno, full.message) == (errno.ENOSPC, "no free request slot on the ring")
    assert (empty.errno, empty.message) == (errno.EAGAIN, "nothing unconsumed on the ring")
    assert issubclass(RingEmpty, RingError) and issubclass(RingFull, RingError)
    _, sring = new_ring(12)
    with pytest.raises(RingError) as info:
        BackRing(sring).put_response(b"r")
    assert (info.value.errno, info.value.message) == (errno.EINVAL,
                                                     "no consumed request left to answer")
    sring.req_prod, sring.rsp_prod = 2, U32 - 254          # 257 outstanding, across the wrap
    with pytest.raises(RingError) as info:
        FrontRing(sring, attach=True)
    assert info.value.errno == errno.EINVAL
    assert info.value.message == "cannot attach: 257 requests outstanding on a 256-slot ring"


def test_put_responses_past_the_consumed_requests_says_how_many_across_the_wrap():
    _, sring = new_ring(1000, start=0xFFFFFFFE)       # 4 slots; cons wraps to 1
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    front.put_requests([b"a", b"b", b"c"])
    front.push_requests()
    back.get_requests(3)
    with pytest.raises(RingError) as info:
        back.put_responses([b"x"] * 4)
    assert info.value.errno == errno.EINVAL
    assert info.value.message == "4 responses for 3 consumed requests"


@pytest.mark.parametrize("put", ["put_request", "put_requests"])
def test_a_message_longer_than_a_slot_is_refused_whole(put):
    _, sring = new_ring(12)
    front = FrontRing(sring)
    with pytest.raises(ValueError, match="^13 bytes do not fit a 12-byte slot$"):
        getattr(front, put)(bytes(13) if put == "put_request" else [b"ok", bytes(13)])


def test_bulk_puts_zero_pad_short_messages():
    buf, sring = new_ring(12)
    front, back = FrontRing(sring), BackRing(sring)
    buf[abi.RING_SLOTS_OFFSET:] = b"\xff" * (abi.PAGE_SIZE - abi.RING_SLOTS_OFFSET)
    front.put_requests([b"ab", b"cde"])
    assert sring.slot(0).tobytes() == b"ab" + bytes(10)
    assert sring.slot(1).tobytes() == b"cde" + bytes(9)
    front.push_requests()
    back.get_requests(2)
    back.put_responses([b"z"])
    assert sring.slot(0).tobytes() == b"z" + bytes(11)


# -- init and attach -----------------------------------------------------------

def test_without_attach_both_ends_start_at_zero_whatever_the_header_says():
    """FRONT_RING_INIT and BACK_RING_INIT; attach (the *_ATTACH macros) resumes instead."""
    _, sring = new_ring(12, start=5)
    front, back = FrontRing(sring), BackRing(sring)
    assert (front.req_prod_pvt, front.rsp_cons) == (0, 0)
    assert (back.rsp_prod_pvt, back.req_cons) == (0, 0)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    assert (front.req_prod_pvt, front.rsp_cons) == (5, 5)
    assert (back.rsp_prod_pvt, back.req_cons) == (5, 5)


# -- one look at the producer index per batch ------------------------------------
# A consumer reads the peer's producer index once and takes what it showed
# before reading it again, as a driver's "rp = prod; rmb(); while (cons != rp)"
# loop does: what a look showed stays within the bound it was clamped to.

@pytest.mark.parametrize("start, attach", [(0, False), (0, True), (7, True)])
def test_a_fresh_end_looks_before_its_first_take(start, attach):
    _, sring = new_ring(8, start)
    with pytest.raises(RingEmpty):
        BackRing(sring, attach).get_request()
    with pytest.raises(RingEmpty):
        FrontRing(sring, attach).get_response()


@pytest.mark.parametrize("singly", [True, False])
@pytest.mark.parametrize("claimed", [1, 2, 3, 4])
def test_what_a_look_showed_is_taken_without_looking_again(claimed, singly):
    """After the look, the frontend rewrites req_prod to claim only ``claimed``
    requests: the backend still takes the five it saw, whenever it would have
    looked again, and only then does a look see the rewrite."""
    start = U32 - 1
    _, sring = new_ring(8, start=start)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    front.put_requests([payload(n, 8) for n in range(5)])
    front.push_requests()
    assert back.get_requests(1) == [payload(0, 8)]    # the look: five there
    sring.req_prod = (start + claimed) & U32
    rest = [back.get_request() for _ in range(4)] if singly else back.get_requests(4)
    assert rest == [payload(n, 8) for n in range(1, 5)]


def test_after_taking_what_a_look_showed_the_next_take_looks_again():
    _, sring = new_ring(8, start=U32 - 1)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    front.put_requests([payload(n, 8) for n in range(3)])
    front.push_requests()
    assert back.get_requests(2) == [payload(0, 8), payload(1, 8)]
    assert back.get_request() == payload(2, 8)
    with pytest.raises(RingEmpty):
        back.get_request()
    with pytest.raises(RingEmpty):
        back.get_requests(1)
    front.put_requests([payload(3, 8)])
    front.push_requests()
    assert back.get_request() == payload(3, 8)
    with pytest.raises(RingEmpty):
        back.get_request()


def test_single_takes_then_a_bulk_take_of_exactly_what_is_left():
    _, sring = new_ring(8)
    front, back = FrontRing(sring), BackRing(sring)
    front.put_requests([payload(n, 8) for n in range(4)])
    front.push_requests()
    assert back.get_request() == payload(0, 8)
    assert back.get_requests(3) == [payload(n, 8) for n in range(1, 4)]
    with pytest.raises(RingEmpty):
        back.get_request()


def test_a_bulk_take_of_exactly_what_is_there_needs_no_earlier_look():
    _, sring = new_ring(8)
    front, back = FrontRing(sring), BackRing(sring)
    front.put_requests([payload(n, 8) for n in range(3)])
    front.push_requests()
    assert back.get_requests(3) == [payload(n, 8) for n in range(3)]
    back.put_responses([b"a", b"b", b"c"])
    back.push_responses()
    assert front.get_responses(3) == [m.ljust(8, b"\0") for m in (b"a", b"b", b"c")]


# -- the final check's second look -----------------------------------------------

def peer_pushes_during_the_barrier(monkeypatch, push) -> None:
    """Run ``push`` where the peer's store can land: between the event store
    and the re-check, in the gap RING_FINAL_CHECK_FOR_* exists for."""
    from xenlab.xen import ring
    barrier = ring._full_barrier
    pending = [push]

    def barrier_then_peer():
        barrier()
        while pending:
            pending.pop()()
    monkeypatch.setattr(ring, "_full_barrier", barrier_then_peer)


@pytest.mark.parametrize("arriving", [1, 2])
def test_a_request_arriving_between_the_event_store_and_the_recheck_is_found(
        monkeypatch, arriving):
    _, sring = new_ring(8)
    front, back = FrontRing(sring), BackRing(sring)

    def frontend_pushes():
        front.put_requests([payload(n, 8) for n in range(arriving)])
        front.push_requests()
    peer_pushes_during_the_barrier(monkeypatch, frontend_pushes)
    assert back.final_check_for_requests()
    assert sring.req_event == 1                        # it did ask for a kick first
    assert back.get_requests(arriving) == [payload(n, 8) for n in range(arriving)]


def test_a_response_arriving_between_the_event_store_and_the_recheck_is_found(monkeypatch):
    _, sring = new_ring(12)
    front, back = FrontRing(sring), BackRing(sring)
    front.put_request(b"q")
    front.push_requests()
    back.get_request()

    def backend_answers():
        back.put_response(b"r")
        back.push_responses()
    peer_pushes_during_the_barrier(monkeypatch, backend_answers)
    assert front.final_check_for_responses()
    assert sring.rsp_event == 1
    assert front.get_response() == b"r".ljust(12, b"\0")


def test_final_check_ahead_sets_the_event_that_many_past_the_consumer():
    """xennet_tx_buf_gc's old batching: no kick until ``ahead`` more responses."""
    _, sring = new_ring(12, start=U32)
    front, back = FrontRing(sring, attach=True), BackRing(sring, attach=True)
    front.put_requests([b"q"] * 3)
    front.push_requests()
    back.get_requests(3)
    assert not front.final_check_for_responses(ahead=3)
    assert sring.rsp_event == (U32 + 3) & U32
    kicks = []
    for _ in range(3):
        back.put_response(b"r")
        kicks.append(back.push_responses_and_check_notify())
    assert kicks == [False, False, True]
