"""ARP for IPv4 over Ethernet (RFC 826): the packet codec and the neighbour table.

The table is sans-I/O: every method takes ``now`` and returns what to do
(requests to send, packets to flush, packets dropped); the stack owns the
clock and the wire.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from xenlab.net.errors import PacketError
from xenlab.net.ethernet import ETH_ALEN, ETH_P_IP, ZERO, is_valid_unicast

ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = _ARP.size              # 28 bytes for Ethernet/IPv4
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")
TABLE_MAX = 1024                 # resolved entries kept, as Linux's gc_thresh3


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sha: bytes                   # sender hardware address
    spa: IPv4Address             # sender protocol address
    tha: bytes
    tpa: IPv4Address

    @classmethod
    def parse(cls, data: bytes) -> ArpPacket:
        if len(data) < ARP_LEN:
            raise PacketError("truncated", f"ARP needs {ARP_LEN} bytes, got {len(data)}")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
        if (htype, ptype, hlen, plen) != (ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4):
            raise PacketError("bad_arp", f"not Ethernet/IPv4 ARP (htype {htype}, ptype {ptype:#06x})")
        if op not in (ARPOP_REQUEST, ARPOP_REPLY):
            raise PacketError("bad_arp", f"unknown ARP op {op}")
        packet = cls(op, sha, IPv4Address(spa), tha, IPv4Address(tpa))
        if not is_valid_unicast(sha) or packet.spa.is_multicast or packet.spa == _LIMITED_BROADCAST:
            # Only a station owns an address; Linux's arp_process refuses the rest too.
            raise PacketError("bad_arp", "sender is not a station address")
        return packet

    def build(self) -> bytes:
        return _ARP.pack(ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4, self.op,
                         self.sha, self.spa.packed, self.tha, self.tpa.packed)

    @classmethod
    def request(cls, sha: bytes, spa: IPv4Address, tpa: IPv4Address) -> ArpPacket:
        return cls(ARPOP_REQUEST, sha, spa, ZERO, tpa)

    @property
    def is_gratuitous(self) -> bool:
        """Announcing one's own address: sender and target IP are the same."""
        return self.spa == self.tpa


@dataclass
class _Pending:
    """An address being resolved (Linux's NUD_INCOMPLETE) and what waits on it."""
    requests_sent: int
    next_retry: float
    queue: deque[bytes] = field(default_factory=deque)


@dataclass(frozen=True)
class Learned:
    """What updating the table did: whether the mapping is new or moved, and
    the packets that were waiting on it."""
    changed: bool
    flushed: list[bytes]


@dataclass(frozen=True)
class Timers:
    """What ``ArpTable.poll`` decided: addresses to ask again, and addresses
    given up on with how many packets each dropped; ``dropped`` holds those
    packets, oldest first (a router owes their senders an ICMP host
    unreachable, as Linux's arp_error_report sends); ``probe``: entries in
    use past their reachable time, to ask again by unicast to the address
    they hold (Linux's NUD_PROBE), as (ip, mac)."""
    retry: list[IPv4Address]
    failed: list[tuple[IPv4Address, int]]
    dropped: list[bytes] = field(default_factory=list)
    probe: list[tuple[IPv4Address, bytes]] = field(default_factory=list)


DELAY_FIRST_PROBE = 5.0          # Linux's delay_first_probe_time


@dataclass
class _Entry:
    mac: bytes
    expires: float               # confirmed + timeout: gone then, unless being probed
    probe_at: float | None = None  # set while in use past reachable (DELAY, then PROBE)
    probes: int = 0


