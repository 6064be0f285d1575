"""The PV console ring: struct xencons_interface of io/console.h.

One page shared by a domain and its console backend (xenconsoled) holds
two byte rings with free-running u32 indexes (XENCONS_RING_IDX), each
masked by its own ring's size (MASK_XENCONS_IDX): ``in`` (1024 bytes)
carries keystrokes to the guest, which consumes them (in_cons) after the
backend produced them (in_prod); ``out`` (2048 bytes) carries the guest's
console output, produced by the guest (out_prod) and consumed by the
backend (out_cons). A ``connection`` byte after the indexes says whether
the backend services the ring (XENCONSOLE_CONNECTED) or not yet
(XENCONSOLE_DISCONNECTED, as the toolstack leaves a fresh page).

``ConsoleRingEnd`` is either end, written once: the guest's (hvc_xen's
``domU_write_console``/``domU_read_console``) or the backend's (xenconsoled's
``buffer_append``/``handle_tty_read``). As xenconsoled does, it trusts no
index the peer writes: the indexes it owns are kept privately, and a ring
whose peer index puts more than the ring's size between producer and
consumer is "screwed" (io.c): that pass moves nothing and says so
(``ConsoleRingError``), and the caller decides how loudly to ignore it.

Memory ordering is xen/ring.py's: x86 is TSO; each index is one aligned
32-bit access through a memoryview cast.
"""
from __future__ import annotations

import errno
import sys

from xenlab.xen.errors import XenError

if sys.byteorder != "little":  # pragma: no cover - the ring ABI is little endian on x86
    raise ImportError("xenlab.xen.console assumes a little-endian (x86) host")

_U32 = 0xFFFFFFFF

# struct xencons_interface, byte offsets.
IN_SIZE = 1024                  # char in[1024]
OUT_SIZE = 2048                 # char out[2048]
IN_OFFSET = 0
OUT_OFFSET = IN_OFFSET + IN_SIZE
IDX_OFFSET = OUT_OFFSET + OUT_SIZE          # in_cons, in_prod, out_cons, out_prod (u32 each)
CONNECTION_OFFSET = IDX_OFFSET + 16         # uint8_t connection
INTERFACE_SIZE = CONNECTION_OFFSET + 1

# Word numbers of the u32 indexes from IDX_OFFSET on.
_IN_CONS, _IN_PROD, _OUT_CONS, _OUT_PROD = 0, 1, 2, 3

XENCONSOLE_CONNECTED = 0        # the backend services and empties the ring
XENCONSOLE_DISCONNECTED = 1     # the flag's value on a fresh page

# What libxl writes for the primary console (libxl_internal.h).
XENCONSOLE_LIMIT = 1048576      # LIBXL_XENCONSOLE_LIMIT: bytes xenconsoled may buffer
XENCONSOLE_PROTOCOL = "vt100"   # LIBXL_XENCONSOLE_PROTOCOL


class ConsoleRingError(XenError):
    """The peer's index is more than a ring's size from ours: the ring is
    broken, and nothing was moved."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class ConsolePage:
    """The fields of a xencons_interface over a writable page."""

    def __init__(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        if mv.readonly or len(mv) < INTERFACE_SIZE:
            raise ValueError(f"a console ring needs {INTERFACE_SIZE} writable bytes")
        self._base = mv
        self.in_ = mv[IN_OFFSET:IN_OFFSET + IN_SIZE]
        self.out = mv[OUT_OFFSET:OUT_OFFSET + OUT_SIZE]
        self.words = mv[IDX_OFFSET:IDX_OFFSET + 16].cast("I")

    def clear(self) -> None:
        """The toolstack's fresh page: empty rings, disconnected."""
        self._base[:INTERFACE_SIZE] = bytes(INTERFACE_SIZE)
        self.connection = XENCONSOLE_DISCONNECTED

    def _word(word: int, doc: str) -> property:       # noqa: N805 - a property factory
        # pragma: no mutate block
        # Runs once, in the class body: mutmut can neither trampoline a call
        # made there nor activate a mutant in it (test_console_ring's layout
        # and width tests check this wiring).
        def get(self) -> int:
            return self.words[word]

        def set_(self, value: int) -> None:
            self.words[word] = value & _U32
        return property(get, set_, doc=doc)

    in_cons = _word(_IN_CONS, "input consumed, written by the guest")
    in_prod = _word(_IN_PROD, "input produced, written by the backend")
    out_cons = _word(_OUT_CONS, "output consumed, written by the backend")
    out_prod = _word(_OUT_PROD, "output produced, written by the guest")
    del _word

    @property
    def connection(self) -> int:
        return self._base[CONNECTION_OFFSET]

    @connection.setter
    def connection(self, value: int) -> None:
        self._base[CONNECTION_OFFSET] = value & 0xFF

    def release(self) -> None:
        """Drop the views so that the mmap under the page can be closed."""
        for view in (self.words, self.in_, self.out, self._base):
            view.release()


