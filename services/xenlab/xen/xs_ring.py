"""The store ring: struct xenstore_domain_interface of io/xs_wire.h.

One page shared by a domain and xenstored holds two byte rings of
XENSTORE_RING_SIZE bytes with free-running u32 indexes: the domain
produces requests on ``req`` (req_prod) and xenstored consumes them
(req_cons); xenstored produces replies and watch events on ``rsp``
(rsp_prod) and the domain consumes them (rsp_cons). The bytes are the wire
protocol's messages, in any pieces.

``XsRingEnd`` is either end, written once (as xen/ring.py's views): it
consumes one ring and produces on the other. It trusts nothing on the page:
the indexes it owns live in private fields and are only ever written out;
the peer's index is read once per call and checked as xenstored's
check_indexes does (``prod - cons`` at most the ring size), a violation
raising ``XsRingError`` (XENSTORE_ERROR_RINGIDX): the connection is over.

Memory ordering is ring.py's: x86 is TSO, so copying bytes before storing
the producer index, and loading the peer's index before the bytes, needs no
fence; each index is one aligned 32-bit access through a memoryview cast.
"""
from __future__ import annotations

import errno
import sys

from xenlab.xen import xs_wire as w
from xenlab.xen.errors import XenError

_U32 = 0xFFFFFFFF
SIZE = w.XENSTORE_RING_SIZE

if sys.byteorder != "little":  # pragma: no cover - the ring ABI is little endian on x86
    raise ImportError("xenlab.xen.xs_ring assumes a little-endian (x86) host")

# Word numbers of the u32 fields from XS_RING_REQ_CONS on.
_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD = 0, 1, 2, 3
_SERVER_FEATURES, _CONNECTION, _ERROR, _EVTCHN_PORT = 4, 5, 6, 7


class XsRingError(XenError):
    """The peer broke the ring: an index past the ring. ``code`` is the
    XENSTORE_ERROR_* to report."""

    def __init__(self, message: str, code: int = w.XENSTORE_ERROR_RINGIDX):
        super().__init__(errno.EIO, message)
        self.code = code


class XsRingPage:
    """The fields of a xenstore_domain_interface over a writable page."""

    def __init__(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        if mv.readonly or len(mv) < w.XS_RING_INTERFACE_SIZE:
            raise ValueError(f"a store ring needs {w.XS_RING_INTERFACE_SIZE} writable bytes")
        self._base = mv
        self.req = mv[w.XS_RING_REQ:w.XS_RING_REQ + SIZE]
        self.rsp = mv[w.XS_RING_RSP:w.XS_RING_RSP + SIZE]
        self.words = mv[w.XS_RING_REQ_CONS:w.XS_RING_INTERFACE_SIZE].cast("I")

    def clear(self) -> None:
        """The domain builder's fresh page: empty rings, every field 0."""
        self._base[:w.XS_RING_INTERFACE_SIZE] = bytes(w.XS_RING_INTERFACE_SIZE)

    def _field(word: int, doc: str) -> property:       # noqa: N805 - a property factory
        def get(self) -> int:
            return self.words[word]

        def set_(self, value: int) -> None:
            self.words[word] = value & _U32
        return property(get, set_, doc=doc)

    req_cons = _field(_REQ_CONS, "requests consumed, written by xenstored")
    req_prod = _field(_REQ_PROD, "requests produced, written by the domain")
    rsp_cons = _field(_RSP_CONS, "replies consumed, written by the domain")
    rsp_prod = _field(_RSP_PROD, "replies produced, written by xenstored")
    server_features = _field(_SERVER_FEATURES, "XENSTORE_SERVER_FEATURE_* bits")
    connection = _field(_CONNECTION, "XENSTORE_CONNECTED or XENSTORE_RECONNECT")
    error = _field(_ERROR, "XENSTORE_ERROR_*, when the server has the ERROR feature")
    evtchn_port = _field(_EVTCHN_PORT, "filled in by Xen for dom0less domains")
    del _field

    def release(self) -> None:
        """Drop the views so that the mmap under the page can be closed."""
        for view in (self.words, self.req, self.rsp, self._base):
            view.release()


class XsRingEnd:
    """One end of the store ring. ``server=True`` is xenstored's end."""

    def __init__(self, page: XsRingPage, server: bool) -> None:
        self.page = page
        self.server = server
        if server:
            self._in, self._out = page.req, page.rsp
            self._in_cons_word, self._in_prod_word = _REQ_CONS, _REQ_PROD
            self._out_cons_word, self._out_prod_word = _RSP_CONS, _RSP_PROD
        else:
            self._in, self._out = page.rsp, page.req
            self._in_cons_word, self._in_prod_word = _RSP_CONS, _RSP_PROD
            self._out_cons_word, self._out_prod_word = _REQ_CONS, _REQ_PROD
        # The indexes this end owns, private: what the page says of them is
        # never read back.
        self.in_cons = page.words[self._in_cons_word]
        self.out_prod = page.words[self._out_prod_word]

    def readable(self) -> int:
        """Bytes the peer has produced and this end not consumed yet."""
        prod = self.page.words[self._in_prod_word]
        avail = (prod - self.in_cons) & _U32
        if avail > SIZE:
            raise XsRingError(f"the peer's producer index {prod} is {avail} bytes past "
                              f"our {self.in_cons}: more than the {SIZE}-byte ring")
        return avail

    def writable(self) -> int:
        """Room on the ring this end produces on."""
        cons = self.page.words[self._out_cons_word]
        used = (self.out_prod - cons) & _U32
        if used > SIZE:
            raise XsRingError(f"the peer's consumer index {cons} is {used} bytes behind "
                              f"our {self.out_prod}: more than the {SIZE}-byte ring")
        return SIZE - used

    def read(self, limit: int = SIZE) -> bytes:
        """Up to ``limit`` bytes the peer produced, copied out once."""
        n = min(self.readable(), limit)
        if n <= 0:
            return b""
        start = w.MASK_XENSTORE_IDX(self.in_cons)
        first = min(n, SIZE - start)
        data = self._in[start:start + first].tobytes() + self._in[:n - first].tobytes()
        self.in_cons = (self.in_cons + n) & _U32
        self.page.words[self._in_cons_word] = self.in_cons
        return data

    def write(self, data: bytes) -> int:
        """As many of ``data``'s bytes as there is room for; how many."""
        n = min(self.writable(), len(data))
        if n <= 0:
            return 0
        start = w.MASK_XENSTORE_IDX(self.out_prod)
        first = min(n, SIZE - start)
        self._out[start:start + first] = data[:first]
        self._out[:n - first] = data[first:n]
        self.out_prod = (self.out_prod + n) & _U32
        self.page.words[self._out_prod_word] = self.out_prod
        return n
