"""netfront's protocol logic, pure: frames onto the tx ring, frames off the rx ring.

The frontend owns its buffers: NET_TX_RING_SIZE transmit pages and
NET_RX_RING_SIZE receive pages, each granted to the backend once when the
device connects (transmit read-only, receive writable), so that the data
path never asks the hypervisor for anything. That is a deviation from
Linux netfront, which grants each skb's pages per packet; the wire format
is the same.

* Transmit: each frame is split into page-sized chunks (netif.split_frame),
  copied into free transmit pages and described by tx requests whose ids
  are the pages' indexes; a page is free again once its response is back.
  Frames that find no free pages wait in a bounded backlog.
* Receive: every free receive page is posted as an rx request; a response
  hands the page's bytes up and the page is posted again. As Linux
  netfront, the response at ring index i answers the request at index i.

A hostile backend gets nothing but dropped frames: a response whose id is
not the page posted at that index, a status past the page, an offset
outside it, too many slots, or a frame cut short are counted and dropped,
never raised; a backend that claims more responses than requests
outstanding marks the device broken (netfront's "Illegal number of
responses"), and the ring is left alone from then on.
"""
from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Sequence

from xenlab.net.ethernet import max_frame_len
from xenlab.xen import abi
from xenlab.xen.netif import (ExtraInfo, pack_rx_request, pack_tx_request, split_frame,
                              tx_frame_requests, unpack_rx_response, unpack_tx_response)
from xenlab.xen.ring import FrontRing

PAGE = abi.PAGE_SIZE
TX_BACKLOG_MAX = 256     # frames waiting for free transmit pages
# With nothing waiting for room, transmit completions ask for an event only
# once this many are in; the next transmit reaps the others first. A lone
# frame (a ping) then costs the backend no notification and the guest no
# wake-up just to free its slot.
TX_LAZY_EVENT = abi.NET_TX_RING_SIZE // 2


@dataclass(frozen=True)
class Buffer:
    """One of the frontend's pages, granted to the backend."""

    gref: int
    page: memoryview


@dataclass
class TxSend:
    sent: list[bytes] = field(default_factory=list)     # frames now on the ring
    drops: collections.Counter = field(default_factory=collections.Counter)
    notify: bool = False


@dataclass
class TxPoll:
    completed: int = 0          # slots answered
    errors: int = 0             # slots answered with an error status
    bad: int = 0                # responses that answer nothing of ours
    sent: TxSend = field(default_factory=TxSend)   # backlog frames that went out


@dataclass
class RxPoll:
    frames: list[bytes] = field(default_factory=list)
    drops: collections.Counter = field(default_factory=collections.Counter)
    notify: bool = False        # rx requests were posted and the backend wants a kick


