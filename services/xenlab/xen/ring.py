"""The shared producer/consumer ring of io/ring.h, with its front and back views.

A ring is one page: the header (the four free-running u32 indexes, a private
area, padding; see abi.RING_*) and abi.ring_size(slot_size) slots from byte
64. The frontend produces requests and consumes responses; the backend
produces responses and consumes requests. As MirageOS shared-memory-ring does,
the logic is written once (_RingView) and the two views differ only in which
index pair they produce on.

Memory ordering. Xen orders ring accesses with xen_wmb (slot stores before the
producer index store), xen_rmb (producer index load before the slot loads) and
xen_mb (producer index store before the event index load, and event store
before the re-check). This module assumes an x86 host. x86 is TSO: stores
become visible in program order and a load is never reordered with an older
load, so a memcpy into a slot followed by the index store needs no fence
(xen_wmb and xen_rmb compile to a compiler barrier there, and every access
below is a separate C call). TSO does let a load pass an older store, so xen_mb
stays a real fence: _full_barrier does a locked read-modify-write through
libatomic, as Linux's mb() uses a locked instruction.

Each index is read and written as one aligned 32-bit access (a memoryview cast
to "I", whose item get/set is a memcpy of one unsigned int), so the peer never
sees a torn index; struct.pack_into("<I") stores byte by byte and could.
"""
from __future__ import annotations

import ctypes
import errno
import sys

from xenlab.xen import abi
from xenlab.xen.atomic import AtomicWords
from xenlab.xen.errors import XenError

_U32 = 0xFFFFFFFF
_WORD = 4
_REQ_PROD = abi.RING_REQ_PROD // _WORD
_REQ_EVENT = abi.RING_REQ_EVENT // _WORD
_RSP_PROD = abi.RING_RSP_PROD // _WORD
_RSP_EVENT = abi.RING_RSP_EVENT // _WORD

if sys.byteorder != "little":  # pragma: no cover - the ring ABI is little endian on x86
    raise ImportError("xenlab.xen.ring assumes a little-endian (x86) host")

_FENCE = AtomicWords(ctypes.c_uint64(), 0, 1)
# xen_mb(): a locked RMW orders the store before it against the load after it
# (the or of 0 into a word of our own, bound once: this runs at every push).
_full_barrier = _FENCE.bound_fetch_or(0, 0)


