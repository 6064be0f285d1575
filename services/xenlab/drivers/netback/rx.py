"""netback's guest-receive core, pure: queued frames into the receive
pages the frontend posted on its rx ring.

Frames from the bridge wait in a queue bounded in bytes, as netback's
rx_queue_max (XENVIF_RX_QUEUE_BYTES), and in frames; past it they are
dropped as ``rx_ring_full``, never blocking the sender. ``build`` takes one
rx request per page a frame fills (data at offset 0 of each, as netback's
copying receive path lays it out) for as many queued frames as fit one
scratch area, and plans the grant copies; a one-slot frame for a page that
is mapped (persistent grants) is written into it at once. ``complete``
answers every request taken, with the bytes or NETIF_RSP_ERROR where a copy
failed, and returns an RxResult with all there is to act on. As
xenvif_rx_ring_slots_available(), a ring without enough requests for the
next frame asks to be kicked on the frontend's next one. Nothing here does
I/O.
"""
from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from xenlab.drivers.netback.scratch import PAGE, GrantCopy, Scratch
from xenlab.xen import abi
from xenlab.xen.netif import pack_rx_response, unpack_rx_request
# xen_mb(): the ring module's full fence, for the one event index the
# ring views do not set themselves (rx: "kick me on the next request").
from xenlab.xen.ring import BackRing
from xenlab.xen.ring import _full_barrier as xen_mb

RX_QUEUE_MAX = 512          # frames waiting for rx requests before "rx_ring_full"
# netback's rx_queue_max (XENVIF_RX_QUEUE_BYTES): half a ring of full pages.
RX_QUEUE_BYTES = abi.NET_RX_RING_SIZE // 2 * abi.PAGE_SIZE


