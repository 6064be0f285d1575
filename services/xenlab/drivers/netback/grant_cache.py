"""netback's persistent grants: a frontend's buffer pages, mapped once.

Plain netif copies every frame through the hypervisor (GNTTABOP_copy): a
round trip to another process per batch and direction. Our netfront grants
its 256 transmit and 256 receive pages once, for the life of the connection,
and says so with ``feature-xenlab-persistent=1``, xenlab's own key
(blkfront and blkback negotiate the same thing for block devices with
``feature-persistent``; netif has no such feature). Netback then maps each buffer page the first
time a request names its grant reference (GNTTABOP_map_grant_ref, batched)
and from then on copies to and from the mapping itself. A copy whose page is
not mapped goes to the hypervisor as before: not mapped yet, or never (past
the per-vif cap, once the maptrack is full, or a ref the hypervisor would not
map), so every copy gets the same GNTST_* status either way.

A frontend cannot pull a mapped page away: ending a grant while it is mapped
is refused (GTF_reading/GTF_writing), so a mapping stays the frame it was
until netback unmaps it at disconnect. Transmit pages are mapped read-only
(netback only reads them), receive pages writable.

This module is the bookkeeping, free of I/O: what is mapped, what to map
next, what never, and the local half of a copy batch. netback's cores read
a one-slot frame straight from a mapped transmit page and write one straight
into a mapped receive page (``tx_pages``, ``rx_pages``); the copy plan is
for the rest. netback's adapter does the MapBatch/UnmapBatch calls and the
mmaps.
"""
from __future__ import annotations

import collections
from typing import Callable, Sequence

from xenlab.xen import abi

# A frontend's pool: one page per slot of each ring. More refs than that is
# a frontend that does not keep its grants: the rest are copied as usual.
MAX_PERSISTENT = abi.NET_TX_RING_SIZE + abi.NET_RX_RING_SIZE
MAP_BATCH = 256               # refs in one MapBatch call

Key = tuple[int, bool]        # (grant ref, writable): rx pages writable, tx read-only


class GrantCache:
    def __init__(self, limit: int = MAX_PERSISTENT):
        self.limit = limit
        self._pages: dict[Key, memoryview] = {}
        # The same pages by ref alone, for netback's cores to read a one-slot
        # frame from (tx, read-only) or write one into (rx) with no copy plan.
        self.tx_pages: dict[int, memoryview] = {}
        self.rx_pages: dict[int, memoryview] = {}
        self._handles: dict[Key, int] = {}
        self._wanted: dict[Key, None] = {}       # to map, oldest first
        self._mapping: set[Key] = set()          # asked for, not answered yet
        self._never: set[Key] = set()
        self.full = False                        # the maptrack is full: map no more
        self.stats: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return len(self._pages)

    # -- the copy path ------------------------------------------------------------
    def copy_local(self, copies: Sequence, local_page: Callable[[int], memoryview]
                   ) -> tuple[list[int | None], list[int]]:
        """Run every copy whose frontend page is mapped. ``copies`` are
        netback_core.GrantCopy (gref, gref_offset, gfn, gfn_offset, length,
        to_frontend); ``local_page(gfn)`` is our own frame. Returns one status
        per copy (None where the hypervisor must do it) and the indexes of
        those; their pages are wanted for mapping."""
        pages = self._pages
        statuses: list[int | None] = [None] * len(copies)
        remote: list[int] = []
        page_size = abi.PAGE_SIZE
        for i, (gref, gref_offset, gfn, gfn_offset, length, to_frontend) in enumerate(copies):
            page = pages.get((gref, to_frontend))
            if page is None:
                remote.append(i)
                self.want((gref, to_frontend))
                continue
            if (gref_offset < 0 or gfn_offset < 0 or length < 0
                    or gref_offset + length > page_size or gfn_offset + length > page_size):
                statuses[i] = abi.GNTST_bad_copy_arg       # as the hypervisor would say
                continue
            ours = local_page(gfn)
            if to_frontend:
                page[gref_offset:gref_offset + length] = ours[gfn_offset:gfn_offset + length]
            else:
                ours[gfn_offset:gfn_offset + length] = page[gref_offset:gref_offset + length]
            statuses[i] = abi.GNTST_okay
        self.stats["local"] += len(copies) - len(remote)
        self.stats["remote"] += len(remote)
        return statuses, remote

    @staticmethod
    def merge(statuses: list[int | None], remote: list[int], answers: Sequence[int]) -> list[int]:
        """The whole batch's statuses, the hypervisor's answers filled in."""
        out = list(statuses)
        for i, status in zip(remote, answers):
            out[i] = status
        return out

    # -- what to map ----------------------------------------------------------------
    def want(self, key: Key) -> None:
        if (self.full or key in self._wanted or key in self._mapping or key in self._never
                or key in self._pages):
            return
        if len(self._pages) + len(self._mapping) + len(self._wanted) >= self.limit:
            return
        self._wanted[key] = None

    @property
    def wanted(self) -> bool:
        return bool(self._wanted) and not self.full

    @property
    def settled(self) -> bool:
        """Nothing waits to be mapped and no map is in flight."""
        return not self.wanted and not self._mapping

    def take_wanted(self, n: int = MAP_BATCH) -> list[Key]:
        """The next refs to map (they count as being mapped until answered)."""
        keys = list(self._wanted)[:n]
        for key in keys:
            del self._wanted[key]
            self._mapping.add(key)
        return keys

    def mapped(self, key: Key, handle: int, page: memoryview) -> None:
        self._mapping.discard(key)
        if len(page) != abi.PAGE_SIZE or (key[1] and page.readonly):
            raise ValueError(f"a mapping of ref {key[0]} must be one "
                             f"{'writable ' if key[1] else ''}page")
        self._pages[key] = page
        (self.rx_pages if key[1] else self.tx_pages)[key[0]] = page
        self._handles[key] = handle
        self.stats["mapped"] += 1

    def refused(self, key: Key, status: int) -> None:
        """The hypervisor would not map it: copy through it from now on."""
        self._mapping.discard(key)
        self.stats["refused"] += 1
        if status == abi.GNTST_no_device_space:
            self.full = True
            self._wanted.clear()
        else:
            self._never.add(key)

    def give_up(self) -> None:
        """Map nothing more (the hypervisor cannot be asked)."""
        self.full = True
        self._wanted.clear()
        self._mapping.clear()

    def drain(self) -> list[int]:
        """Forget every mapping (their views released); the handles to unmap."""
        handles = list(self._handles.values())
        self.tx_pages.clear()
        self.rx_pages.clear()
        for page in self._pages.values():
            page.release()
        self._pages.clear()
        self._handles.clear()
        self._wanted.clear()
        self._mapping.clear()
        return handles
