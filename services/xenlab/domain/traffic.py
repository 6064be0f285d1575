"""Traffic inside a domain: a generator and a sink, for measuring the data path.

``blast`` is what Linux's pktgen is: frames built in the domain and handed
to the device in batches, so that the source of a throughput figure sits
inside the guest's network path rather than behind a gRPC message per
frame. A netfront device holds frames that find no free ring slot in a
bounded backlog and drops past it ("tx_ring_full"); a real guest never sees
that, because netfront stops its queue (netif_stop_queue) and the qdisc
holds the packets until tx completions wake it. The generator does the
same: it hands over a batch only when the backlog has room for it, and
otherwise sleeps a tick.

``Sink`` is an AF_PACKET socket bound to one ethertype: it takes the frames
of that type off an interface ahead of the IP stack (which would drop them
as an unknown protocol) and counts them, with the first and last arrival
times. Both sides use ``time.monotonic`` (CLOCK_MONOTONIC), one clock for
every process of a host, so a client can put the sender's start and the
receiver's last arrival on one time line.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from xenlab import eventloop
from xenlab.net.device import NetDevice
from xenlab.xen.abi import ETH_HLEN
from xenlab.xen.errors import XenError

BENCH_ETHERTYPE = 0x88B5       # IEEE Std 802: Local Experimental Ethertype 1
SEQ = struct.Struct(">I")      # after the Ethernet header: the frame's sequence number
MIN_SIZE = ETH_HLEN + SEQ.size
DEFAULT_SIZE = 64
DEFAULT_BATCH = 64
MAX_BATCH = 1024
DEFAULT_TIMEOUT = 60.0
DEFAULT_IDLE = 1.0
QUEUE_WAIT = 0.001             # seconds between looks at a full transmit queue


def frame_template(dst: bytes, src: bytes, size: int, ethertype: int = BENCH_ETHERTYPE) -> bytes:
    """A frame of ``size`` bytes: header, a zero sequence number, a byte pattern."""
    if len(dst) != 6 or len(src) != 6:
        raise XenError(errno.EINVAL, "MAC addresses are 6 bytes")
    if not 0x0600 <= ethertype <= 0xFFFF:
        raise XenError(errno.EINVAL, f"ethertype {ethertype:#x} is not an Ethernet II type")
    if size < MIN_SIZE:
        raise XenError(errno.EINVAL, f"a frame of {size} bytes cannot carry the header and a "
                                     f"sequence number ({MIN_SIZE} at least)")
    pad = bytes(i & 0xFF for i in range(size - MIN_SIZE))
    return dst + src + ethertype.to_bytes(2, "big") + SEQ.pack(0) + pad


def numbered(template: bytes, seq: int) -> bytes:
    return template[:ETH_HLEN] + SEQ.pack(seq & 0xFFFFFFFF) + template[MIN_SIZE:]


def random_unicast(rng: random.Random) -> bytes:
    """A MAC no station has: unicast, locally administered (IEEE 802 U/L bit)."""
    mac = rng.getrandbits(48).to_bytes(6, "big")
    return bytes([(mac[0] & 0xFC) | 0x02]) + mac[1:]


def queue_room(device: NetDevice) -> int | None:
    """Frames the device's transmit backlog still takes; None: it has none
    (it sends or drops at once)."""
    core = getattr(device, "tx_core", None)
    backlog = getattr(core, "backlog", None)
    if backlog is None:
        return None
    return max(0, core.backlog_max - len(backlog))


@dataclass
class BlastResult:
    sent: int = 0                     # frames handed to the device
    drops: collections.Counter = field(default_factory=collections.Counter)
    started: float = 0.0
    finished: float = 0.0

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


async def blast(device: NetDevice, dst: bytes, count: int, size: int = DEFAULT_SIZE,
                ethertype: int = BENCH_ETHERTYPE, batch: int = DEFAULT_BATCH,
                timeout: float = DEFAULT_TIMEOUT,
                clock: Callable[[], float] = time.monotonic,
                random_src: bool = False, rng: random.Random | None = None) -> BlastResult:
    """Hand ``count`` numbered frames to ``device``; see the module docstring.
    With ``random_src`` each frame comes from a new random station, as
    macof floods a switch's forwarding table."""
    if count < 0:
        raise XenError(errno.EINVAL, f"count {count} is negative")
    if not 1 <= batch <= MAX_BATCH:
        raise XenError(errno.EINVAL, f"batch {batch} is out of range 1..{MAX_BATCH}")
    if size > device.mtu + ETH_HLEN:
        raise XenError(errno.EINVAL, f"a frame of {size} bytes is over {device.name}'s MTU "
                                     f"{device.mtu} plus the Ethernet header")
    template = frame_template(dst, device.mac, size, ethertype)
    result = BlastResult()
    before = collections.Counter(device.drops)
    result.started = clock()
    deadline = result.started + timeout
    seq = 0
    while seq < count:
        want = min(batch, count - seq)
        room = queue_room(device)
        if room is not None and room < want:
            if clock() > deadline:
                break
            await asyncio.sleep(QUEUE_WAIT)
            continue
        frames = [numbered(template, seq + i) for i in range(want)]
        if random_src:
            rng = rng or random.Random()
            frames = [f[:6] + random_unicast(rng) + f[12:] for f in frames]
        device.transmit(frames)
        seq += want
        # Let the event loop run the upcalls (tx completions) between batches.
        await asyncio.sleep(0)
    result.finished = clock()
    result.sent = seq
    result.drops = collections.Counter(device.drops) - before
    return result


class Sink:
    """Counts frames of one ethertype on a device, ahead of its receiver."""

    def __init__(self, device: NetDevice, ethertype: int = BENCH_ETHERTYPE, count: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.device = device
        self.ethertype = ethertype.to_bytes(2, "big")
        self.count = count
        self.clock = clock
        self.received = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.arrived = asyncio.Event()       # set on every batch that had ours
        self.done = asyncio.Event()          # ``count`` reached
        self._next = None

    def __enter__(self) -> "Sink":
        self._next = self.device.receiver
        self.device.receiver = self._receive
        return self

    def __exit__(self, *exc) -> None:
        # Only ours to undo: the interface may have been re-attached meanwhile.
        if self.device.receiver == self._receive:
            self.device.receiver = self._next

    def _receive(self, frames: list[bytes]) -> None:
        rest = self.take(frames)
        if rest and self._next is not None:
            self._next(rest)

    def take(self, frames: list[bytes]) -> list[bytes]:
        """Count ours; return the others."""
        rest = []
        mine = 0
        for frame in frames:
            if frame[12:14] == self.ethertype:
                mine += 1
                self.bytes += len(frame)
            else:
                rest.append(frame)
        if mine:
            now = self.clock()
            if not self.received:
                self.first = now
            self.last = now
            self.received += mine
            self.arrived.set()
            if self.count and self.received >= self.count:
                self.done.set()
        return rest

    async def wait(self, idle: float = DEFAULT_IDLE, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Until ``count`` arrived, or ``idle`` seconds passed without a frame
        once one came, or ``timeout``."""
        deadline = self.clock() + timeout
        while not self.done.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            self.arrived.clear()
            try:
                await eventloop.wait_for(self.arrived.wait(), min(left, idle) if self.received else left)
            except TimeoutError:
                if self.received:
                    return
