"""UDP throughput tests as iperf -u runs them, sans-I/O.

A sender offers datagrams at a rate (``Pacer`` says how many are due at a
given time); each starts as iperf 2's UDP header (``encode``): a signed
32-bit sequence number, then the send time in seconds and microseconds.
After the last one the sender sends the end of the test: datagrams whose
sequence number is minus the number of datagrams sent, so that the receiver
learns how many it should have had (iperf 2 negates the last id the same
way).

``PerfReceiver`` takes what arrives, with the arrival time, and reports
each interval and the whole test: datagrams, bytes, loss (sequence numbers
that never came; one that comes late is out of order and no longer lost,
as iperf counts), duplicates, and the interarrival jitter of RFC 3550 6.4.1
(J += (|D| - J) / 16, D the change in transit time between consecutive
datagrams), which is what iperf reports. Intervals start at the first
arrival, as iperf's server counts them.

``SenderStats`` keeps the sender's own intervals. Every time is seconds on
one clock (CLOCK_MONOTONIC, shared by every process of a host, so the
transit times are real ones in a lab on one host; jitter needs only their
differences, so it holds across hosts too).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from xenlab.net.errors import PacketError

HEADER = struct.Struct("!iII")      # iperf 2's UDP datagram: id, tv_sec, tv_usec
MIN_LENGTH = HEADER.size
DEFAULT_LENGTH = 1470               # iperf -u's -l
DEFAULT_RATE = 1_000_000.0          # iperf -u's -b: 1 Mbit/s
DEFAULT_PORT = 5001
DEFAULT_DURATION = 10.0
DEFAULT_INTERVAL = 1.0
SEQ_MAX = 0x7FFFFFFF
END_COPIES = 3                      # end-of-test datagrams sent (each may be lost)
REORDER_WINDOW = 65536              # sequence numbers below the highest still told apart
JITTER_GAIN = 1 / 16                # RFC 3550 6.4.1


def encode(seq: int, sent: float, length: int) -> bytes:
    """A datagram payload of ``length`` bytes: the header, then zeros."""
    if not MIN_LENGTH <= length <= 0xFFFF:
        raise ValueError(f"a datagram of {length} bytes cannot carry the {MIN_LENGTH}-byte header")
    sec = int(sent)
    usec = min(999_999, int(round((sent - sec) * 1e6)))
    return HEADER.pack(seq, sec & 0xFFFFFFFF, usec) + bytes(length - MIN_LENGTH)


def decode(payload: bytes) -> tuple[int, float]:
    """(sequence number, send time) of a datagram."""
    if len(payload) < MIN_LENGTH:
        raise PacketError("truncated", f"{len(payload)} bytes is shorter than the "
                                       f"{MIN_LENGTH}-byte perf header")
    seq, sec, usec = HEADER.unpack_from(payload)
    return seq, sec + usec / 1e6


class Pacer:
    """Datagram i of ``length`` bytes is due at ``start + i * length * 8 / rate``,
    for ``duration`` seconds."""

    def __init__(self, rate: float, length: int, duration: float, start: float):
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate {rate} must be a finite number of bits per second above 0")
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration {duration} must be a finite number of seconds above 0")
        self.gap = length * 8 / rate
        self.start = start
        self.end = start + duration
        self.count = min(SEQ_MAX, max(1, math.floor(duration / self.gap)))
        self.sent = 0

    def due(self, now: float) -> int:
        """How many datagrams are due by ``now`` and not yet sent."""
        if now < self.start:
            return 0
        upto = min(self.count, math.floor((now - self.start) / self.gap) + 1)
        return max(0, upto - self.sent)

    def due_time(self, seq: int) -> float:
        """When datagram ``seq`` is due."""
        return self.start + seq * self.gap

    def next_at(self) -> float | None:
        """When the next datagram is due; None when all were sent."""
        if self.sent >= self.count:
            return None
        return self.due_time(self.sent)

    def took(self, n: int) -> None:
        self.sent += n


@dataclass
class Interval:
    """One report. ``start`` and ``end``: seconds since the test began."""
    start: float
    end: float
    datagrams: int = 0
    bytes: int = 0
    lost: int = 0
    jitter: float = 0.0
    out_of_order: int = 0
    duplicates: int = 0
    errors: int = 0           # sender: not sent; receiver: not perf datagrams
    total: bool = False

    @property
    def rate(self) -> float:
        """Bits per second of UDP payload."""
        span = self.end - self.start
        return self.bytes * 8 / span if span > 0 else 0.0

    @property
    def loss(self) -> float:
        """Lost datagrams, as a fraction of those sent."""
        expected = self.datagrams - self.duplicates + self.lost
        return self.lost / expected if expected > 0 else 0.0


class SenderStats:
    """The sender's intervals: datagrams and bytes handed to the stack, and
    those it refused (errors)."""

    def __init__(self, start: float, interval: float = DEFAULT_INTERVAL):
        _check_interval(interval)
        self.start = start
        self.interval = interval
        self._current = Interval(0.0, interval)
        self.total = Interval(0.0, 0.0, total=True)

    def sent(self, now: float, datagrams: int, nbytes: int, errors: int = 0) -> list[Interval]:
        """Count what was sent at ``now``; the intervals it closed."""
        done = self._roll(now)
        for report in (self._current, self.total):
            report.datagrams += datagrams
            report.bytes += nbytes
            report.errors += errors
        return done

    def finish(self, now: float) -> list[Interval]:
        """The last interval (partial, unless nothing was sent in it) and the
        total, ending at ``now``."""
        done = self._roll(now)
        self._current.end = max(self._current.start, now - self.start)
        self.total.end = now - self.start
        last = [self._current] if self._current.datagrams or self._current.errors else []
        return done + last + [self.total]

    def _roll(self, now: float) -> list[Interval]:
        done = []
        while now - self.start >= self._current.end:
            done.append(self._current)
            self._current = Interval(self._current.end, self._current.end + self.interval)
        return done


class PerfReceiver:
    def __init__(self, interval: float = DEFAULT_INTERVAL):
        _check_interval(interval)
        self.interval = interval
        self.start: float | None = None
        self.last: float | None = None
        self.jitter = 0.0
        self.expected_total: int | None = None     # from the end-of-test datagram
        self._next = 0                             # highest sequence number seen + 1
        self._seen: set[int] = set()               # within REORDER_WINDOW of the highest
        self._transit: float | None = None
        self._current: Interval | None = None
        self.total = Interval(0.0, 0.0, total=True)
        self._closed: list[Interval] = []

    @property
    def ended(self) -> bool:
        return self.expected_total is not None

    def receive(self, payload: bytes, arrived: float) -> None:
        """A datagram's UDP payload, arrived at ``arrived``."""
        try:
            seq, sent = decode(payload)
        except PacketError:
            self._count(arrived, errors=1)
            return
        if seq < 0:
            self.expected_total = -seq
            return
        if self.start is None:
            self.start = arrived
            self._current = Interval(0.0, self.interval)
        self._roll(arrived)
        self.last = arrived
        transit = arrived - sent
        if self._transit is not None:
            self.jitter += (abs(transit - self._transit) - self.jitter) * JITTER_GAIN
        self._transit = transit
        lost = ooo = dup = 0
        if seq >= self._next:
            lost = seq - self._next
            self._next = seq + 1
        elif seq in self._seen:
            dup = 1
        else:
            ooo, lost = 1, -1          # counted lost when the gap opened; it came after all
        if not dup:
            self._seen.add(seq)
            if len(self._seen) > 2 * REORDER_WINDOW:
                floor = self._next - REORDER_WINDOW
                self._seen = {s for s in self._seen if s >= floor}
        self._count(arrived, 1, len(payload), lost, ooo, dup)

    def _count(self, arrived: float, datagrams: int = 0, nbytes: int = 0, lost: int = 0,
               ooo: int = 0, dup: int = 0, errors: int = 0) -> None:
        reports = [self.total] + ([self._current] if self._current is not None else [])
        for report in reports:
            report.datagrams += datagrams
            report.bytes += nbytes
            report.lost += lost
            report.out_of_order += ooo
            report.duplicates += dup
            report.errors += errors
            report.jitter = self.jitter

    def _roll(self, now: float) -> None:
        while self._current is not None and now - self.start >= self._current.end:
            self._current.jitter = self.jitter
            self._closed.append(self._current)
            self._current = Interval(self._current.end, self._current.end + self.interval)

    def reports(self, now: float) -> list[Interval]:
        """The intervals that ended by ``now``, each once."""
        if self.start is not None:
            self._roll(now)
        closed, self._closed = self._closed, []
        return closed

    def finish(self) -> list[Interval]:
        """The last (partial) interval and the total. Datagrams the
        end-of-test said were sent but never came after the highest are
        lost too."""
        out = self.reports(self.last) if self.last is not None else []
        if self._current is not None and self._current.datagrams:
            self._current.end = self.last - self.start
            out.append(self._current)
        if self.expected_total is not None and self.expected_total > self._next:
            tail = self.expected_total - self._next
            self.total.lost += tail
            if out:
                out[-1].lost += tail
        self.total.end = (self.last - self.start) if self.last is not None else 0.0
        self.total.jitter = self.jitter
        return out + [self.total]


def _check_interval(interval: float) -> None:
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval {interval} must be a finite number of seconds above 0")
