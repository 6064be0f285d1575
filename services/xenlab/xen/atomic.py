"""Atomic read-modify-write on shared memory, through GCC's libatomic.

The event-channel bitmaps in shared_info are written by two processes: the
hypervisor sets pending bits, the guest clears them (and owns the mask). A
plain Python read-modify-write of a word could lose a concurrent update, so
every bitmap update goes through __atomic_fetch_or_8/__atomic_fetch_and_8, as
Xen's sync_set_bit/sync_clear_bit use locked instructions.
"""
from __future__ import annotations

import ctypes
import ctypes.util

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
    return funcs


_F = _load()
_MASK64 = (1 << 64) - 1


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

    def load(self, index: int) -> int:
        return _F["load"](self._addr(index), _SEQ_CST)

    def fetch_or(self, index: int, bits: int) -> int:
        return _F["fetch_or"](self._addr(index), bits & _MASK64, _SEQ_CST)

    def fetch_and(self, index: int, bits: int) -> int:
        return _F["fetch_and"](self._addr(index), bits & _MASK64, _SEQ_CST)

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
