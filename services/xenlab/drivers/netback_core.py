"""netback's protocol logic, pure: what to copy, what to answer, what to drop.

The backend of a vif never trusts the frontend. As Linux netback does
(drivers/net/xen-netback/netback.c), each tx request is copied out of the
shared ring once (BackRing.get_request) and only the copy is validated and
used. The checks are netback's, in its order (xenvif_tx_build_gops,
xenvif_count_requests, xenvif_get_extras):

* req_prod more than a ring ahead of what was answered: fatal;
* a frame whose slots run past what the frontend produced: fatal;
* more slots after the first than fatal_skb_slots: fatal; more than
  XEN_NETIF_NR_SLOTS_MIN (XEN_NETBK_LEGACY_SLOTS_MAX): every slot answered
  with an error, the frame dropped;
* a later slot larger than what remains of the frame's size: error;
* a first slot shorter than ETH_HLEN: error;
* any slot with offset + size past the page: fatal ("Cross page boundary");
* an extra-info slot of unknown type, a GSO extra with size 0 or an unknown
  GSO type: fatal;
* a grant copy that fails (bad gref, not granted to us...): that slot is
  answered with an error and the frame dropped, as xenvif_tx_check_gop.

xenlab adds one check netback leaves to the frontend: a tx id must be below
NET_TX_RING_SIZE and not already in flight, or the frontend is fatal.

Every consumed slot gets exactly one response (extra-info slots a
NETIF_RSP_NULL one, as make_tx_response writes them), including the slots
of a frame that turned out fatal. Fatal means the vif is disabled; the
adapter logs it and reports xenbus_dev_fatal.

Data moves by grant copy only: the cores plan GNTTABOP_copy segments between
the frontend's grants and the backend's own scratch frames (``Scratch``);
the adapter runs each batch as one copy hypercall and hands the statuses
back. A batch may be built into any scratch area the caller passes, so that
the adapter can keep several batches in flight, each in its own area;
batches are completed in the order they were built. Nothing here does I/O.
"""
from __future__ import annotations

import collections
import errno
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Sequence

from xenlab.drivers.ratelimit import CreditScheduler, Rate, parse_rate
from xenlab.net.ethernet import ETH_P_ARP, ETH_P_IP
from xenlab.xen import abi
from xenlab.xen.digits import C_SPACE, U32_MAX, parse_decimal
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.netif import ExtraInfo
# xen_mb(): the ring module's full fence, for the one event index the
# ring views do not set themselves (rx: "kick me on the next request").
from xenlab.xen.ring import BackRing
from xenlab.xen.ring import _full_barrier as xen_mb
from xenlab.xen.xlcfg import parse_mac

PAGE = abi.PAGE_SIZE
_TX_REQUEST = abi.NETIF_TX_REQUEST
_TX_RESPONSE = abi.NETIF_TX_RESPONSE
_RX_REQUEST = abi.NETIF_RX_REQUEST
_RX_RESPONSE = abi.NETIF_RX_RESPONSE
RX_QUEUE_MAX = 512          # frames waiting for rx requests before "rx_ring_full"
# netback's rx_queue_max (XENVIF_RX_QUEUE_BYTES): half a ring of full pages.
RX_QUEUE_BYTES = abi.NET_RX_RING_SIZE // 2 * abi.PAGE_SIZE
SCRATCH_PAGES = 16          # per batch in flight: 64 KiB, room for any single frame
_U32 = 0xFFFFFFFF

FEATURES = {
    # What netback advertises in its backend directory (netback_probe).
    "feature-sg": "1",
    "feature-gso-tcpv4": "0",
    "feature-gso-tcpv6": "0",
    "feature-ipv6-csum-offload": "0",
    "feature-rx-copy": "1",
    "feature-rx-flip": "0",
    "feature-multicast-control": "0",
    "feature-dynamic-multicast-control": "0",
    "feature-split-event-channels": "0",
    "feature-ctrl-ring": "0",
    # xenvif_max_queues: netback takes one queue (connect refuses more, below).
    "multi-queue-max-queues": "1",
    # Not in netif.h: the frontend may say it keeps its buffer grants for the
    # whole connection, and netback then maps them (xenlab.drivers.grant_cache).
    "feature-persistent": "1",
}


