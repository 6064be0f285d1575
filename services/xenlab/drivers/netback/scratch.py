"""netback's scratch frames and the grant copies through them, pure.

Data moves by grant copy (GNTTABOP_copy) between the frontend's grants and
the backend's own frames. Each copy batch in flight has a scratch area of
its own (``Scratch``: SCRATCH_PAGES of our frames seen as one linear
space), and the tx and rx cores plan ``GrantCopy`` segments into or out of
it. A segment never crosses one of our pages: GNTTABOP_copy refuses that.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from xenlab.xen import abi

PAGE = abi.PAGE_SIZE
SCRATCH_PAGES = 16          # per batch in flight: 64 KiB, room for any single frame


class GrantCopy(NamedTuple):
    """One GNTTABOP_copy segment between a frontend grant and a local frame."""

    gref: int            # the frontend's grant reference
    gref_offset: int
    gfn: int             # one of our own scratch frames
    gfn_offset: int
    length: int
    to_frontend: bool    # rx: local -> grant; tx: grant -> local


class Scratch:
    """The backend's own frames it copies through, seen as one linear space.

    ``pages`` are writable views of those frames in our memory, in the
    order of ``gfns``. A copy segment never crosses a local page (GNTTABOP_copy
    refuses that), so ``segments`` splits at page boundaries.
    """

    def __init__(self, gfns: Sequence[int], pages: Sequence):
        if len(gfns) != len(pages) or not gfns:
            raise ValueError("need one page per scratch frame, and at least one")
        self.gfns = list(gfns)
        self._pages = [memoryview(p).cast("B") for p in pages]
        self.capacity = len(self.gfns) * PAGE

    def segments(self, addr: int, length: int) -> list[tuple[int, int, int]]:
        """(gfn, offset, length) pieces of [addr, addr+length)."""
        if addr < 0 or addr + length > self.capacity:
            raise ValueError(f"[{addr}, {addr + length}) is outside the scratch space")
        index, offset = divmod(addr, PAGE)
        if offset + length <= PAGE:
            return [(self.gfns[index], offset, length)]
        out = []
        while length > 0:
            index, offset = divmod(addr, PAGE)
            n = min(length, PAGE - offset)
            out.append((self.gfns[index], offset, n))
            addr += n
            length -= n
        return out

    def read(self, addr: int, length: int) -> bytes:
        index, offset = divmod(addr, PAGE)
        if addr >= 0 and offset + length <= PAGE and index < len(self._pages):
            return self._pages[index][offset:offset + length].tobytes()
        parts = []
        for index, offset, n in self._spans(addr, length):
            parts.append(self._pages[index][offset:offset + n])
        return b"".join(parts)

    def write(self, addr: int, data: bytes) -> None:
        index, offset = divmod(addr, PAGE)
        if addr >= 0 and offset + len(data) <= PAGE and index < len(self._pages):
            self._pages[index][offset:offset + len(data)] = data
            return
        pos = 0
        for index, offset, n in self._spans(addr, len(data)):
            self._pages[index][offset:offset + n] = data[pos:pos + n]
            pos += n

    def _spans(self, addr: int, length: int):
        if addr < 0 or addr + length > self.capacity:
            raise ValueError(f"[{addr}, {addr + length}) is outside the scratch space")
        while length > 0:
            index, offset = divmod(addr, PAGE)
            n = min(length, PAGE - offset)
            yield index, offset, n
            addr += n
            length -= n

    def by_gfn(self) -> dict[int, memoryview]:
        """Each scratch frame's page, by gfn."""
        return dict(zip(self.gfns, self._pages))

    def release(self) -> None:
        for page in self._pages:
            page.release()
        self._pages = []

