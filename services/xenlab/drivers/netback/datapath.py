"""netback's data path (Linux's netback.c): the workers of one connected
vif, the grant copies they make, and its persistent grants.

Two tasks per vif, woken by its one event channel: guest transmit (tx ring
-> grant copy into our scratch frames -> the vif's receiver, which hotplug
attached to the bridge) and guest receive (vif.transmit from the bridge ->
our scratch frames -> grant copy into the frontend's rx pages). A batch
goes one way through a worker: the pure core builds it (xenlab.drivers.
netback.tx / .rx), its copies run as one GNTTABOP_copy (the kernel's
gnttab: over the doorbell, else the hypercall), the core completes it, and
the result goes to the vif and the event channel. Each direction keeps up
to PIPELINE_DEPTH batches in flight, each in its own scratch area,
completed in the order they were built. As netback's final check for
requests, the ring's event index is re-armed only once nothing is in
flight, so a frontend that keeps producing while we work does not notify
at all.

A frontend that keeps its buffer grants (``feature-xenlab-persistent=1``) has its
buffer pages mapped as they are first used (one map_batch call for many),
and the copies through mapped pages run here, without the hypervisor
(xenlab.drivers.netback.grant_cache); the others still go to the
hypervisor.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from xenlab import eventloop
from xenlab.domain.hypercall import GrantTable, Page, pass_on
from xenlab.drivers.netback.grant_cache import MAP_BATCH, GrantCache
from xenlab.drivers.netback.rx import NetbackRx
from xenlab.drivers.netback.scratch import GrantCopy, Scratch
from xenlab.drivers.netback.tx import NetbackTx, TxResult
from xenlab.xen import abi
from xenlab.xen.errors import GrantError, XenError

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2      # copy batches in flight per vif and direction
# netback bounds the rx queue in bytes (RX_QUEUE_BYTES), which holds 8192
# minimum-size frames; one batch from the bridge may carry ~900 of them.
RX_QUEUE_FRAMES = 8192
MAP_WAIT = 10.0         # seconds a disconnect waits for a map_batch in flight
MAX_PERSISTENT_MAPPINGS = 32768     # per driver domain: half of vm.max_map_count


class PageBudget:
    """How many mappings (VMAs) the whole driver domain may hold for
    persistent grants: a process has vm.max_map_count of them (65,530 by
    default) for everything else too. Consecutive buffer pages are mapped
    as one (gnttab's map_batch), so a vif's 512 pages take a few; a batch
    takes one per page while it is mapped, the most it could need, and
    gives back what it did not use."""

    def __init__(self, mappings: int = MAX_PERSISTENT_MAPPINGS):
        self.left = mappings

    def take(self, n: int) -> int:
        n = max(0, min(n, self.left))
        self.left -= n
        return n

    def give(self, n: int) -> None:
        self.left += n


class PersistentGrants:
    """The I/O half of a vif's GrantCache: map_batch, the pages, unmap_batch."""

    def __init__(self, gnttab: GrantTable, frontend_id: int, label: str, budget: PageBudget):
        self.cache = GrantCache()
        self._budget = budget
        self._held = 0                    # of the budget: mappings held, and a batch's reserve
        self._gnttab = gnttab
        self._frontend_id = frontend_id
        self._label = label
        self._pages: list[Page] = []      # every grant we hold mapped
        self._task: asyncio.Task | None = None
        self._closed = False

    @property
    def mappings(self) -> int:
        """The mappings (VMAs) of the budget this vif holds, a batch being
        mapped counting the most it could need."""
        return self._held

    @property
    def addresses(self) -> list[int]:
        """Where each buffer page we hold is mapped in this process."""
        return [page.address for page in self._pages if page.address is not None]

    def prefetch(self, refs, writable: bool) -> None:
        """Map these buffer refs ahead of their first copy, in the background."""
        for ref in refs:
            self.cache.want((ref, writable))
        self.kick()

    def kick(self) -> None:
        """Map what the copies asked for, in the background."""
        if self._task is None and not self._closed and self.cache.wanted:
            self._task = asyncio.get_running_loop().create_task(
                self._map_wanted(), name=f"{self._label} map grants")

    async def _map_wanted(self) -> None:
        try:
            while not self._closed and self.cache.wanted:
                room = self._budget.take(MAP_BATCH)
                if not room:
                    log.info("%s: the driver domain holds %d mappings of buffer pages "
                             "already; copying the rest through the hypervisor", self._label,
                             MAX_PERSISTENT_MAPPINGS)
                    self.cache.give_up()
                    return
                self._held += room
                keys = self.cache.take_wanted(room)
                try:
                    results = await self._gnttab.map_batch(
                        [(self._frontend_id, ref, not writable) for ref, writable in keys])
                except XenError as err:
                    log.warning("%s: mapping %d buffer grants failed (%s); copying through "
                                "the hypervisor", self._label, len(keys), err.message)
                    self._release_budget(room)
                    self.cache.give_up()
                    return
                self._release_budget(room - _mappings(self._take(keys, results)))
        finally:
            self._task = None

    def _take(self, keys, results: list[Page | GrantError]) -> list[Page]:
        """Into the cache; the pages we reach, in order."""
        kept = []
        for key, result in zip(keys, results):
            if isinstance(result, GrantError):
                log.debug("%s: buffer ref %d not mapped: %s", self._label, key[0], result.message)
                self.cache.refused(key, result.status)
                continue
            self._pages.append(result)
            if result.view is None:           # the hypervisor gave us no way into it
                self.cache.refused(key, abi.GNTST_general_error)
            else:
                self.cache.mapped(key, result.handle, result.view)
                kept.append(result)
        return kept

    async def close(self) -> None:
        """Stop mapping, wait for a map_batch in flight, unmap everything."""
        self._closed = True
        if self._task is not None:
            try:
                await eventloop.wait_for(asyncio.shield(self._task), MAP_WAIT)
            except asyncio.TimeoutError:
                log.warning("%s: a map_batch call did not finish; its mappings stay with the "
                            "hypervisor until this domain goes", self._label)
            except Exception:
                log.exception("%s: mapping buffer grants failed", self._label)
        self.cache.drain()
        handles = [page.handle for page in self._pages]
        for i in range(0, len(handles), MAP_BATCH):
            chunk = handles[i:i + MAP_BATCH]
            try:
                statuses = await self._gnttab.unmap_batch(chunk)
            except XenError as err:
                log.warning("%s: unmapping %d buffer grants: %s", self._label, len(chunk),
                            err.message)
                continue
            refused = [(handle, status) for handle, status in zip(chunk, statuses)
                       if status != abi.GNTST_okay]
            if refused:
                handle, status = refused[0]
                log.warning("%s: %d of %d buffer grants not unmapped (handle %d: %s)",
                            self._label, len(refused), len(chunk), handle,
                            abi.GNTST_NAMES.get(status, str(status)))
        self.close_local()

    def _release_budget(self, n: int) -> None:
        n = min(n, self._held)
        self._held -= n
        self._budget.give(n)

    def close_local(self) -> None:
        """Let go of the pages, without hypercalls."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self.cache.drain()
        for page in self._pages:
            page.close()
        self._pages = []
        self._release_budget(self._held)


def _mappings(pages: list[Page]) -> int:
    """How many mappings (VMAs) these pages, in the order they were mapped,
    hold at most: a page right after the one before it shares its mapping."""
    count = 0
    end = None
    for page in pages:
        address = page.address
        if address is None:
            continue
        if address != end:
            count += 1
        end = address + len(page.view)
    return count


class Datapath:
    """The data path of one connected vif (a queue, in Linux's words): its
    two cores on the mapped rings, their scratch areas, the workers that run
    them, and the persistent grants if the frontend keeps its grants."""

    def __init__(self, vif, tx: NetbackTx, rx: NetbackRx, tx_scratches: list[Scratch],
                 rx_scratches: list[Scratch], port: int, *, gnttab: GrantTable, evtchn,
                 frontend_id: int, clock: Callable[[], float],
                 on_fatal: Callable[[str], None],
                 persistent: PersistentGrants | None = None):
        """``vif``: the VifDevice frames go to and come from; ``on_fatal``:
        told the message when the frontend broke the protocol (the tx
        worker has stopped)."""
        self.vif = vif
        self.tx = tx
        self.rx = rx
        self.tx_scratches = tx_scratches
        self.rx_scratches = rx_scratches
        self.port = port
        self._gnttab = gnttab
        self._evtchn = evtchn
        self._frontend_id = frontend_id
        self._clock = clock
        self._on_fatal = on_fatal
        self.persistent = persistent
        self._scratch_pages: dict[int, memoryview] = {}
        if persistent is not None:
            tx.direct = persistent.cache.tx_pages
            rx.direct = persistent.cache.rx_pages
            self._scratch_pages = {gfn: page for scratch in tx_scratches + rx_scratches
                                   for gfn, page in scratch.by_gfn().items()}
        self.tx_wake = asyncio.Event()
        self.rx_wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._credit_timer: asyncio.TimerHandle | None = None

    # -- running ------------------------------------------------------------------------
    def start(self) -> None:
        """Workers up, the event channel bound to them, and a first look at
        the rings: requests the frontend queued before we were connected."""
        if self.persistent is not None:
            # netfront posted its receive buffers before going Connected:
            # map them now, not each on the first frame into it (a copy
            # through the hypervisor and a map_batch call on the data path).
            # Transmit pages are known only once a request names them.
            self.persistent.prefetch(self.rx.posted_grefs(), writable=True)
        self.vif.attach(self)
        loop = asyncio.get_running_loop()
        name = self.vif.name
        self.tasks = [loop.create_task(self._tx_worker(), name=f"{name} tx"),
                      loop.create_task(self._rx_worker(), name=f"{name} rx")]
        self._evtchn.bind_handler(self.port, lambda _port: self.kick())
        self.kick()

    def kick(self) -> None:
        """xenvif_interrupt: each half runs only if it has work, as
        xenvif_tx_interrupt and xenvif_rx_interrupt check first."""
        if self.tx.held or self.tx.ring.unconsumed_requests():
            self.tx_wake.set()
        if self.rx.queue:
            self.rx_wake.set()

    def enqueue(self, frames: list[bytes]) -> collections.Counter:
        """Frames from the bridge for the guest; the drops."""
        drops = self.rx.enqueue(frames)
        self.rx_wake.set()
        return drops

    async def stop(self) -> None:
        """Workers stopped (but the calling task), the vif detached, the
        frames still queued for the guest counted as not_connected."""
        self._cancel_credit_timer()
        current = asyncio.current_task()
        tasks = [t for t in self.tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.vif.detach()
        self.vif.drop("not_connected", self.rx.release())
        self.tx.release()

    def stop_local(self) -> None:
        """The driver domain is going away: stop, without hypercalls."""
        for task in self.tasks:
            task.cancel()
        self._cancel_credit_timer()
        self._evtchn.unbind_handler(self.port)
        self.vif.detach()
        if self.persistent is not None:
            self.persistent.close_local()
        self._scratch_pages.clear()

    async def close_grants(self) -> None:
        if self.persistent is not None:
            await self.persistent.close()
        self._scratch_pages.clear()

    # -- guest transmit -------------------------------------------------------------------
    async def _tx_worker(self) -> None:
        while True:
            await self.tx_wake.wait()
            self.tx_wake.clear()
            if await self._tx_action():
                return

    async def _tx_action(self) -> bool:
        """xenvif_tx_action until the ring is drained (or credit runs out);
        True once the frontend proved fatal."""
        vif, tx = self.vif, self.tx
        free = list(self.tx_scratches)
        in_flight: collections.deque = collections.deque()
        wait_until = None        # out of credit: build nothing more until then
        while True:
            # Backpressure, as NAPI stops polling a ring whose packets have
            # nowhere to go: no batch (up to a ring of frames) is built
            # unless the veth into the bridge can take it, so a guest that
            # sends faster than the bridge forwards fills its own ring and
            # waits, and nothing is dropped between the two.
            if not in_flight and _short_of_room(vif, 1):
                await vif.upstream.wait_room(abi.NET_TX_RING_SIZE)
                continue          # the vif may have been re-plugged meanwhile
            # (With nothing in flight, the room for one batch was just checked.)
            while (free and wait_until is None and not tx.disabled
                   and not (in_flight and _short_of_room(vif, len(in_flight) + 1))):
                batch = tx.build(free[-1])
                wait_until = batch.wait_until
                if batch.empty:
                    break
                free.pop()
                answer = self._copy(batch.copies)
                in_flight.append((batch, answer))
                if answer.done():
                    break         # copied here and now: answer it before building more
            if not in_flight:
                if wait_until is not None:
                    vif.counters["rate_limited"] += 1
                    self._arm_credit_timer(wait_until)
                    return False
                if tx.disabled or not tx.more_to_do():
                    return False
                continue
            batch, answer = in_flight.popleft()
            result = tx.complete(batch, await _settled(answer))
            free.append(result.scratch)
            self._tx_done(result)
            if result.fatal:
                return True

    def _tx_done(self, result: TxResult) -> None:
        vif = self.vif
        for reason, n in result.drops.items():
            vif.drop(reason, n)
        # The frames first: they are what someone waits for; the
        # frontend's notification only gives it its slots back, and a
        # send that wakes another process is the dearest step here.
        if result.frames:
            vif.deliver(result.frames)
        if result.notify:
            self._evtchn.notify(self.port)
        if result.fatal:
            # xenvif_fatal_tx_err: this vif only.
            vif.disabled = result.fatal
            log.error("%s: fatal tx error: %s; disabling", vif.name, result.fatal)
            self._on_fatal(result.fatal)

    def _arm_credit_timer(self, when: float) -> None:
        if self._credit_timer is not None:
            return
        delay = max(0.0, when - self._clock())

        def fire() -> None:
            self._credit_timer = None
            self.tx.replenish()
            self.tx_wake.set()

        self._credit_timer = asyncio.get_running_loop().call_later(delay, fire)

    def _cancel_credit_timer(self) -> None:
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None

    # -- guest receive ----------------------------------------------------------------------
    async def _rx_worker(self) -> None:
        while True:
            await self.rx_wake.wait()
            self.rx_wake.clear()
            await self._rx_action()

    async def _rx_action(self) -> None:
        """xenvif_rx_action: queued frames into posted rx requests."""
        vif, rx = self.vif, self.rx
        free = list(self.rx_scratches)
        in_flight: collections.deque = collections.deque()
        try:
            while True:
                while free:
                    batch = rx.build(free[-1])
                    if batch.empty:
                        break
                    free.pop()
                    answer = self._copy(batch.copies)
                    in_flight.append((batch, answer))
                    if answer.done():
                        break     # copied here and now: answer it before building more
                if not in_flight:
                    if not rx.more_to_do():
                        return
                    continue
                batch, answer = in_flight[0]
                statuses = await _settled(answer)
                in_flight.popleft()
                result = rx.complete(batch, statuses)
                free.append(result.scratch)
                vif.count_tx(result.sent)
                for reason, n in result.drops.items():
                    vif.drop(reason, n)
                if result.notify:
                    self._evtchn.notify(self.port)
        except asyncio.CancelledError:
            # Disconnected with copies in flight: their responses will never
            # be written, so those frames never reach the guest.
            vif.drop("not_connected", sum(batch.frame_count for batch, _ in in_flight))
            raise

    # -- the copies ---------------------------------------------------------------------------
    def _copy(self, copies: list[GrantCopy]) -> asyncio.Future:
        """Start one GNTTABOP_copy batch; the future is its statuses. With
        persistent grants the copies through mapped pages are done here and
        now, and only the rest go to the hypervisor."""
        pg = self.persistent
        if pg is None:
            return self._gnttab.copy(gnttab_ops(copies, self._frontend_id))
        statuses, remote = pg.cache.copy_local(copies, self._scratch_pages.__getitem__)
        answer = asyncio.get_running_loop().create_future()
        if not remote:
            answer.set_result(statuses)
            return answer
        pg.kick()
        sent = self._gnttab.copy(gnttab_ops([copies[i] for i in remote], self._frontend_id))
        pass_on(sent, answer, lambda answers: GrantCache.merge(statuses, remote, answers))
        return answer


def _short_of_room(vif, batches: int) -> bool:
    """Whether the vif's upstream could not take ``batches`` more tx batches."""
    room = vif.upstream.tx_room() if vif.upstream is not None else None
    return room is not None and room < batches * abi.NET_TX_RING_SIZE


async def _settled(answer: asyncio.Future):
    """A batch's statuses. One copied locally is done at once, and awaiting
    a done future does not yield: let the loop run between batches anyway (a
    NAPI budget), or one busy ring starves the other vifs, the receive half
    and the veth reads."""
    if answer.done():
        await asyncio.sleep(0)
    return await answer


def gnttab_ops(copies: list[GrantCopy], frontend_id: int) -> list[tuple]:
    """The core's copy plan as gnttab_copy ops (the layout of GnttabCopy,
    as plain tuples: this runs for every frame): the frontend's side by
    grant reference, ours by gfn of our own (DOMID_SELF)."""
    self_id, src_gref, dst_gref = abi.DOMID_SELF, abi.GNTCOPY_source_gref, abi.GNTCOPY_dest_gref
    return [(gfn, self_id, gfn_offset, gref, frontend_id, gref_offset, length, dst_gref)
            if to_frontend else
            (gref, frontend_id, gref_offset, gfn, self_id, gfn_offset, length, src_gref)
            for gref, gref_offset, gfn, gfn_offset, length, to_frontend in copies]