# ----------------------------------------------------------------------------
# Scratch frames and grant copies
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# xenstore: the backend directory and the frontend's ring details
# ----------------------------------------------------------------------------
_BACKEND_PATH = re.compile(r"/local/domain/([0-9]+)/backend/vif/([0-9]+)/([0-9]+)")


@dataclass(frozen=True)
class VifConfig:
    """The toolstack's backend directory, validated (DESIGN section 3)."""

    backend_id: int
    frontend: str
    frontend_id: int
    devid: int
    mac: bytes
    ips: tuple[ipaddress.IPv4Address, ...] = ()
    rate: Rate | None = None
    mtu: int = abi.ETH_DATA_LEN
    bridge: str = abi.DEFAULT_BRIDGE
    vifname: str | None = None
    online: bool = True

    @property
    def name(self) -> str:
        return self.vifname or f"vif{self.frontend_id}.{self.devid}"


def _config_error(message: str) -> XenError:
    return XenError(errno.EINVAL, message)


def parse_backend_dir(path: str, values: Mapping[str, str | None]) -> VifConfig:
    """Validate the backend directory at ``path`` (absolute) from its keys."""
    m = _BACKEND_PATH.fullmatch(path)
    if m is None:
        raise _config_error(f"{path} is not a vif backend path")
    backend_id, domid, devid = (int(g) for g in m.groups())
    frontend = values.get("frontend")
    if not frontend:
        raise XenError(errno.ENOENT, "reading frontend: missing")
    fid_text = values.get("frontend-id")
    if fid_text is None:
        raise XenError(errno.ENOENT, "reading frontend-id: missing")
    frontend_id = parse_decimal(fid_text, "reading frontend-id", maximum=abi.DOMID_FIRST_RESERVED - 1)
    if frontend_id != domid:
        raise _config_error(f"frontend-id {frontend_id} does not match the backend path's d{domid}")
    if not frontend.startswith(f"/local/domain/{frontend_id}/"):
        raise _config_error(f"frontend {frontend} is not under d{frontend_id}'s home")
    mac_text = values.get("mac")
    if not mac_text:
        raise XenError(errno.ENOENT, "reading mac: missing")
    try:
        mac = parse_mac(mac_text)
    except ConfigError as err:
        raise _config_error(f"parsing mac: {err.message}") from None
    return VifConfig(
        backend_id=backend_id, frontend=frontend, frontend_id=frontend_id, devid=devid, mac=mac,
        ips=_parse_ips(values.get("ip")), rate=_parse_rate_key(values.get("rate")),
        mtu=_parse_mtu(values.get("mtu")), bridge=values.get("bridge") or abi.DEFAULT_BRIDGE,
        vifname=values.get("vifname") or None, online=(values.get("online") or "0").strip() == "1")


def _parse_ips(text: str | None) -> tuple[ipaddress.IPv4Address, ...]:
    if not text or not text.strip():
        return ()
    out = []
    for word in text.replace(",", " ").split():
        try:
            out.append(ipaddress.IPv4Interface(word).ip)
        except ValueError:
            raise _config_error(f"parsing ip: {word!r} is not an IPv4 address") from None
    return tuple(out)


def _parse_rate_key(text: str | None) -> Rate | None:
    if not text or not text.strip():
        return None
    try:
        return parse_rate(text)
    except XenError as err:
        raise _config_error(f"parsing rate: {err.message}") from None


def _parse_mtu(text: str | None) -> int:
    if not text or not text.strip():
        return abi.ETH_DATA_LEN
    return parse_decimal(text, "parsing mtu", minimum=abi.ETH_MIN_MTU,
                         maximum=abi.XEN_NETIF_MAX_TX_SIZE)