def rx_slots_needed(length: int) -> int:
    """Pages a frame fills in the guest: data starts at offset 0 of each."""
    return -(-length // PAGE)


# The longest frame a guest can take: XEN_NETIF_MAX_TX_SIZE, and no more
# pages than XEN_NETIF_NR_SLOTS_MIN.
_LONGEST = min(abi.XEN_NETIF_MAX_TX_SIZE, abi.XEN_NETIF_NR_SLOTS_MIN * PAGE)


class _RxSlot:
    __slots__ = ("id", "size", "more", "ops")

    def __init__(self, id: int, size: int, more: bool, ops: list[int]):
        self.id = id
        self.size = size
        self.more = more
        self.ops = ops


@dataclass
class RxBatch:
    """Rx requests taken for queued frames, and the copies that fill them."""

    scratch: Scratch | None = None
    copies: list[GrantCopy] = field(default_factory=list)
    frames: list[tuple[bytes, list[_RxSlot]]] = field(default_factory=list)
    # The run of one-slot frames written into mapped pages that opened the
    # batch (NetbackRx._direct_run), as (request id, frame): taken before
    # ``frames``, answered before them.
    direct: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.frames and not self.direct

    @property
    def frame_count(self) -> int:
        return len(self.direct) + len(self.frames)


@dataclass
class RxResult:
    """A completed batch: everything the adapter acts on."""

    sent: list[bytes]              # frames now in the guest's pages
    drops: collections.Counter     # by reason
    notify: bool
    scratch: Scratch | None = None  # the batch's scratch area, free again


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
        # Requests _direct_run took (each read once) and did not use: the
        # first ones _plan uses, in ring order.
        self._taken: collections.deque[tuple[int, int, int]] = collections.deque()

    def enqueue(self, frames: Sequence[bytes]) -> collections.Counter:
        """Frames for the guest; the drops (never blocks)."""
        drops: collections.Counter = collections.Counter()
        queue, max_queue, max_bytes = self.queue, self.max_queue, self.max_bytes
        for frame in frames:
            size = len(frame)
            if not size:
                drops["empty"] += 1
            elif size > _LONGEST:
                drops["too_big"] += 1
            elif len(queue) >= max_queue or (max_bytes is not None and self.queued_bytes >= max_bytes):
                drops["rx_ring_full"] += 1
            else:
                queue.append(frame if type(frame) is bytes else bytes(frame))
                self.queued_bytes += size
        return drops

    def posted_grefs(self) -> list[int]:
        """The grant refs of the rx requests posted and not yet taken, in
        ring order, without taking them: which receive pages to map ahead
        of the first frame (persistent grants)."""
        unpack = unpack_rx_request
        return [unpack(req)[2] for req in self.ring.peek_requests()]

    def build(self, scratch: Scratch | None = None) -> RxBatch:
        """Take rx requests for as many queued frames as fit (one copy batch).
        Frames are packed back to back in ``scratch`` (by default the one
        given at construction); a slot whose bytes straddle two scratch
        pages is two copy segments."""
        batch = RxBatch(scratch or self.scratch)
        scratch = batch.scratch
        addr = 0
        avail = self._direct_run(batch) if self.direct else 0
        # avail: requests known to be posted, so not counted again per frame
        while self.queue:
            frame = self.queue[0]
            need = rx_slots_needed(len(frame))
            if addr + len(frame) > scratch.capacity:
                break
            if avail < need:
                avail = self._posted()
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

    def _posted(self) -> int:
        """Rx requests posted and not used yet: taken ones first."""
        return len(self._taken) + self.ring.unconsumed_requests()

    def _direct_run(self, batch: RxBatch) -> int:
        """The common case with persistent grants, without a slot object
        per frame: the run of queued one-page frames whose rx request names
        a mapped page, each written into it at once. Requests are taken (read
        once) all together, one for each one-page frame at the head of the
        queue that a posted request is there for; those the
        run does not use (from the first for a page that is not mapped) are
        _plan's, in order. The requests known to be posted after the run."""
        queue, taken, direct, out = self.queue, self._taken, self.direct, batch.direct
        if not queue:
            return 0            # nothing for build to place: no need to count requests
        if taken:
            return self._posted()
        n = 0
        for frame in itertools.islice(queue, self.ring.unconsumed_requests()):
            if len(frame) > PAGE:
                break
            n += 1
        if not n:
            return self._posted()
        unpack = unpack_rx_request
        reqs = self.ring.get_requests(n)
        for k, raw in enumerate(reqs):
            frame = queue[0]
            size = len(frame)
            req = unpack(raw)
            page = direct.get(req[2])
            if page is None:
                taken.extend(unpack(r) for r in reqs[k:])
                break
            queue.popleft()
            self.queued_bytes -= size
            page[:size] = frame
            out.append((req[0], frame))
        self.direct_frames += len(out)
        return self._posted() if queue else 0

    def _plan(self, batch: RxBatch, frame: bytes, addr: int, need: int) -> list[_RxSlot]:
        slots = []
        copies = batch.copies
        segments = batch.scratch.segments
        get_request = self.ring.get_request
        direct = self.direct
        taken = self._taken
        for k in range(need):
            id_, _pad, gref = taken.popleft() if taken else unpack_rx_request(get_request())
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
        pack = pack_rx_response
        responses = []
        put = responses.append
        n = len(statuses)
        okay = abi.GNTST_okay
        for id_, frame in batch.direct:
            put(pack(id_, 0, 0, len(frame)))
            sent.append(frame)
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
        notify = self.ring.push_responses_and_check_notify() if responses else False
        return RxResult(sent, drops, notify, batch.scratch)

    def more_to_do(self) -> bool:
        """Queued frames and enough rx requests for the first of them. If
        not, ask to be kicked on the frontend's next request, as
        xenvif_rx_ring_slots_available() does (req_event = req_prod + 1)."""
        if not self.queue:
            return False
        need = rx_slots_needed(len(self.queue[0]))
        sring = self.ring.sring
        while True:
            if self._posted() >= need:
                return True
            prod = sring.req_prod
            sring.req_event = prod + 1
            xen_mb()
            if sring.req_prod == prod:
                return False

    def release(self) -> int:
        """Forget the queue (the vif is going away); how many frames that drops."""
        n = len(self.queue)
        self._taken.clear()
        self.queue.clear()
        self.queued_bytes = 0
        return n

