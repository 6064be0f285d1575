"""Capturing frames on any NetDevice: a tap feeding a bounded queue, and
the pcap file format (libpcap's classic format, link type Ethernet) that
tshark, tcpdump and Wireshark read.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import struct
from dataclasses import dataclass
from typing import BinaryIO

from xenlab.net.device import NetDevice
from xenlab.xen.errors import XenError

CAPTURE_QUEUE = 4096
DIRECTIONS = {"": frozenset({"tx", "rx"}), "both": frozenset({"tx", "rx"}),
              "tx": frozenset({"tx"}), "rx": frozenset({"rx"})}


@dataclass(frozen=True)
class TappedFrame:
    interface: str
    direction: str      # "tx" | "rx", as the interface sees it
    data: bytes
    timestamp: float    # unix time


def directions(text: str) -> frozenset[str]:
    try:
        return DIRECTIONS[text]
    except KeyError:
        raise XenError(errno.EINVAL, f"direction {text!r}: expected both, tx or rx") from None


class DeviceCapture:
    """A tap on one device feeding a bounded queue. When the reader falls
    behind, the oldest frames go and are counted in ``dropped``. Iterate it
    with ``async for``; ``gone()`` ends the iteration with ENOENT."""

    def __init__(self, device: NetDevice, wanted: frozenset[str], limit: int = CAPTURE_QUEUE):
        self.device = device
        self._directions = wanted
        self._queue: collections.deque[TappedFrame] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._gone = False
        self.dropped = 0
        self._handle = device.add_tap(self._tap)

    @property
    def interface(self) -> str:
        return self.device.name

    def _tap(self, direction: str, frame: bytes, now: float) -> None:
        if direction not in self._directions:
            return
        if len(self._queue) >= self._limit:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(TappedFrame(self.device.name, direction, bytes(frame), now))
        self._ready.set()

    def gone(self) -> None:
        self._gone = True
        self._ready.set()

    def __aiter__(self) -> "DeviceCapture":
        return self

    async def __anext__(self) -> TappedFrame:
        while not self._queue:
            if self._gone:
                raise XenError(errno.ENOENT, f"interface {self.device.name} went away")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self.device.remove_tap(self._handle)

    def __enter__(self) -> "DeviceCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- pcap (https://wiki.wireshark.org/Development/LibpcapFileFormat) -----------
PCAP_MAGIC = 0xA1B2C3D4          # microsecond timestamps
PCAP_HEADER = struct.Struct("<IHHiIII")   # magic, major, minor, thiszone, sigfigs, snaplen, network
PCAP_RECORD = struct.Struct("<IIII")      # ts_sec, ts_usec, incl_len, orig_len
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144


class PcapWriter:
    def __init__(self, out: BinaryIO, snaplen: int = SNAPLEN):
        self.out = out
        self.snaplen = snaplen
        self.count = 0
        out.write(PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, frame: bytes, timestamp: float) -> None:
        sec = int(timestamp)
        usec = min(int(round((timestamp - sec) * 1e6)), 999_999)
        data = frame[:self.snaplen]
        self.out.write(PCAP_RECORD.pack(sec, usec, len(data), len(frame)))
        self.out.write(data)
        self.count += 1


def read_pcap(data: bytes) -> list[tuple[float, bytes]]:
    """(timestamp, frame) records of a classic little-endian pcap file."""
    if len(data) < PCAP_HEADER.size:
        raise ValueError("not a pcap file: too short")
    magic, _, _, _, _, _, network = PCAP_HEADER.unpack_from(data)
    if magic != PCAP_MAGIC:
        raise ValueError(f"not a little-endian microsecond pcap file (magic {magic:#x})")
    if network != LINKTYPE_ETHERNET:
        raise ValueError(f"link type {network} is not Ethernet")
    out, pos = [], PCAP_HEADER.size
    while pos < len(data):
        if pos + PCAP_RECORD.size > len(data):
            raise ValueError("truncated record header")
        sec, usec, incl, _ = PCAP_RECORD.unpack_from(data, pos)
        pos += PCAP_RECORD.size
        if pos + incl > len(data):
            raise ValueError("truncated record")
        out.append((sec + usec / 1e6, data[pos:pos + incl]))
        pos += incl
    return out