class ConsoleRingEnd:
    """One end of the console ring. ``backend=True`` is xenconsoled's end:
    it consumes ``out`` and produces on ``in``; the guest's end the reverse."""

    def __init__(self, page: ConsolePage, backend: bool) -> None:
        self.page = page
        if backend:
            self._in, self._in_size = page.out, OUT_SIZE
            self._out, self._out_size = page.in_, IN_SIZE
            self._in_cons_word, self._in_prod_word = _OUT_CONS, _OUT_PROD
            self._out_cons_word, self._out_prod_word = _IN_CONS, _IN_PROD
        else:
            self._in, self._in_size = page.in_, IN_SIZE
            self._out, self._out_size = page.out, OUT_SIZE
            self._in_cons_word, self._in_prod_word = _IN_CONS, _IN_PROD
            self._out_cons_word, self._out_prod_word = _OUT_CONS, _OUT_PROD
        # The indexes this end owns, private: never read back from the page.
        self.in_cons = page.words[self._in_cons_word]
        self.out_prod = page.words[self._out_prod_word]

    def readable(self) -> int:
        """Bytes the peer produced that this end has not consumed."""
        prod = self.page.words[self._in_prod_word]
        avail = (prod - self.in_cons) & _U32
        if avail > self._in_size:
            raise ConsoleRingError(f"producer index {prod} is {avail} bytes past consumer "
                                   f"{self.in_cons}: more than the {self._in_size}-byte ring")
        return avail

    def writable(self) -> int:
        """Room on the ring this end produces on."""
        cons = self.page.words[self._out_cons_word]
        used = (self.out_prod - cons) & _U32
        if used > self._out_size:
            raise ConsoleRingError(f"consumer index {cons} is {used} bytes behind producer "
                                   f"{self.out_prod}: more than the {self._out_size}-byte ring")
        return self._out_size - used

    def read(self, limit: int | None = None) -> bytes:
        """Up to ``limit`` bytes the peer produced, copied out once, and
        consumed (the consumer index published after the copy)."""
        n = self.readable()
        if limit is not None:
            n = min(n, limit)
        if n <= 0:
            return b""
        start = self.in_cons & (self._in_size - 1)
        first = min(n, self._in_size - start)
        data = self._in[start:start + first].tobytes() + self._in[:n - first].tobytes()
        self.in_cons = (self.in_cons + n) & _U32
        self.page.words[self._in_cons_word] = self.in_cons
        return data

    def write(self, data: bytes) -> int:
        """As many of ``data``'s bytes as there is room for, published
        after the copy; how many."""
        n = min(self.writable(), len(data))
        if n <= 0:
            return 0
        start = self.out_prod & (self._out_size - 1)
        first = min(n, self._out_size - start)
        self._out[start:start + first] = data[:first]
        self._out[:n - first] = data[first:n]
        self.out_prod = (self.out_prod + n) & _U32
        self.page.words[self._out_prod_word] = self.out_prod
        return n
