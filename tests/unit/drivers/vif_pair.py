"""A frontend and a backend of one vif on plain memory: the shared rings are
bytearrays, the frontend's grants a dict, and GNTTABOP_copy a function that
checks what the hypervisor's checks (granted to us, read-only, in the page)."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from xenlab.drivers.netback.rx import NetbackRx
from xenlab.drivers.netback.scratch import GrantCopy, Scratch
from xenlab.drivers.netback.tx import NetbackTx
from xenlab.drivers.netfront_core import Buffer, NetfrontRx, NetfrontTx
from xenlab.xen import abi
from xenlab.xen.netif import make_rx_ring, make_tx_ring
from xenlab.xen.ring import BackRing, FrontRing

SCRATCH_GFN0 = 0x100


class Grants:
    """The frontend's grant table as the backend sees it."""

    def __init__(self):
        self.pages: dict[int, tuple[bytearray, bool]] = {}
        self._next = abi.GNTTAB_NR_RESERVED_ENTRIES

    def grant(self, page: bytearray, readonly: bool) -> int:
        ref = self._next
        self._next += 1
        self.pages[ref] = (page, readonly)
        return ref

    def copy(self, copies: list[GrantCopy], scratch: dict[int, bytearray]) -> list[int]:
        return [self._one(c, scratch) for c in copies]

    def _one(self, c: GrantCopy, scratch: dict[int, bytearray]) -> int:
        if c.length < 0 or c.gref_offset + c.length > abi.PAGE_SIZE \
                or c.gfn_offset + c.length > abi.PAGE_SIZE:
            return abi.GNTST_bad_copy_arg
        if c.gref not in self.pages:
            return abi.GNTST_bad_gntref
        page, readonly = self.pages[c.gref]
        local = scratch[c.gfn]
        if c.to_frontend:
            if readonly:
                return abi.GNTST_permission_denied
            page[c.gref_offset:c.gref_offset + c.length] = local[c.gfn_offset:c.gfn_offset + c.length]
        else:
            local[c.gfn_offset:c.gfn_offset + c.length] = page[c.gref_offset:c.gref_offset + c.length]
        return abi.GNTST_okay


def make_scratch(pages: int = 32, first: int = SCRATCH_GFN0) -> tuple[Scratch, dict[int, bytearray]]:
    mem = {first + i: bytearray(abi.PAGE_SIZE) for i in range(pages)}
    return Scratch(list(mem), list(mem.values())), mem


@dataclass
class Vif:
    """Both ends of one vif, pumped by hand."""

    grants: Grants
    tx_page: bytearray
    rx_page: bytearray
    front_tx: NetfrontTx
    front_rx: NetfrontRx
    back_tx: NetbackTx
    back_rx: NetbackRx
    tx_mem: dict
    rx_mem: dict
    drops: collections.Counter = field(default_factory=collections.Counter)

    @property
    def front_tx_ring(self) -> FrontRing:
        return self.front_tx.ring

    def run_tx(self, rounds: int = 64) -> list[bytes]:
        """netback's tx action until the ring is drained; the frames out."""
        out = []
        for _ in range(rounds):
            batch = self.back_tx.build()
            result = self.back_tx.complete(batch, self.grants.copy(batch.copies, self.tx_mem))
            out += result.frames
            self.drops.update(result.drops)
            if result.fatal or batch.wait_until is not None or not self.back_tx.more_to_do():
                break
        return out

    def run_rx(self, frames: list[bytes]) -> None:
        self.drops.update(self.back_rx.enqueue(frames))
        for _ in range(64):
            batch = self.back_rx.build()
            if not batch.empty:
                result = self.back_rx.complete(batch, self.grants.copy(batch.copies, self.rx_mem))
                self.drops.update(result.drops)
            if not self.back_rx.more_to_do():
                break


def make_vif(mtu: int = abi.ETH_DATA_LEN, nr_tx: int = abi.NET_TX_RING_SIZE,
             nr_rx: int = abi.NET_RX_RING_SIZE, **back_tx_options) -> Vif:
    grants = Grants()
    tx_page, rx_page = bytearray(abi.PAGE_SIZE), bytearray(abi.PAGE_SIZE)
    front_tx_sring, front_rx_sring = make_tx_ring(tx_page), make_rx_ring(rx_page)
    front_tx_sring.init()
    front_rx_sring.init()
    tx_bufs = []
    for _ in range(nr_tx):
        page = bytearray(abi.PAGE_SIZE)
        tx_bufs.append(Buffer(grants.grant(page, readonly=True), memoryview(page)))
    rx_bufs = []
    for _ in range(nr_rx):
        page = bytearray(abi.PAGE_SIZE)
        rx_bufs.append(Buffer(grants.grant(page, readonly=False), memoryview(page)))
    front_tx = NetfrontTx(FrontRing(front_tx_sring), tx_bufs, mtu)
    front_rx = NetfrontRx(FrontRing(front_rx_sring), rx_bufs)
    # The backend's view of the same pages, as a second mapping would be.
    tx_scratch, tx_mem = make_scratch()
    rx_scratch, rx_mem = make_scratch(first=SCRATCH_GFN0 + 0x100)
    back_tx = NetbackTx(BackRing(make_tx_ring(tx_page)), tx_scratch, **back_tx_options)
    back_rx = NetbackRx(BackRing(make_rx_ring(rx_page)), rx_scratch)
    return Vif(grants, tx_page, rx_page, front_tx, front_rx, back_tx, back_rx, tx_mem, rx_mem)


def eth_frame(length: int, src: bytes = bytes.fromhex("00163e000001"),
              dst: bytes = b"\xff" * 6, ethertype: int = 0x88B5, seed: int = 0) -> bytes:
    body = bytes((seed + i) & 0xFF for i in range(length - 14))
    return dst + src + ethertype.to_bytes(2, "big") + body