FRONTEND_KEYS = ("tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
                 "feature-rx-notify", "feature-sg", "multi-queue-num-queues",
                 "feature-persistent")


@dataclass(frozen=True)
class FrontendRings:
    """What netfront published for netback to connect (connect_data_rings)."""

    tx_ring_ref: int
    rx_ring_ref: int
    event_channel: int
    rx_notify: bool
    sg: bool
    persistent: bool = False      # it keeps its buffer grants: map them


def parse_frontend_keys(values: Mapping[str, str | None]) -> FrontendRings:
    """Validate the frontend's keys, as netback's connect() reads them."""
    tx = _read_u32(values, "tx-ring-ref")
    rx = _read_u32(values, "rx-ring-ref")
    port = _read_u32(values, "event-channel")
    if port == 0:
        raise _config_error("reading event-channel: port 0 is never a bound port")
    queues = values.get("multi-queue-num-queues")
    if queues is not None and parse_decimal(queues, "reading multi-queue-num-queues") != 1:
        raise _config_error(f"guest requested {int(queues)} queues, exceeding the maximum of 1")
    if _read_flag(values, "request-rx-copy") != 1:
        raise XenError(errno.EOPNOTSUPP, "frontend does not support rx-copy (request-rx-copy)")
    return FrontendRings(tx, rx, port, _read_flag(values, "feature-rx-notify") == 1,
                         _read_flag(values, "feature-sg") == 1,
                         _read_flag(values, "feature-persistent") == 1)


def _read_u32(values: Mapping[str, str | None], key: str) -> int:
    text = values.get(key)
    if text is None:
        raise XenError(errno.ENOENT, f"reading {key}: missing")
    return parse_decimal(text, f"reading {key}", maximum=U32_MAX)


def _read_flag(values: Mapping[str, str | None], key: str) -> int:
    """A feature flag, as xenbus_read_unsigned(..., 0) reads one: missing or
    empty is 0; anything but a number is the frontend's error."""
    text = values.get(key)
    if text is None or not text.strip(C_SPACE):
        return 0
    return parse_decimal(text, f"reading {key}", maximum=U32_MAX)


# ----------------------------------------------------------------------------
# Anti-spoofing (what vif-bridge's antispoof rules do, done in the backend)
# ----------------------------------------------------------------------------
_DHCP_CLIENT, _DHCP_SERVER = 68, 67
_IPPROTO_UDP = 17


class AntiSpoof:
    """Frames from the guest must carry its MAC and, for IPv4 and ARP, one
    of its addresses; DHCP requests from 0.0.0.0 pass, as vif-common.sh's
    iptables rules let them."""

    def __init__(self, mac: bytes, ips: Sequence[ipaddress.IPv4Address]):
        self.mac = bytes(mac)
        self.ips = frozenset(ip.packed for ip in ips)

    def check(self, frame: bytes) -> str | None:
        """None if the frame may pass, else the drop reason."""
        if frame[6:12] != self.mac:
            return "spoofed_mac"
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETH_P_IP:
            return self._check_ipv4(frame)
        if ethertype == ETH_P_ARP:
            # The sender protocol address of an Ethernet/IPv4 ARP packet.
            return None if frame[28:32] in self.ips else "spoofed_ip"
        return None

    def _check_ipv4(self, frame: bytes) -> str | None:
        src = frame[26:30]
        if src in self.ips:
            return None
        if src == bytes(4) and self._is_dhcp_request(frame):
            return None
        return "spoofed_ip"

    @staticmethod
    def _is_dhcp_request(frame: bytes) -> bool:
        if len(frame) < 14 + 20 + 8 or frame[14 + 9] != _IPPROTO_UDP:
            return False
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if len(frame) < udp + 4:
            return False
        sport = int.from_bytes(frame[udp:udp + 2], "big")
        dport = int.from_bytes(frame[udp + 2:udp + 4], "big")
        return (sport, dport) == (_DHCP_CLIENT, _DHCP_SERVER)


