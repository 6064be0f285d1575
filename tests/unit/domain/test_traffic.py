"""The in-domain traffic generator and sink (xenlab.domain.traffic)."""
from __future__ import annotations

import asyncio
import collections
import struct

import pytest

from xenlab.domain.traffic import (BENCH_ETHERTYPE, MIN_SIZE, Sink, blast, frame_template,
                                   numbered, queue_room)
from xenlab.net.device import NetDevice
from xenlab.xen.errors import XenError

SRC = bytes.fromhex("00163e000001")
DST = bytes.fromhex("00163e000002")


class QueuedNic(NetDevice):
    """A netfront stand-in: ``ring`` slots, then a backlog of ``backlog_max``
    frames, then drops; ``complete()`` frees ring slots as tx responses do."""

    def __init__(self, ring: int = 8, backlog_max: int = 4):
        super().__init__("eth0", SRC)
        self.tx_core = self
        self.backlog_max = backlog_max
        self.backlog: collections.deque[bytes] = collections.deque()
        self.ring_size = ring
        self.on_ring: list[bytes] = []
        self.wire: list[bytes] = []

    def transmit(self, frames: list[bytes]) -> None:
        for frame in frames:
            if not self.backlog and len(self.on_ring) < self.ring_size:
                self.on_ring.append(frame)
                self.count_tx([frame])
            elif len(self.backlog) < self.backlog_max:
                self.backlog.append(frame)
            else:
                self.drop("tx_ring_full")

    def complete(self) -> None:
        self.wire += self.on_ring
        self.on_ring = []
        while self.backlog and len(self.on_ring) < self.ring_size:
            frame = self.backlog.popleft()
            self.on_ring.append(frame)
            self.count_tx([frame])


class PlainNic(NetDevice):
    def transmit(self, frames: list[bytes]) -> None:
        self.count_tx(frames)


def test_frames_carry_size_type_and_sequence():
    template = frame_template(DST, SRC, 64)
    frame = numbered(template, 7)
    assert len(frame) == 64
    assert frame[:6] == DST and frame[6:12] == SRC
    assert int.from_bytes(frame[12:14], "big") == BENCH_ETHERTYPE
    assert struct.unpack_from(">I", frame, 14)[0] == 7
    with pytest.raises(XenError):
        frame_template(DST, SRC, MIN_SIZE - 1)
    with pytest.raises(XenError):
        frame_template(DST, SRC, 64, ethertype=0x05DC)     # a length, not a type


async def test_blast_waits_for_the_queue_instead_of_overflowing_it():
    nic = QueuedNic(ring=8, backlog_max=4)

    async def completions():
        while True:
            await asyncio.sleep(0.002)
            nic.complete()

    task = asyncio.create_task(completions())
    try:
        result = await blast(nic, DST, 100, size=60, batch=4, timeout=10)
    finally:
        task.cancel()
    nic.complete()
    nic.complete()
    assert result.sent == 100 and result.dropped == 0
    assert nic.drops == {}
    seqs = [struct.unpack_from(">I", f, 14)[0] for f in nic.wire]
    assert seqs == list(range(100))


async def test_blast_gives_up_at_the_timeout_and_says_how_many_went():
    nic = QueuedNic(ring=8, backlog_max=4)          # nothing ever completes
    result = await blast(nic, DST, 100, size=60, batch=4, timeout=0.05)
    assert result.sent == 12                         # 8 on the ring, 4 in the backlog
    assert result.dropped == 0
    assert queue_room(nic) == 0


async def test_blast_counts_what_the_device_drops():
    nic = PlainNic("eth0", SRC, mtu=1500)
    assert queue_room(nic) is None
    result = await blast(nic, DST, 10, size=64)
    assert result.sent == 10 and nic.counters["tx_packets"] == 10
    with pytest.raises(XenError):
        await blast(nic, DST, 1, size=1515)          # over MTU + header


async def test_sink_takes_its_ethertype_and_passes_the_rest_on():
    nic = PlainNic("eth0", DST)
    passed: list[bytes] = []
    nic.receiver = passed.extend
    ours = [numbered(frame_template(DST, SRC, 64), i) for i in range(3)]
    arp = DST + SRC + b"\x08\x06" + bytes(46)
    times = iter([10.0, 11.5])
    with Sink(nic, count=3, clock=lambda: next(times)) as sink:
        nic.deliver([ours[0], arp])
        nic.deliver(ours[1:])
        assert sink.done.is_set()
    assert passed == [arp]
    assert (sink.received, sink.bytes, sink.first, sink.last) == (3, 192, 10.0, 11.5)
    assert nic.receiver == passed.extend             # put back
    assert nic.counters["rx_packets"] == 4


async def test_sink_ends_when_traffic_stops():
    nic = PlainNic("eth0", DST)
    frame = frame_template(DST, SRC, 64)
    with Sink(nic, count=100) as sink:
        asyncio.get_running_loop().call_later(0.01, nic.deliver, [frame] * 5)
        await asyncio.wait_for(sink.wait(idle=0.05, timeout=5), 2)
    assert sink.received == 5 and not sink.done.is_set()


async def test_sink_without_traffic_ends_at_the_timeout():
    nic = PlainNic("eth0", DST)
    with Sink(nic) as sink:
        await asyncio.wait_for(sink.wait(idle=0.01, timeout=0.05), 2)
    assert sink.received == 0 and sink.first == 0.0
