"""The data path's pure cores, in this process: what each costs per frame
when it runs warm, with no event loop, socket or other process around it.

One vif's rings and pages in plain memory, with netback's mappings of the
frontend's pages (persistent grants, as a lab's vifs have them), and a
bridge of two ports; each round, a batch of frames goes the whole way, one
core after another, as the lab's processes run them:

* ``netfront tx`` (d01): ``NetfrontTx.send``, and ``poll`` for the answers;
* ``netback tx`` (Domain-0): ``NetbackTx.build`` and ``complete``;
* ``veth``: the batch into a veth datagram and out of it again, on both
  hops (Domain-0 packs and the bridge unpacks, then the other way round);
* ``bridge``: ``Bridge.forward_batch``;
* ``netback rx`` (Domain-0): ``NetbackRx.enqueue``, ``build``, ``complete``;
* ``netfront rx`` (d02): ``NetfrontRx.poll``.

Each core is timed on its own in every round. The figure is the median of
``repeats`` runs of nanoseconds per frame; the lab's CPU per frame
("Where the time goes") is what these cost cold, plus the event loop,
the sockets and the counters.
"""
from __future__ import annotations

import gc
import ipaddress
import statistics
import time

from xenlab.bridge.core import Bridge
from xenlab.drivers.netback.antispoof import AntiSpoof
from xenlab.drivers.netback.rx import NetbackRx
from xenlab.drivers.netback.scratch import Scratch
from xenlab.drivers.netback.tx import NetbackTx
from xenlab.drivers.netfront_core import Buffer, NetfrontRx, NetfrontTx
from xenlab.net import veth
from xenlab.xen import abi
from xenlab.xen.netif import make_rx_ring, make_tx_ring
from xenlab.xen.ring import BackRing, FrontRing

CORES = ("netfront tx", "netback tx", "veth", "bridge", "netback rx", "netfront rx")
BATCH = 64
SCRATCH_PAGES = 32
_SRC, _DST = bytes.fromhex("00163e000001"), bytes.fromhex("00163e000002")


class CoreError(RuntimeError):
    """A core lost or changed a frame: the figures would mean nothing."""


class _Path:
    """d01's netfront -> netback -> bridge -> netback -> d02's netfront, in
    plain memory (one vif stands for both: its tx and rx rings)."""

    def __init__(self):
        tx_page, rx_page = bytearray(abi.PAGE_SIZE), bytearray(abi.PAGE_SIZE)
        front_tx_ring, front_rx_ring = make_tx_ring(tx_page), make_rx_ring(rx_page)
        front_tx_ring.init()
        front_rx_ring.init()
        gref = iter(range(abi.GNTTAB_NR_RESERVED_ENTRIES, 1 << 20))
        tx_bufs = [Buffer(next(gref), memoryview(bytearray(abi.PAGE_SIZE)))
                   for _ in range(abi.NET_TX_RING_SIZE)]
        rx_bufs = [Buffer(next(gref), memoryview(bytearray(abi.PAGE_SIZE)))
                   for _ in range(abi.NET_RX_RING_SIZE)]
        self.front_tx = NetfrontTx(FrontRing(front_tx_ring), tx_bufs)
        self.front_rx = NetfrontRx(FrontRing(front_rx_ring), rx_bufs)
        # As a lab's vif with an ip= key: frames from d01 checked (vif-common.sh).
        antispoof = AntiSpoof(_SRC, [ipaddress.IPv4Address("10.0.0.1")])
        self.back_tx = NetbackTx(BackRing(make_tx_ring(tx_page)), _scratch(), antispoof=antispoof)
        self.back_rx = NetbackRx(BackRing(make_rx_ring(rx_page)), _scratch())
        self.back_tx.direct = {b.gref: b.page.toreadonly() for b in tx_bufs}
        self.back_rx.direct = {b.gref: b.page for b in rx_bufs}
        self.front_rx.refill()
        self.bridge = Bridge("xenbr0")
        self.bridge.add_port("vif1.0")
        self.bridge.add_port("vif2.0")
        # d02 spoke first: its MAC is known behind vif2.0.
        self.bridge.forward_batch("vif2.0", [b"\xff" * 6 + _DST + b"\x08\x06" + bytes(46)])

    def round(self, frames: list[bytes], spent: list[float]) -> None:
        """One batch the whole way; each core's seconds added to ``spent``."""
        clock = time.perf_counter
        t0 = clock()
        sent = self.front_tx.send(frames).sent
        t1 = clock()
        batch = self.back_tx.build()
        out = self.back_tx.complete(batch, []).frames
        t2 = clock()
        out = _over_veth(out)
        t3 = clock()
        forwarded = self.bridge.forward_batch("vif1.0", out).get("vif2.0", [])
        t4 = clock()
        forwarded = _over_veth(forwarded)
        t5 = clock()
        self.back_rx.enqueue(forwarded)
        batch = self.back_rx.build()
        self.back_rx.complete(batch, [])
        t6 = clock()
        got = self.front_rx.poll().frames
        t7 = clock()
        completed = self.front_tx.poll().completed
        t8 = clock()
        for i, seconds in enumerate((t1 - t0 + t8 - t7, t2 - t1, t3 - t2 + t5 - t4, t4 - t3,
                                     t6 - t5, t7 - t6)):
            spent[i] += seconds
        if got != frames or len(sent) != len(frames) or completed != len(frames):
            raise CoreError(f"{len(frames)} frames in, {len(sent)} sent, {len(got)} out, "
                            f"{completed} answered")


def _over_veth(frames: list[bytes]) -> list[bytes]:
    """One veth hop: the frames packed as the sending end packs them, and
    unpacked as the receiving end does."""
    out = []
    for datagram in veth.encode_frames(frames):
        out.extend(veth.decode(datagram)[1])
    return out


def _scratch() -> Scratch:
    pages = [memoryview(bytearray(abi.PAGE_SIZE)) for _ in range(SCRATCH_PAGES)]
    return Scratch(list(range(0x100, 0x100 + SCRATCH_PAGES)), pages)


def _frames(size: int, batch: int) -> list[bytes]:
    head = _DST + _SRC + b"\x88\xb5"
    return [head + bytes([i & 0xFF]) * (size - len(head)) for i in range(batch)]


def core_costs(frames: int = 200_000, size: int = 64, batch: int = BATCH, repeats: int = 5) -> dict:
    """Nanoseconds per frame of each core: the median (and min, max) of
    ``repeats`` runs of ``frames`` frames of ``size`` bytes, ``batch`` a
    round."""
    if not abi.ETH_HLEN + 1 <= size <= abi.PAGE_SIZE:
        raise ValueError(f"frame size {size}: 15..{abi.PAGE_SIZE} bytes (one page)")
    path = _Path()
    pool = _frames(size, batch)
    rounds = max(1, frames // batch)
    path.round(pool, [0.0] * len(CORES))          # warm
    runs = []
    gc.collect()
    for _ in range(repeats):
        spent = [0.0] * len(CORES)
        for _ in range(rounds):
            path.round(pool, spent)
        runs.append([s / (rounds * batch) * 1e9 for s in spent])
    out = {}
    for i, name in enumerate(CORES):
        values = [run[i] for run in runs]
        out[name] = {"ns_per_frame": statistics.median(values), "min": min(values), "max": max(values)}
    return {"size": size, "batch": batch, "frames": rounds * batch, "repeats": repeats, "cores": out,
            "sum_ns_per_frame": sum(c["ns_per_frame"] for c in out.values())}
