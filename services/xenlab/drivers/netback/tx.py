"""netback's guest-transmit core, pure: what to copy, what to answer, what
to drop, for the frames a frontend puts on its tx ring.

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

A batch goes one way: ``build`` consumes requests into a TxBatch (the copy
segments into the scratch area it was given, or nothing to copy for a
one-slot frame read straight from a mapped page); the adapter runs the
copies; ``complete`` takes the batch and the copy statuses, answers every
slot and returns a TxResult with all there is to act on (the frames for the
vif, the drops, whether to notify, the fatal error, the scratch area free
again). Batches are completed in the order they were built, so that several
may be in flight, each in its own area. Nothing here does I/O.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from xenlab.drivers.netback.antispoof import AntiSpoof
from xenlab.drivers.netback.ratelimit import CreditScheduler
from xenlab.drivers.netback.scratch import PAGE, GrantCopy, Scratch
from xenlab.xen import abi
from xenlab.xen.netif import ExtraInfo, GsoInfo, pack_tx_response, unpack_tx_request
from xenlab.xen.ring import BackRing

_MORE_OR_EXTRA = abi.NETTXF_extra_info | abi.NETTXF_more_data


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
    """Requests consumed, and the copies that fetch their data."""

    scratch: Scratch | None = None
    copies: list[GrantCopy] = field(default_factory=list)
    frames: list[_TxFrame] = field(default_factory=list)
    fatal: str | None = None
    wait_until: float | None = None    # rate limited: call NetbackTx.replenish() then
    # The run of one-slot frames read from mapped pages that opened the
    # batch (NetbackTx._direct_run), as (id, bytes): consumed before
    # ``frames``, answered and handed out before them.
    direct: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing consumed: nothing to copy and nothing to answer."""
        return not self.frames and not self.direct and self.fatal is None

    @property
    def slots(self) -> int:
        return len(self.direct) + sum(len(f.slots) for f in self.frames)


@dataclass
class TxResult:
    """A completed batch: everything the adapter acts on."""

    frames: list[bytes]            # for the vif to deliver
    drops: collections.Counter     # by reason
    notify: bool                   # the frontend wants to hear about the responses
    fatal: str | None = None       # the frontend broke the protocol: disable the vif
    scratch: Scratch | None = None  # the batch's scratch area, free again


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
        # Requests _direct_run took off the ring (each read once) and did not
        # use, from the first that is not a one-slot frame in a mapped
        # page: the next ones _parse takes, in ring order.
        self._taken: collections.deque[bytes] = collections.deque()

    # -- building a batch --------------------------------------------------------
    def build(self, scratch: Scratch | None = None) -> TxBatch:
        """Consume requests into one batch of copies into ``scratch`` (by
        default the one given at construction), as xenvif_tx_build_gops."""
        batch = TxBatch(scratch or self.scratch)
        if self.disabled:
            return batch
        scratch = batch.scratch
        addr = 0
        avail = 0       # requests known to be waiting, so not counted again per frame
        if self._held is None and not self._taken and self.limiter is None and self.direct:
            avail = self._direct_run(batch)
            if not avail:
                # It took every request that was waiting (or there was
                # none): the next build looks at the ring again.
                return batch
        while True:
            frame = self._held
            self._held = None
            if frame is None:
                if avail <= 0:
                    avail = self._waiting(batch)
                    if not avail:
                        break
                frame = self._next_frame(batch)
                if frame is None:
                    break
                avail -= len(frame.slots)
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

    def _direct_run(self, batch: TxBatch) -> int:
        """The common case with persistent grants, without a frame object
        per frame: the run of one-slot frames in mapped pages that opens the
        batch, each request read once and checked as _parse and
        _take_request check it, its bytes read from the page at once (no
        copy to plan; nothing to wait for, so no credit or scratch either).
        The requests waiting are taken together; from the first that is
        anything else they are left in _taken for _parse, which gives each
        what it deserves. The requests known to be waiting after the run."""
        n = self._waiting(batch)
        if not n:
            return 0
        raws = self.ring.get_requests(n)
        direct, in_flight, out = self.direct, self._in_flight, batch.direct
        unpack = unpack_tx_request
        for k, raw in enumerate(raws):
            gref, offset, flags, id_, size = unpack(raw)
            page = direct.get(gref)
            if (page is None or flags & _MORE_OR_EXTRA or id_ >= abi.NET_TX_RING_SIZE
                    or id_ in in_flight or size < abi.ETH_HLEN or offset + size > PAGE):
                self._taken.extend(raws[k:])
                break
            in_flight.add(id_)
            out.append((id_, page[offset:offset + size].tobytes()))
        self.direct_frames += len(out)
        return len(self._taken)

    @property
    def held(self) -> bool:
        """A consumed frame waits for credit or scratch room, or consumed
        requests wait for the next batch."""
        return self._held is not None or bool(self._taken)

    def _waiting(self, batch: TxBatch) -> int:
        """Requests not used yet (taken ones first); a req_prod more than a
        ring ahead is fatal."""
        if self.ring.request_overflow():
            self._fatal(batch, f"impossible number of requests: req_prod {self.ring.sring.req_prod}, "
                               f"answered up to {self.ring.rsp_prod_pvt}, ring size {self.ring.size}")
            return 0
        return self._left()

    def _left(self) -> int:
        return len(self._taken) + self.ring.unconsumed_requests()

    def _next_request(self) -> bytes:
        """RING_COPY_REQUEST: the next request, taken ones first."""
        return self._taken.popleft() if self._taken else self.ring.get_request()

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
        req = unpack_tx_request(self._next_request())
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
            if not self._left():
                raise TxFatal("missing extra info")
            extra = ExtraInfo.unpack(self._next_request())
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
            if not self._left():
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
        pack = pack_tx_response
        in_flight = self._in_flight
        responses = []
        if batch.direct:
            okay = abi.NETIF_RSP_OKAY
            check = self.antispoof.check if self.antispoof else None
            for id_, data in batch.direct:
                in_flight.discard(id_)
                responses.append(pack(id_, okay))
                reason = check(data) if check is not None else None
                if reason:
                    drops[reason] += 1
                else:
                    frames.append(data)
        for frame in batch.frames:
            out = self._finish_frame(scratch, frame, statuses, drops)
            if out is not None:
                frames.append(out)
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
        return TxResult(frames, drops, notify, batch.fatal, scratch)

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
        if self._taken:
            return True
        return self.ring.final_check_for_requests()

    def release(self) -> None:
        self._held = None
        self._taken.clear()
        self._in_flight.clear()


def _check_gso(extra: ExtraInfo) -> None:
    """xenvif_set_skb_gso: a bad GSO descriptor is fatal."""
    gso = GsoInfo.unpack(extra.data)
    if gso.size == 0:
        raise TxFatal("GSO size must not be zero")
    if gso.type not in (abi.XEN_NETIF_GSO_TYPE_TCPV4, abi.XEN_NETIF_GSO_TYPE_TCPV6):
        raise TxFatal(f"bad GSO type {gso.type}")