class NetfrontTx:
    def __init__(self, ring: FrontRing, buffers: Sequence[Buffer], mtu: int = abi.ETH_DATA_LEN,
                 backlog_max: int = TX_BACKLOG_MAX):
        if len(buffers) > abi.NET_TX_RING_SIZE:
            raise ValueError(f"at most {abi.NET_TX_RING_SIZE} transmit buffers (ids are u16 "
                             "indexes into the ring)")
        self.ring = ring
        self.buffers = list(buffers)
        self.mtu = mtu
        self.backlog_max = backlog_max
        self.backlog: collections.deque[bytes] = collections.deque()
        self._free = list(range(len(self.buffers) - 1, -1, -1))
        self._in_flight: set[int] = set()
        self.broken = False

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def send(self, frames: Sequence[bytes]) -> TxSend:
        """Put frames on the ring (or the backlog); drops carry a reason."""
        out = TxSend()
        requests: list[bytes] = []
        room = self.ring.free_requests()
        n = 0 if self.broken or self.backlog else self._put_plain(frames, requests, room, out.sent)
        if not self.broken:
            n += self._queue_plain(frames, n, room - len(requests), out.drops)
        for frame in itertools.islice(frames, n, None):
            reason = self._refuse(frame)
            if reason:
                out.drops[reason] += 1
            elif self.backlog or not self._fits(frame, room - len(requests)):
                if len(self.backlog) >= self.backlog_max:
                    out.drops["tx_ring_full"] += 1
                else:
                    self.backlog.append(bytes(frame))
            else:
                self._put(frame, requests)
                out.sent.append(frame)
        if requests:
            self.ring.put_requests(requests)
            out.notify = self.ring.push_requests_and_check_notify()
        return out

    def _put_plain(self, frames: Sequence[bytes], requests: list[bytes], room: int,
                   sent: list[bytes]) -> int:
        """The common case, without a call per frame: the frames at the head
        of ``frames`` that fit one page and the MTU, while a buffer and a
        ring slot are free, each copied into its buffer and its request put
        on ``requests``, as _put puts it. How many it took; the rest, from
        the first that is anything else, are for send's general loop."""
        free, buffers, in_flight = self._free, self.buffers, self._in_flight
        limit = min(len(free), room - len(requests))
        longest = self._plain_longest
        pack = pack_tx_request
        n = 0
        for frame in frames:
            size = len(frame)
            if n >= limit or size < abi.ETH_HLEN or size > longest:
                break
            id_ = free.pop()
            buffer = buffers[id_]
            buffer.page[:size] = frame
            requests.append(pack(buffer.gref, 0, 0, id_, size))
            in_flight.add(id_)
            sent.append(frame)
            n += 1
        return n

    def _queue_plain(self, frames: Sequence[bytes], start: int, room: int,
                     drops: collections.Counter) -> int:
        """After _put_plain, without a call per frame: the frames from
        ``start`` that fit one page and the MTU, while they must wait (a
        backlog ahead of them, or no buffer or ring slot), into the backlog,
        or past its bound dropped as ``tx_ring_full``, as send's loop would.
        How many it took."""
        backlog = self.backlog
        if not backlog and self._free and room > 0:
            return 0                # nothing to wait for: send's loop puts the next one
        longest = self._plain_longest
        least, most = abi.ETH_HLEN, self.backlog_max
        n = 0
        for frame in itertools.islice(frames, start, None):
            if not least <= len(frame) <= longest:
                break
            if len(backlog) >= most:
                drops["tx_ring_full"] += 1
            else:
                backlog.append(bytes(frame))
            n += 1
        return n

    @property
    def _plain_longest(self) -> int:
        """The longest frame _put_plain and _queue_plain take: one that fits
        a page and the MTU (one buffer, one slot, nothing for _refuse)."""
        return min(self.mtu + abi.ETH_HLEN, PAGE)

    def _refuse(self, frame: bytes) -> str | None:
        if self.broken:
            return "broken"
        if len(frame) < abi.ETH_HLEN:
            return "runt"
        if len(frame) > max_frame_len(self.mtu, frame):
            return "too_big"
        return None

    def _fits(self, frame: bytes, room: int) -> bool:
        """Buffers and ``room`` ring slots enough for the frame."""
        need = -(-len(frame) // PAGE)      # len(split_frame(len(frame)))
        return need <= len(self._free) and need <= room

    def _put(self, frame: bytes, requests: list[bytes]) -> None:
        """Copy the frame into free buffers; its requests go on ``requests``
        (the caller puts them on the ring, in order, at once)."""
        if len(frame) <= PAGE:
            # One chunk at offset 0: what tx_frame_requests would lay out.
            id_ = self._free.pop()
            buffer = self.buffers[id_]
            buffer.page[:len(frame)] = frame
            requests.append(pack_tx_request(buffer.gref, 0, 0, id_, len(frame)))
            self._in_flight.add(id_)
            return
        chunks = split_frame(len(frame))
        ids = [self._free.pop() for _ in chunks]
        pos = 0
        for (offset, size), id_ in zip(chunks, ids):
            self.buffers[id_].page[offset:offset + size] = frame[pos:pos + size]
            pos += size
        grefs = [self.buffers[i].gref for i in ids]
        requests.extend(req.pack() for req in tx_frame_requests(chunks, grefs, ids))
        self._in_flight.update(ids)

    def poll(self) -> TxPoll:
        """Take tx responses (xennet_tx_buf_gc), then send what the backlog can."""
        out = TxPoll()
        if self.broken:
            return out
        if self.ring.response_overflow():
            self.broken = True
            return out
        ring = self.ring
        in_flight = self._in_flight
        unpack = unpack_tx_response
        for raw in ring.get_responses(ring.unconsumed_responses()):
            id_, status = unpack(raw)
            if status == abi.NETIF_RSP_NULL:
                continue
            if id_ not in in_flight:
                out.bad += 1        # "Response for inactive request" / incorrect id
                continue
            in_flight.discard(id_)
            self._free.append(id_)
            out.completed += 1
            if status != abi.NETIF_RSP_OKAY:
                out.errors += 1
        out.sent = self._drain_backlog()
        return out

    def _drain_backlog(self) -> TxSend:
        out = TxSend()
        requests: list[bytes] = []
        room = self.ring.free_requests()
        backlog = self.backlog
        while backlog:
            # Frames in the backlog passed _refuse: what fits one page takes
            # one buffer and one slot (_put_plain), the rest as _fits says.
            n = self._put_plain(backlog, requests, room, out.sent)
            for _ in range(n):
                backlog.popleft()
            if not backlog or not self._fits(backlog[0], room - len(requests)):
                break
            frame = backlog.popleft()
            self._put(frame, requests)
            out.sent.append(frame)
        if requests:
            self.ring.put_requests(requests)
            out.notify = self.ring.push_requests_and_check_notify()
        return out

    def drop_backlog(self) -> int:
        n = len(self.backlog)
        self.backlog.clear()
        return n


class NetfrontRx:
    def __init__(self, ring: FrontRing, buffers: Sequence[Buffer]):
        if len(buffers) > abi.NET_RX_RING_SIZE:
            raise ValueError(f"at most {abi.NET_RX_RING_SIZE} receive buffers")
        self.ring = ring
        self.buffers = list(buffers)
        self._free = list(range(len(self.buffers) - 1, -1, -1))
        self._posted: dict[int, int] = {}     # ring slot -> buffer id posted there
        self.broken = False
        self._first, self._raws, self._pos = 0, [], 0   # the responses poll is taking

    @property
    def posted(self) -> int:
        return len(self._posted)

    def refill(self) -> bool:
        """Post every free page (xennet_alloc_rx_buffers); True: kick the backend."""
        if self.broken:
            return False
        ring = self.ring
        n = min(len(self._free), ring.free_requests())
        if not n:
            return False
        bids = [self._free.pop() for _ in range(n)]
        pack, buffers = pack_rx_request, self.buffers
        first = ring.put_requests([pack(bid, 0, buffers[bid].gref) for bid in bids])
        mask = ring.size - 1
        for i, bid in enumerate(bids):
            self._posted[(first + i) & mask] = bid
        return ring.push_requests_and_check_notify()

    def poll(self) -> RxPoll:
        """Take the responses there are now (xennet_poll); repost the pages."""
        out = RxPoll()
        if self.broken:
            return out
        if self.ring.response_overflow():
            self.broken = True
            out.drops["rx_ring_broken"] += 1
            return out
        avail = self.ring.unconsumed_responses()
        if avail:
            # every response there is, copied out at once; then frame by frame
            self._first = first = self.ring.rsp_cons
            self._raws = raws = self.ring.get_responses(avail)
            self._pos = 0
            # The common response (one slot, no flags, a good length in the
            # page it was posted for) is taken here; anything else, from
            # where it starts, by _take_frame, which checks every case.
            posted, free, frames, buffers = self._posted, self._free, out.frames, self.buffers
            unpack, mask, least = unpack_rx_response, self.ring.size - 1, abi.ETH_HLEN
            while avail:
                pos = self._pos
                id_, offset, flags, status = unpack(raws[pos])
                slot = (first + pos) & mask
                if (flags or posted.get(slot, -1) != id_ or status < least
                        or offset >= PAGE or offset + status > PAGE):
                    avail = self._take_frame(avail, out)
                    continue
                del posted[slot]
                free.append(id_)
                self._pos = pos + 1
                avail -= 1
                frames.append(buffers[id_].page[offset:offset + status].tobytes())
            self._raws = []
        out.notify = self.refill()
        return out

    def _take(self) -> tuple[tuple[int, int, int, int], bytes, int | None]:
        """(id, offset, flags, status) of the next response poll copied out,
        its raw slot, and the buffer posted at its index."""
        pos = self._pos
        self._pos = pos + 1
        raw = self._raws[pos]
        bid = self._posted.pop((self._first + pos) & (self.ring.size - 1), None)
        if bid is not None:
            self._free.append(bid)
        return unpack_rx_response(raw), raw, bid

    def _take_frame(self, avail: int, out: RxPoll) -> int:
        """One frame's responses (xennet_get_responses); returns what is left."""
        chunks: list[bytes] = []
        reason: str | None = None
        slots = 0
        while True:
            rsp, _raw, bid = self._take()
            flags = rsp[2]
            avail -= 1
            slots += 1
            data, bad = self._check(rsp, bid)
            reason = reason or bad
            if data is not None and not reason:
                chunks.append(data)
            if flags & abi.NETRXF_extra_info and slots == 1:
                avail, bad = self._skip_extras(avail)
                reason = reason or bad
            if slots > abi.XEN_NETIF_NR_SLOTS_MIN and not reason:
                reason = "rx_too_many_slots"
            if not flags & abi.NETRXF_more_data:
                break
            if not avail:
                reason = reason or "rx_bad_response"     # "Need more slots"
                break
        frame = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if reason is None and len(frame) < abi.ETH_HLEN:
            reason = "rx_runt"
        if reason:
            out.drops[reason] += 1
        else:
            out.frames.append(frame)
        return avail

    def _check(self, rsp: tuple[int, int, int, int],
               bid: int | None) -> tuple[bytes | None, str | None]:
        id_, offset, _flags, status = rsp
        if bid is None or id_ != bid:
            return None, "rx_bad_id"
        if status < 0:
            return None, "rx_error"
        if offset >= PAGE or offset + status > PAGE:
            return None, "rx_bad_response"
        return self.buffers[bid].page[offset:offset + status].tobytes(), None

    def _skip_extras(self, avail: int) -> tuple[int, str | None]:
        """xennet_get_extras: the slots after the first carry extra info; we
        asked for none (no GSO), so they are checked and their pages reposted."""
        while True:
            if not avail:
                return avail, "rx_bad_response"     # "Missing extra info"
            _rsp, raw, _bid = self._take()
            avail -= 1
            extra = ExtraInfo.unpack(raw)
            if not 0 < extra.type < abi.XEN_NETIF_EXTRA_TYPE_MAX:
                return avail, "rx_bad_response"     # "Invalid extra type"
            if not extra.flags & abi.XEN_NETIF_EXTRA_FLAG_MORE:
                return avail, None


def more_to_do(tx: NetfrontTx, rx: NetfrontRx) -> bool:
    """RING_FINAL_CHECK_FOR_RESPONSES on both rings. The rx ring always asks
    for the next response; the tx ring does only while frames wait in the
    backlog for room, else TX_LAZY_EVENT responses ahead."""
    if tx.broken and rx.broken:
        return False
    ahead = 1 if tx.backlog else TX_LAZY_EVENT
    pending_tx = not tx.broken and tx.ring.final_check_for_responses(ahead)
    pending_rx = not rx.broken and rx.ring.final_check_for_responses()
    return pending_tx or pending_rx