# ----------------------------------------------------------------------------
# Guest transmit: the tx ring
# ----------------------------------------------------------------------------
class TxFatal(Exception):
    """The frontend broke the protocol; the vif must be disabled."""


class _Slot:
    """One consumed tx ring slot and the response it is owed."""

    __slots__ = ("id", "null", "ops", "status")

    def __init__(self, id: int, null: bool = False):
        self.id = id
        self.null = null              # an extra-info slot: answered NETIF_RSP_NULL
        self.ops: list[int] = []      # its copy ops' indexes in the batch
        self.status = abi.NETIF_RSP_OKAY


class _TxFrame:
    __slots__ = ("slots", "data", "size", "reason", "control", "addr", "direct")

    def __init__(self, slots: list[_Slot]):
        self.slots = slots
        self.data: list[tuple[int, int, int]] = []   # (gref, offset, bytes) per data slot
        self.size = 0
        self.reason: str | None = None     # dropped before copying, and why
        self.control = False               # a multicast request: no frame behind it
        self.addr = 0
        self.direct: bytes | None = None   # read from a mapped page: nothing to copy


@dataclass
class TxBatch:
    scratch: Scratch | None = None
    copies: list[GrantCopy] = field(default_factory=list)
    frames: list[_TxFrame] = field(default_factory=list)
    fatal: str | None = None
    wait_until: float | None = None    # rate limited: call NetbackTx.replenish() then

    @property
    def slots(self) -> int:
        return sum(len(f.slots) for f in self.frames)


@dataclass
class TxResult:
    frames: list[bytes]
    drops: collections.Counter
    notify: bool