class ArpTable:
    """Resolved entries with an expiry, and pending resolutions with a bounded queue.

    ``retries`` is the total number of requests sent before giving up (Linux's
    mcast_solicit, and its ucast_probes for a stale entry); ``queue_limit``
    bounds the packets held per address (unres_qlen).

    As Linux's neighbour states: an entry is REACHABLE for half of ``timeout``
    after it was confirmed (an ARP packet from that address), then STALE: still
    used, but its first use sets off a check (DELAY for DELAY_FIRST_PROBE s,
    then up to ``retries`` unicast requests to the address it holds, PROBE);
    an answer confirms it again, no answer removes it, and the next packet
    resolves by broadcast. An entry nobody uses goes at ``timeout``. So a
    conversation that lasts never stops for a broadcast, and a lab of N
    domains is not asked by every domain every ``timeout`` seconds.
    """

    def __init__(self, timeout: float, retry: float, retries: int, queue_limit: int):
        self.timeout = timeout
        self.reachable = timeout / 2
        self.retry = retry
        self.retries = retries
        self.queue_limit = queue_limit
        self._entries: dict[IPv4Address, _Entry] = {}
        self._pending: dict[IPv4Address, _Pending] = {}

    def lookup(self, ip: IPv4Address, now: float) -> bytes | None:
        """The address to send to (a use: a stale entry starts its check)."""
        entry = self._entries.get(ip)
        if entry is None:
            return None
        if entry.probe_at is None and now >= entry.expires - self.reachable:
            if now >= entry.expires:
                del self._entries[ip]
                return None
            entry.probe_at = now + min(DELAY_FIRST_PROBE, self.reachable)
        return entry.mac

    def knows(self, ip: IPv4Address, now: float) -> bool:
        """An entry exists, resolved or still pending (RFC 826's 'already in my table')."""
        return self._live(ip, now) or ip in self._pending

    def _live(self, ip: IPv4Address, now: float) -> bool:
        entry = self._entries.get(ip)
        return entry is not None and (entry.probe_at is not None or now < entry.expires)

    def learn(self, ip: IPv4Address, mac: bytes, now: float) -> Learned:
        old = self._entries[ip].mac if self._live(ip, now) else None
        if old is None:
            self._entries.pop(ip, None)
            if len(self._entries) >= TABLE_MAX:
                self._make_room(now)
        self._entries[ip] = _Entry(mac, now + self.timeout)
        pending = self._pending.pop(ip, None)
        flushed = list(pending.queue) if pending else []
        return Learned(changed=old != mac, flushed=flushed)

    def _make_room(self, now: float) -> None:
        """Forget expired entries, or failing that the one closest to expiry."""
        for ip in [ip for ip in self._entries if not self._live(ip, now)]:
            del self._entries[ip]
        if len(self._entries) >= TABLE_MAX:
            del self._entries[min(self._entries, key=lambda ip: self._entries[ip].expires)]

    def enqueue(self, ip: IPv4Address, packet: bytes, now: float) -> tuple[bool, int]:
        """Hold ``packet`` until ``ip`` resolves. Returns (send a request now, packets dropped)."""
        pending = self._pending.get(ip)
        first = pending is None
        if first:
            pending = self._pending[ip] = _Pending(requests_sent=1, next_retry=now + self.retry)
        dropped = 0
        if self.queue_limit == 0:
            return first, 1
        if len(pending.queue) >= self.queue_limit:
            # The oldest goes, as Linux's __neigh_event_send drops the queue head.
            pending.queue.popleft()
            dropped = 1
        pending.queue.append(packet)
        return first, dropped

    def poll(self, now: float) -> Timers:
        retry, failed, dropped, probe = [], [], [], []
        for ip, pending in list(self._pending.items()):
            if now < pending.next_retry:
                continue
            if pending.requests_sent < self.retries:
                pending.requests_sent += 1
                pending.next_retry = now + self.retry
                retry.append(ip)
            else:
                del self._pending[ip]
                failed.append((ip, len(pending.queue)))
                dropped += pending.queue
        for ip, entry in list(self._entries.items()):
            if entry.probe_at is None:
                if now >= entry.expires:
                    del self._entries[ip]
            elif now >= entry.probe_at:
                if entry.probes < self.retries:
                    entry.probes += 1
                    entry.probe_at = now + self.retry
                    probe.append((ip, entry.mac))
                else:
                    del self._entries[ip]        # no answer to the probes: NUD_FAILED
        return Timers(retry, failed, dropped, probe)

    def next_deadline(self) -> float | None:
        times = [p.next_retry for p in self._pending.values()]
        times += [e.expires if e.probe_at is None else e.probe_at for e in self._entries.values()]
        return min(times, default=None)

    def restore(self, ip: IPv4Address, mac: bytes, expires: float) -> None:
        """An entry a resumed kernel brings back from its suspend record,
        with the lifetime it had left."""
        if ip in self._entries or len(self._entries) < TABLE_MAX:
            self._entries[ip] = _Entry(mac, expires)

    def entries(self, now: float) -> dict[IPv4Address, tuple[bytes, float]]:
        """The entries in use or unexpired: (mac, expiry)."""
        return {ip: (e.mac, e.expires) for ip, e in self._entries.items() if self._live(ip, now)}

    def states(self, now: float) -> dict[IPv4Address, str]:
        """Each entry's state as `ip neigh` names it: REACHABLE, STALE, DELAY or PROBE."""
        out = {}
        for ip, e in self._entries.items():
            if not self._live(ip, now):
                continue
            if e.probe_at is not None:
                out[ip] = "PROBE" if e.probes else "DELAY"
            else:
                out[ip] = "REACHABLE" if now < e.expires - self.reachable else "STALE"
        return out

    def pending(self) -> dict[IPv4Address, int]:
        """Addresses being resolved, with how many packets wait on each."""
        return {ip: len(p.queue) for ip, p in self._pending.items()}
