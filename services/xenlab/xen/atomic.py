"""Atomic read-modify-write on shared memory, through GCC's libatomic.

The event-channel bitmaps in shared_info are written by two processes: the
hypervisor sets pending bits, the guest clears them (and owns the mask). A
plain Python read-modify-write of a word could lose a concurrent update, so
every bitmap update goes through __atomic_fetch_or_8/__atomic_fetch_and_8, as
Xen's sync_set_bit/sync_clear_bit use locked instructions.

Grant entries (xen/grant_table.py) are shared the same way: the granter
writes and ends them, the hypervisor pins them with a compare-and-swap on
flags and domid together (Xen's _set_status_v1), so ``AtomicCells`` gives
16- and 32-bit loads, stores, compare-exchange and fetch-and at any aligned
address of a buffer. libatomic is the library the C compiler itself uses
for these; called through ctypes it costs about 2 us an operation, against
about 20 us for the ``atomics`` package (PyPI) on the same CAS, measured on
this VM.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_SEQ_CST = 5


def _load():
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:  # pragma: no cover - depends on the host
        raise RuntimeError(
            "xenlab needs GCC's libatomic for shared-memory event channels "
            "(Debian: apt-get install libatomic1)") from exc
    funcs = {}
    for op in ("fetch_or", "fetch_and", "fetch_add", "exchange"):
        f = getattr(lib, f"__atomic_{op}_8")
        f.restype = ctypes.c_uint64
        f.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        funcs[op] = f
    load = lib.__atomic_load_8
    load.restype = ctypes.c_uint64
    load.argtypes = [ctypes.c_void_p, ctypes.c_int]
    funcs["load"] = load
    for bits, ctype in ((16, ctypes.c_uint16), (32, ctypes.c_uint32)):
        n = bits // 8
        f = getattr(lib, f"__atomic_load_{n}")
        f.restype, f.argtypes = ctype, [ctypes.c_void_p, ctypes.c_int]
        funcs[f"load{bits}"] = f
        f = getattr(lib, f"__atomic_store_{n}")
        f.restype, f.argtypes = None, [ctypes.c_void_p, ctype, ctypes.c_int]
        funcs[f"store{bits}"] = f
        f = getattr(lib, f"__atomic_fetch_and_{n}")
        f.restype, f.argtypes = ctype, [ctypes.c_void_p, ctype, ctypes.c_int]
        funcs[f"fetch_and{bits}"] = f
        # bool __atomic_compare_exchange_N(ptr, expected*, desired, weak, success, failure)
        f = getattr(lib, f"__atomic_compare_exchange_{n}")
        f.restype = ctypes.c_bool
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctype, ctypes.c_bool, ctypes.c_int,
                      ctypes.c_int]
        funcs[f"cmpxchg{bits}"] = f
    return funcs


_F = _load()
_MASK64 = (1 << 64) - 1
_LOAD, _FETCH_OR, _FETCH_AND = _F["load"], _F["fetch_or"], _F["fetch_and"]


class AtomicWords:
    """64-bit words at fixed offsets of a writable buffer (an mmap)."""

    def __init__(self, buf, offset: int, nwords: int):
        if offset % 8:
            raise ValueError("atomic words must be 8-byte aligned")
        self._anchor = (ctypes.c_uint64 * nwords).from_buffer(buf, offset)
        self._base = ctypes.addressof(self._anchor)
        self.nwords = nwords

    def release(self) -> None:
        """Drop the buffer export so that the mmap can be closed."""
        self._anchor = None

    def _addr(self, index: int) -> int:
        if not 0 <= index < self.nwords:
            raise IndexError(index)
        return self._base + index * 8

    # load, fetch_or and fetch_and check the index themselves, not through
    # _addr: they run on every event-channel signal and ring push.
    def load(self, index: int) -> int:
        if not 0 <= index < self.nwords:
            raise IndexError(index)
        return _LOAD(self._base + index * 8, _SEQ_CST)

    def fetch_or(self, index: int, bits: int) -> int:
        if not 0 <= index < self.nwords:
            raise IndexError(index)
        return _FETCH_OR(self._base + index * 8, bits & _MASK64, _SEQ_CST)

    def fetch_and(self, index: int, bits: int) -> int:
        if not 0 <= index < self.nwords:
            raise IndexError(index)
        return _FETCH_AND(self._base + index * 8, bits & _MASK64, _SEQ_CST)

    def bound_fetch_or(self, index: int, bits: int):
        """``fetch_or(index, bits)`` as a callable of no arguments, bound
        once (a memory barrier's fixed or): the words must outlive it."""
        return functools.partial(_FETCH_OR, self._addr(index), bits & _MASK64, _SEQ_CST)

    def exchange(self, index: int, value: int) -> int:
        return _F["exchange"](self._addr(index), value & _MASK64, _SEQ_CST)

    def test_and_set_bit(self, bit: int) -> bool:
        word, b = divmod(bit, 64)
        return bool(self.fetch_or(word, 1 << b) >> b & 1)

    def test_and_clear_bit(self, bit: int) -> bool:
        word, b = divmod(bit, 64)
        return bool(self.fetch_and(word, ~(1 << b)) >> b & 1)

    def test_bit(self, bit: int) -> bool:
        word, b = divmod(bit, 64)
        return bool(self.load(word) >> b & 1)


class AtomicCells:
    """16- and 32-bit cells of a writable buffer (an mmap, or a memoryview
    of one), addressed by byte offset; each offset must be aligned to its
    width, as the hardware's atomic instructions need."""

    def __init__(self, buf, offset: int = 0, length: int | None = None):
        length = (len(buf) - offset) if length is None else length
        self._anchor = (ctypes.c_uint8 * length).from_buffer(buf, offset)
        self._base = ctypes.addressof(self._anchor)
        self.length = length
        self._expected = {16: ctypes.c_uint16(), 32: ctypes.c_uint32()}
        self._expected_addr = {bits: ctypes.addressof(c) for bits, c in self._expected.items()}

    def release(self) -> None:
        """Drop the buffer export so that the mmap can be closed."""
        self._anchor = None
        self._base = None

    def _addr(self, offset: int, bits: int) -> int:
        n = bits // 8
        if offset % n or not 0 <= offset <= self.length - n:
            raise IndexError(offset)
        return self._base + offset

    def load16(self, offset: int) -> int:
        return _F["load16"](self._addr(offset, 16), _SEQ_CST)

    def load32(self, offset: int) -> int:
        return _F["load32"](self._addr(offset, 32), _SEQ_CST)

    def store16(self, offset: int, value: int) -> None:
        """A sequentially consistent store: every write before it is seen
        first (it serves as the wmb() before a grant entry's flags)."""
        _F["store16"](self._addr(offset, 16), value & 0xFFFF, _SEQ_CST)

    def fetch_and16(self, offset: int, bits: int) -> int:
        return _F["fetch_and16"](self._addr(offset, 16), bits & 0xFFFF, _SEQ_CST)

    def cmpxchg16(self, offset: int, expected: int, desired: int) -> int:
        """Compare-and-swap; the value found (== expected on success), as
        Linux's sync_cmpxchg returns it."""
        return self._cmpxchg(16, offset, expected, desired & 0xFFFF)

    def cmpxchg32(self, offset: int, expected: int, desired: int) -> int:
        return self._cmpxchg(32, offset, expected, desired & 0xFFFFFFFF)

    def _cmpxchg(self, bits: int, offset: int, expected: int, desired: int) -> int:
        cell = self._expected[bits]
        cell.value = expected
        _F[f"cmpxchg{bits}"](self._addr(offset, bits), self._expected_addr[bits], desired,
                             False, _SEQ_CST, _SEQ_CST)
        return cell.value