class NetbackTx:
    def __init__(self, ring: BackRing, scratch: Scratch, *, limiter: CreditScheduler | None = None,
                 antispoof: AntiSpoof | None = None,
                 fatal_slots: int = abi.FATAL_SKB_SLOTS_DEFAULT,
                 max_slots: int = abi.XEN_NETIF_NR_SLOTS_MIN):
        self.ring = ring
        self.scratch = scratch
        self.limiter = limiter
        self.antispoof = antispoof
        self.fatal_slots = fatal_slots
        self.max_slots = max_slots
        self.disabled: str | None = None     # the fatal error, once there was one
        self._held: _TxFrame | None = None   # consumed, waiting for credit or scratch room
        self._in_flight: set[int] = set()
        # grant ref -> the frontend's page, mapped read-only (persistent
        # grants): a one-slot frame in a mapped page is read from it at once.
        self.direct: Mapping[int, memoryview] | None = None
        self.direct_frames = 0

    # -- building a batch --------------------------------------------------------
    def build(self, scratch: Scratch | None = None) -> TxBatch:
        """Consume requests into one batch of copies into ``scratch`` (by
        default the one given at construction), as xenvif_tx_build_gops."""
        batch = TxBatch(scratch or self.scratch)
        if self.disabled:
            return batch
        scratch = batch.scratch
        ring = self.ring
        addr = 0
        avail = 0       # requests known to be waiting, so not counted again per frame
        while True:
            frame = self._held
            self._held = None
            if frame is None:
                if avail <= 0:
                    avail = self._waiting(batch)
                    if not avail:
                        break
                start = ring.req_cons
                frame = self._next_frame(batch)
                if frame is None:
                    break
                avail -= (ring.req_cons - start) & _U32
            batch.frames.append(frame)
            if frame.reason or frame.control:
                continue
            if addr + frame.size > scratch.capacity:
                batch.frames.pop()
                self._held = frame
                break
            if self.limiter is not None:
                wait = self.limiter.consume(frame.size)
                if wait is not None:
                    batch.frames.pop()
                    self._held = frame
                    batch.wait_until = wait
                    break
            addr += self._plan_copies(batch, frame, addr)
        return batch

    @property
    def held(self) -> bool:
        """A consumed frame waits for credit or scratch room."""
        return self._held is not None

    def _waiting(self, batch: TxBatch) -> int:
        """Unconsumed requests; a req_prod more than a ring ahead is fatal."""
        if self.ring.request_overflow():
            self._fatal(batch, f"impossible number of requests: req_prod {self.ring.sring.req_prod}, "
                               f"answered up to {self.ring.rsp_prod_pvt}, ring size {self.ring.size}")
            return 0
        return self.ring.unconsumed_requests()

    def _next_frame(self, batch: TxBatch) -> _TxFrame | None:
        """The frame starting at the next request, which the caller knows is there."""
        frame = _TxFrame(slots=[])
        try:
            self._parse(frame)
        except TxFatal as err:
            for slot in frame.slots:
                slot.status = abi.NETIF_RSP_ERROR
            frame.reason = "fatal"
            batch.frames.append(frame)
            self._fatal(batch, str(err))
            return None
        return frame

    def _fatal(self, batch: TxBatch, message: str) -> None:
        self.disabled = message
        batch.fatal = message

    def _take_request(self, frame: _TxFrame) -> tuple[int, int, int, int, int]:
        """(gref, offset, flags, id, size) of the next request, copied once."""
        req = _TX_REQUEST.unpack_from(self.ring.get_request())
        id_ = req[3]
        frame.slots.append(_Slot(id_))
        if id_ >= abi.NET_TX_RING_SIZE:
            raise TxFatal(f"tx id {id_} is out of range (ring of {abi.NET_TX_RING_SIZE})")
        if id_ in self._in_flight:
            raise TxFatal(f"tx id {id_} is already in flight")
        self._in_flight.add(id_)
        return req

    def _parse(self, frame: _TxFrame) -> None:
        gref, offset, flags, _id, size = self._take_request(frame)
        if flags & (abi.NETTXF_extra_info | abi.NETTXF_more_data) == 0:
            # One slot, no extras: the common frame, checked as below.
            if size < abi.ETH_HLEN:
                self._error(frame, "bad_packet_size")
                return
            if offset + size > PAGE:
                raise TxFatal(f"cross page boundary: offset {offset}, size {size}")
            frame.data.append((gref, offset, size))
            frame.size = size
            return
        extras = self._take_extras(frame) if flags & abi.NETTXF_extra_info else {}
        if abi.XEN_NETIF_EXTRA_TYPE_MCAST_ADD in extras or abi.XEN_NETIF_EXTRA_TYPE_MCAST_DEL in extras:
            # Without feature-multicast-control every address is let through;
            # the request only wants its answer.
            frame.control = True
            return
        frags = self._take_frags(frame, size, flags)
        if frame.reason:
            return
        first_size = size - sum(r[4] for r in frags)
        if first_size < abi.ETH_HLEN:
            self._error(frame, "bad_packet_size")
            return
        if offset + first_size > PAGE:
            raise TxFatal(f"cross page boundary: offset {offset}, size {first_size}")
        gso = extras.get(abi.XEN_NETIF_EXTRA_TYPE_GSO)
        if gso is not None:
            _check_gso(gso)
        frame.data = [(gref, offset, first_size)] + [(r[0], r[1], r[4]) for r in frags]
        frame.size = size

    def _take_extras(self, frame: _TxFrame) -> dict[int, ExtraInfo]:
        """xenvif_get_extras: extra-info slots after the first request."""
        extras: dict[int, ExtraInfo] = {}
        while True:
            if not self.ring.unconsumed_requests():
                raise TxFatal("missing extra info")
            extra = ExtraInfo.unpack(self.ring.get_request())
            frame.slots.append(_Slot(0, null=True))
            if not 0 < extra.type < abi.XEN_NETIF_EXTRA_TYPE_MAX:
                raise TxFatal(f"invalid extra type: {extra.type}")
            extras[extra.type] = extra
            if not extra.flags & abi.XEN_NETIF_EXTRA_FLAG_MORE:
                return extras

    def _take_frags(self, frame: _TxFrame, size: int, flags: int) -> list[tuple]:
        """xenvif_count_requests: the slots after the first."""
        frags: list[tuple] = []
        remaining = size
        more = flags & abi.NETTXF_more_data
        while more:
            if not self.ring.unconsumed_requests():
                raise TxFatal(f"asked for {len(frags) + 1} more slots than the frontend produced")
            if len(frags) >= self.fatal_slots:
                raise TxFatal(f"malicious frontend using more than {self.fatal_slots} slots")
            if not frame.reason and len(frags) >= self.max_slots:
                frame.reason = "too_many_slots"
            req = self._take_request(frame)
            _gref, r_offset, r_flags, _id, r_size = req
            if not frame.reason and r_size > remaining:
                frame.reason = "frag_size"
            remaining -= r_size
            if r_offset + r_size > PAGE:
                raise TxFatal(f"cross page boundary: offset {r_offset}, size {r_size}")
            frags.append(req)
            more = r_flags & abi.NETTXF_more_data
        if frame.reason:
            self._error(frame, frame.reason)
        return frags

    @staticmethod
    def _error(frame: _TxFrame, reason: str) -> None:
        """xenvif_tx_err: every slot of the frame answered with an error."""
        frame.reason = reason
        for slot in frame.slots:
            slot.status = abi.NETIF_RSP_ERROR

    def _plan_copies(self, batch: TxBatch, frame: _TxFrame, addr: int) -> int:
        """Plan the frame's copies into scratch at ``addr``; the scratch bytes it takes."""
        direct = self.direct
        if direct and len(frame.data) == 1:
            gref, offset, size = frame.data[0]
            page = direct.get(gref)
            if page is not None:
                # _parse checked offset + size against the page; one read,
                # then only our copy is looked at (antispoof, the bridge).
                frame.direct = page[offset:offset + size].tobytes()
                self.direct_frames += 1
                return 0
        frame.addr = addr
        copies = batch.copies
        segments = batch.scratch.segments
        data_slots = [s for s in frame.slots if not s.null] if len(frame.slots) > 1 else frame.slots
        for slot, (gref, offset, size) in zip(data_slots, frame.data):
            done = 0
            for gfn, gfn_offset, n in segments(addr, size):
                slot.ops.append(len(copies))
                copies.append(GrantCopy(gref, offset + done, gfn, gfn_offset, n, False))
                done += n
            addr += size
        return frame.size

    # -- completing it -------------------------------------------------------------
    def complete(self, batch: TxBatch, statuses: Sequence[int]) -> TxResult:
        """Apply the copy statuses, answer every slot, hand out the frames."""
        drops: collections.Counter = collections.Counter()
        frames: list[bytes] = []
        scratch = batch.scratch
        for frame in batch.frames:
            out = self._finish_frame(scratch, frame, statuses, drops)
            if out is not None:
                frames.append(out)
        pack = _TX_RESPONSE.pack
        in_flight = self._in_flight
        responses = []
        for frame in batch.frames:
            for slot in frame.slots:
                if slot.null:
                    responses.append(pack(0, abi.NETIF_RSP_NULL))
                else:
                    in_flight.discard(slot.id)
                    responses.append(pack(slot.id, slot.status))
        if responses:
            self.ring.put_responses(responses)
        notify = self.ring.push_responses_and_check_notify() if responses else False
        return TxResult(frames, drops, notify)

    def _finish_frame(self, scratch: Scratch, frame: _TxFrame, statuses: Sequence[int],
                      drops: collections.Counter) -> bytes | None:
        if frame.control:
            return None
        if frame.reason:
            drops[frame.reason] += 1
            return None
        failed = False
        okay = abi.GNTST_okay
        n = len(statuses)
        for slot in frame.slots:
            for i in slot.ops:
                if i >= n or statuses[i] != okay:
                    slot.status = abi.NETIF_RSP_ERROR
                    failed = True
                    break
        if failed:
            drops["grant_copy_error"] += 1
            return None
        data = frame.direct if frame.direct is not None else scratch.read(frame.addr, frame.size)
        reason = self.antispoof.check(data) if self.antispoof else None
        if reason:
            drops[reason] += 1
            return None
        return data

    # -- the rest of the loop ---------------------------------------------------------
    def replenish(self) -> None:
        if self.limiter is not None:
            self.limiter.replenish()

    def more_to_do(self) -> bool:
        """RING_FINAL_CHECK_FOR_REQUESTS, or a held frame ready to retry."""
        if self.disabled:
            return False
        if self._held is not None:
            return self.limiter is None or self.limiter.timer_at is None
        return self.ring.final_check_for_requests()

    def release(self) -> None:
        self._held = None
        self._in_flight.clear()