class RingError(XenError):
    """A ring operation the ring's state does not allow."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        super().__init__(err, message)


class RingFull(RingError):
    """RING_FULL: the frontend already has RING_SIZE requests outstanding."""

    def __init__(self, message: str = "no free request slot on the ring"):
        super().__init__(message, errno.ENOSPC)


class RingEmpty(RingError):
    """Nothing unconsumed on the ring."""

    def __init__(self, message: str = "nothing unconsumed on the ring"):
        super().__init__(message, errno.EAGAIN)


def _index_property(word: int, doc: str) -> property:
    # pragma: no mutate block
    # Runs once, at import: mutmut activates a mutant only in calls made after
    # that, so it cannot test this wiring (test_ring's header tests do).
    def get(self: SharedRing) -> int:
        return self._load(word)

    def set_(self: SharedRing, value: int) -> None:
        self._store(word, value)

    return property(get, set_, doc=doc)


class SharedRing:
    """The shared page of DEFINE_RING_TYPES(): header and slots, over a writable buffer."""

    def __init__(self, buf, slot_size: int):
        if not 0 < slot_size <= abi.PAGE_SIZE - abi.RING_SLOTS_OFFSET:
            raise ValueError(f"slot size {slot_size} does not fit a ring page")
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise ValueError("a shared ring needs a writable buffer")
        if len(mv) < abi.PAGE_SIZE:
            raise ValueError(f"a shared ring needs a {abi.PAGE_SIZE}-byte page, got {len(mv)}")
        self._page = mv[:abi.PAGE_SIZE]
        _check_aligned(self._page)
        self.slot_size = slot_size
        self.size = abi.ring_size(slot_size)
        self._idx = self._page[:abi.RING_PVT].cast("I")
        end = abi.RING_SLOTS_OFFSET + self.size * slot_size
        self._slots = self._page[abi.RING_SLOTS_OFFSET:end]
        self._base = mv

    req_prod = _index_property(_REQ_PROD, "requests produced, written by the frontend")
    req_event = _index_property(_REQ_EVENT, "notify the backend when req_prod passes this")
    rsp_prod = _index_property(_RSP_PROD, "responses produced, written by the backend")
    rsp_event = _index_property(_RSP_EVENT, "notify the frontend when rsp_prod passes this")

    def init(self) -> None:
        """SHARED_RING_INIT: producers 0, events 1, private area and padding zeroed."""
        self.req_prod = self.rsp_prod = 0
        self.req_event = self.rsp_event = 1
        self._page[abi.RING_PVT:abi.RING_SLOTS_OFFSET] = bytes(
            abi.RING_SLOTS_OFFSET - abi.RING_PVT)

    def slot(self, idx: int) -> memoryview:
        """The live slot for free-running index idx (masked by size-1)."""
        start = (idx & (self.size - 1)) * self.slot_size
        return self._slots[start:start + self.slot_size]

    def release(self) -> None:
        """Drop this ring's buffer exports so that an mmap under it can be closed.

        Views returned by slot() are the caller's to release.
        """
        for view in (self._idx, self._slots, self._page, self._base):
            view.release()

    def _load(self, word: int) -> int:
        return self._idx[word]

    def _store(self, word: int, value: int) -> None:
        self._idx[word] = value & _U32

    def _read_slot(self, idx: int) -> bytes:
        start = (idx & (self.size - 1)) * self.slot_size
        return self._slots[start:start + self.slot_size].tobytes()

    def _read_slots(self, idx: int, n: int) -> list[bytes]:
        """Copies of ``n`` consecutive slots from ``idx``."""
        mask, size, slots = self.size - 1, self.slot_size, self._slots
        out = []
        for i in range(n):
            start = ((idx + i) & mask) * size
            out.append(slots[start:start + size].tobytes())
        return out

    def _write_slots(self, idx: int, items) -> int:
        """Write consecutive slots from ``idx``; the index after the last."""
        mask, size, slots = self.size - 1, self.slot_size, self._slots
        for data in items:
            if len(data) > size:
                raise ValueError(f"{len(data)} bytes do not fit a {size}-byte slot")
            start = (idx & mask) * size
            slots[start:start + size] = data.ljust(size, b"\0")
            idx = (idx + 1) & _U32
        return idx

    def _write_slot(self, idx: int, data: bytes) -> None:
        if len(data) > self.slot_size:
            raise ValueError(f"{len(data)} bytes do not fit a {self.slot_size}-byte slot")
        start = (idx & (self.size - 1)) * self.slot_size
        self._slots[start:start + self.slot_size] = data.ljust(self.slot_size, b"\0")


def _check_aligned(page: memoryview) -> None:
    probe = (ctypes.c_char * 1).from_buffer(page)
    address = ctypes.addressof(probe)
    del probe
    if address % _WORD:
        raise ValueError("a shared ring page must be 4-byte aligned")


class _RingView:
    """One end of a ring: produces on one index pair and consumes on the other.

    Nothing read from the shared header is trusted: the peer's producer index
    is read once per call and clamped by _in_bound(), and this end's own
    positions live in private fields (req_prod_pvt/rsp_cons,
    rsp_prod_pvt/req_cons) that the peer cannot touch.
    """

    _OUT_PROD: int
    _OUT_EVENT: int
    _IN_PROD: int
    _IN_EVENT: int

    def __init__(self, sring: SharedRing, prod_pvt: int, cons: int):
        self.sring = sring
        self.size = sring.size
        self._prod_pvt = prod_pvt & _U32
        self._cons = cons & _U32
        # Messages the last look at the peer's producer index showed: taken
        # without reading it again, as a driver reads rp once per loop.
        self._known = 0

    def _in_bound(self) -> int:
        """The most peer messages that can honestly be waiting."""
        raise NotImplementedError

    def _put(self, data: bytes) -> int:
        idx = self._prod_pvt
        self.sring._write_slot(idx, data)
        self._prod_pvt = (idx + 1) & _U32
        return idx

    def _push(self) -> None:
        # xen_wmb: on TSO the slot stores above are already ordered before this one.
        self.sring._store(self._OUT_PROD, self._prod_pvt)

    def _push_and_check_notify(self) -> bool:
        # old is read back from the page, as the macro does: a peer that rewrites it
        # only changes whether it gets kicked. (The indexes are read and written
        # here without SharedRing's one-line accessors: this runs at every push.)
        idx = self.sring._idx
        old = idx[self._OUT_PROD]
        new = self._prod_pvt
        idx[self._OUT_PROD] = new            # _push: xen_wmb is free on TSO
        _full_barrier()
        # The notify test of RING_PUSH_*_AND_CHECK_NOTIFY: did old..new pass the event?
        return ((new - idx[self._OUT_EVENT]) & _U32) < ((new - old) & _U32)

    def _unconsumed(self) -> int:
        # xen_rmb: on TSO the slot loads that follow cannot pass this load.
        waiting = (self.sring._idx[self._IN_PROD] - self._cons) & _U32
        bound = self._in_bound()
        known = waiting if waiting < bound else bound
        self._known = known
        return known

    def _take(self) -> bytes:
        # Consuming one message lowers the bound by one as well, so what the
        # last look showed stays within it.
        if self._known <= 0 and not self._unconsumed():
            raise RingEmpty()
        self._known -= 1
        data = self.sring._read_slot(self._cons)
        self._cons = (self._cons + 1) & _U32
        return data

    def _take_many(self, n: int) -> list[bytes]:
        """The next ``n`` messages (RingEmpty, taking none, if fewer are there)."""
        if n > self._known and n > self._unconsumed():
            raise RingEmpty()
        out = self.sring._read_slots(self._cons, n)
        self._known -= n
        self._cons = (self._cons + n) & _U32
        return out

    def _peek(self) -> list[bytes]:
        """Copies of the unconsumed messages, which stay unconsumed: a hint
        only, since the peer may rewrite a slot until it is taken."""
        return self.sring._read_slots(self._cons, self._unconsumed())

    def _final_check(self, ahead: int = 1) -> bool:
        if self._unconsumed():
            return True
        self.sring._store(self._IN_EVENT, (self._cons + ahead) & _U32)
        _full_barrier()
        return self._unconsumed() > 0


class FrontRing(_RingView):
    """The frontend's view: puts requests, takes responses.

    FRONT_RING_INIT starts both private indexes at 0; attach=True
    (FRONT_RING_ATTACH) resumes from the shared header: req_prod_pvt from
    req_prod and rsp_cons from rsp_prod, so outstanding requests keep their
    slots.
    """

    _OUT_PROD, _OUT_EVENT = _REQ_PROD, _REQ_EVENT
    _IN_PROD, _IN_EVENT = _RSP_PROD, _RSP_EVENT

    def __init__(self, sring: SharedRing, attach: bool = False):
        prod, cons = (sring.req_prod, sring.rsp_prod) if attach else (0, 0)
        if (prod - cons) & _U32 > sring.size:
            raise RingError(f"cannot attach: {(prod - cons) & _U32} requests outstanding "
                            f"on a {sring.size}-slot ring")
        super().__init__(sring, prod, cons)

    @property
    def req_prod_pvt(self) -> int:
        return self._prod_pvt

    @property
    def rsp_cons(self) -> int:
        return self._cons

    def _in_bound(self) -> int:
        # A backend can answer only requests that are outstanding.
        return (self._prod_pvt - self._cons) & _U32

    def free_requests(self) -> int:
        """RING_FREE_REQUESTS."""
        return (self.size - ((self._prod_pvt - self._cons) & _U32)) & _U32

    def full(self) -> bool:
        """RING_FULL."""
        return self.free_requests() == 0

    def put_request(self, data: bytes) -> int:
        """Write the next request slot (invisible until pushed); returns its index."""
        if self.full():
            raise RingFull()
        return self._put(data)

    def put_requests(self, items: list[bytes]) -> int:
        """put_request for each, in order (all, or RingFull and none); the
        index of the first."""
        if len(items) > self.free_requests():
            raise RingFull()
        first = self._prod_pvt
        self._prod_pvt = self.sring._write_slots(first, items)
        return first

    def get_responses(self, n: int) -> list[bytes]:
        """get_response ``n`` times (RingEmpty, taking none, if fewer are there)."""
        return self._take_many(n)

    def push_requests(self) -> None:
        """RING_PUSH_REQUESTS."""
        self._push()

    def push_requests_and_check_notify(self) -> bool:
        """RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: True if the backend needs a kick."""
        return self._push_and_check_notify()

    def unconsumed_responses(self) -> int:
        """RING_HAS_UNCONSUMED_RESPONSES, clamped to the outstanding requests."""
        return self._unconsumed()

    def response_overflow(self) -> bool:
        """RING_RESPONSE_PROD_OVERFLOW: the backend claims more responses than can exist."""
        return (self.sring._load(_RSP_PROD) - self._cons) & _U32 > self.size

    def get_response(self) -> bytes:
        """A copy of the response at rsp_cons; advances rsp_cons."""
        return self._take()

    def final_check_for_responses(self, ahead: int = 1) -> bool:
        """RING_FINAL_CHECK_FOR_RESPONSES: asks for a kick on the next
        response, or (``ahead`` > 1) only once that many more are in, as
        netfront's xennet_tx_buf_gc once set rsp_event half the outstanding
        requests ahead."""
        return self._final_check(ahead)


class BackRing(_RingView):
    """The backend's view: takes requests, puts responses.

    BACK_RING_INIT starts both private indexes at 0; attach=True
    (BACK_RING_ATTACH) starts both at the shared rsp_prod, so requests not yet
    answered are consumed again.
    """

    _OUT_PROD, _OUT_EVENT = _RSP_PROD, _RSP_EVENT
    _IN_PROD, _IN_EVENT = _REQ_PROD, _REQ_EVENT

    def __init__(self, sring: SharedRing, attach: bool = False):
        start = sring.rsp_prod if attach else 0
        super().__init__(sring, start, start)

    @property
    def rsp_prod_pvt(self) -> int:
        return self._prod_pvt

    @property
    def req_cons(self) -> int:
        return self._cons

    def _in_bound(self) -> int:
        # A frontend can have produced at most the slots not holding unsent responses.
        return (self.size - ((self._cons - self._prod_pvt) & _U32)) & _U32

    def unconsumed_requests(self) -> int:
        """RING_HAS_UNCONSUMED_REQUESTS: never more than the ring can hold."""
        return self._unconsumed()

    def request_overflow(self) -> bool:
        """RING_REQUEST_PROD_OVERFLOW on the shared req_prod: a misbehaving frontend."""
        return (self.sring._load(_REQ_PROD) - self._prod_pvt) & _U32 > self.size

    def request_cons_overflow(self, cons: int) -> bool:
        """RING_REQUEST_CONS_OVERFLOW: would consuming at cons overrun the ring?"""
        return (cons - self._prod_pvt) & _U32 >= self.size

    def get_request(self) -> bytes:
        """RING_COPY_REQUEST at req_cons, read from shared memory exactly once."""
        return self._take()

    def get_requests(self, n: int) -> list[bytes]:
        """get_request ``n`` times (RingEmpty, taking none, if fewer are there)."""
        return self._take_many(n)

    def peek_requests(self) -> list[bytes]:
        """The unconsumed requests, read but not consumed (req_cons stays)."""
        return self._peek()

    def put_response(self, data: bytes) -> None:
        """Write the next response slot (invisible until pushed)."""
        if self._cons == self._prod_pvt:
            raise RingError("no consumed request left to answer")
        self._put(data)

    def put_responses(self, items: list[bytes]) -> None:
        """put_response for each, in order (all or, past the consumed requests, none)."""
        if len(items) > (self._cons - self._prod_pvt) & _U32:
            raise RingError(f"{len(items)} responses for "
                            f"{(self._cons - self._prod_pvt) & _U32} consumed requests")
        self._prod_pvt = self.sring._write_slots(self._prod_pvt, items)

    def push_responses(self) -> None:
        """RING_PUSH_RESPONSES."""
        self._push()

    def push_responses_and_check_notify(self) -> bool:
        """RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: True if the frontend needs a kick."""
        return self._push_and_check_notify()

    def final_check_for_requests(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS: asks for a kick on the next request."""
        return self._final_check()