def _check_gso(extra: ExtraInfo) -> None:
    """xenvif_set_skb_gso: a bad GSO descriptor is fatal."""
    size = int.from_bytes(extra.data[0:2], "little")
    gso_type = extra.data[2]
    if size == 0:
        raise TxFatal("GSO size must not be zero")
    if gso_type not in (abi.XEN_NETIF_GSO_TYPE_TCPV4, abi.XEN_NETIF_GSO_TYPE_TCPV6):
        raise TxFatal(f"bad GSO type {gso_type}")


# ----------------------------------------------------------------------------
# Guest receive: the rx ring
# ----------------------------------------------------------------------------
def rx_slots_needed(length: int) -> int:
    """Pages a frame fills in the guest: data starts at offset 0 of each."""
    return -(-length // PAGE)


class _RxSlot:
    __slots__ = ("id", "size", "more", "ops")

    def __init__(self, id: int, size: int, more: bool, ops: list[int]):
        self.id = id
        self.size = size
        self.more = more
        self.ops = ops


@dataclass
class RxBatch:
    scratch: Scratch | None = None
    copies: list[GrantCopy] = field(default_factory=list)
    frames: list[tuple[bytes, list[_RxSlot]]] = field(default_factory=list)


@dataclass
class RxResult:
    sent: list[bytes]            # frames now in the guest's pages
    drops: collections.Counter
    notify: bool


class NetbackRx:
    def __init__(self, ring: BackRing, scratch: Scratch, max_queue: int = RX_QUEUE_MAX,
                 max_bytes: int | None = None):
        """At most ``max_queue`` frames, and ``max_bytes`` bytes if given
        (netback bounds its rx queue in bytes only), wait for rx requests."""
        self.ring = ring
        self.scratch = scratch
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        # grant ref -> the frontend's page, mapped writable (persistent
        # grants): a one-slot frame for a mapped page is written there at once.
        self.direct: Mapping[int, memoryview] | None = None
        self.direct_frames = 0

    def enqueue(self, frames: Sequence[bytes]) -> collections.Counter:
        """Frames for the guest; the drops (never blocks)."""
        drops: collections.Counter = collections.Counter()
        for frame in frames:
            if not frame:
                drops["empty"] += 1
            elif (len(frame) > abi.XEN_NETIF_MAX_TX_SIZE
                  or rx_slots_needed(len(frame)) > abi.XEN_NETIF_NR_SLOTS_MIN):
                drops["too_big"] += 1
            elif len(self.queue) >= self.max_queue or (
                    self.max_bytes is not None and self.queued_bytes >= self.max_bytes):
                drops["rx_ring_full"] += 1
            else:
                self.queue.append(bytes(frame))
                self.queued_bytes += len(frame)
        return drops

    def posted_grefs(self) -> list[int]:
        """The grant refs of the rx requests posted and not yet taken, in
        ring order, without taking them: which receive pages to map ahead
        of the first frame (persistent grants)."""
        unpack = _RX_REQUEST.unpack_from
        return [unpack(req)[2] for req in self.ring.peek_requests()]

    def build(self, scratch: Scratch | None = None) -> RxBatch:
        """Take rx requests for as many queued frames as fit (one copy batch).
        Frames are packed back to back in ``scratch`` (by default the one
        given at construction); a slot whose bytes straddle two scratch
        pages is two copy segments."""
        batch = RxBatch(scratch or self.scratch)
        scratch = batch.scratch
        addr = 0
        avail = 0       # requests known to be posted, so not counted again per frame
        while self.queue:
            frame = self.queue[0]
            need = rx_slots_needed(len(frame))
            if addr + len(frame) > scratch.capacity:
                break
            if avail < need:
                avail = self.ring.unconsumed_requests()
                if avail < need:
                    break
            avail -= need
            self.queue.popleft()
            self.queued_bytes -= len(frame)
            slots = self._plan(batch, frame, addr, need)
            if slots[0].ops:
                scratch.write(addr, frame)
                addr += len(frame)
            batch.frames.append((frame, slots))
        return batch

    def _plan(self, batch: RxBatch, frame: bytes, addr: int, need: int) -> list[_RxSlot]:
        slots = []
        copies = batch.copies
        segments = batch.scratch.segments
        get_request = self.ring.get_request
        direct = self.direct
        for k in range(need):
            id_, _pad, gref = _RX_REQUEST.unpack_from(get_request())
            size = min(PAGE, len(frame) - k * PAGE)
            if direct and need == 1:
                page = direct.get(gref)
                if page is not None:
                    page[:size] = frame
                    self.direct_frames += 1
                    return [_RxSlot(id_, size, False, [])]
            ops = []
            done = 0
            for gfn, offset, n in segments(addr + k * PAGE, size):
                ops.append(len(copies))
                copies.append(GrantCopy(gref, done, gfn, offset, n, True))
                done += n
            slots.append(_RxSlot(id_, size, k < need - 1, ops))
        return slots

    def complete(self, batch: RxBatch, statuses: Sequence[int]) -> RxResult:
        drops: collections.Counter = collections.Counter()
        sent: list[bytes] = []
        pack = _RX_RESPONSE.pack
        responses = []
        put = responses.append
        n = len(statuses)
        okay = abi.GNTST_okay
        for frame, slots in batch.frames:
            ok = True
            for slot in slots:
                good = True
                for i in slot.ops:
                    if i >= n or statuses[i] != okay:
                        good = ok = False
                        break
                status = slot.size if good else abi.NETIF_RSP_ERROR
                put(pack(slot.id, 0, abi.NETRXF_more_data if slot.more else 0, status))
            if ok:
                sent.append(frame)
            else:
                drops["grant_copy_error"] += 1
        if responses:
            self.ring.put_responses(responses)
        notify = self.ring.push_responses_and_check_notify() if batch.frames else False
        return RxResult(sent, drops, notify)

    def more_to_do(self) -> bool:
        """Queued frames and enough rx requests for the first of them. If
        not, ask to be kicked on the frontend's next request, as
        xenvif_rx_ring_slots_available() does (req_event = req_prod + 1)."""
        if not self.queue:
            return False
        need = rx_slots_needed(len(self.queue[0]))
        sring = self.ring.sring
        while True:
            if self.ring.unconsumed_requests() >= need:
                return True
            prod = sring.req_prod
            sring.req_event = prod + 1
            xen_mb()
            if sring.req_prod == prod:
                return False

    def release(self) -> int:
        """Forget the queue (the vif is going away); how many frames that drops."""
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        return n


def make_limiter(rate: Rate | None, clock: Callable[[], float]) -> CreditScheduler | None:
    return CreditScheduler(rate, clock) if rate is not None else None
