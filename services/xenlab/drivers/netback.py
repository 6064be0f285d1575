"""netback: the backend of every vif a driver domain serves, as a xenbus
driver around the pure netback core.

The handshake is Linux netback's (drivers/net/xen-netback/xenbus.c): on
probe, advertise the features and go InitWait; when the frontend is
Connected, read and validate its ring details, map the two ring pages, bind
the event channel, create the vif (vifD.N, or ``vifname``), run hotplug,
write hotplug-status=connected, go Connected. Teardown (frontend Closing or
Closed, our directory removed, a fatal error) unmaps, unbinds and takes the
vif offline.

The data path is two tasks per vif, woken by the one event channel:
guest transmit (tx ring -> grant copy into our scratch frames -> the vif's
receiver, which hotplug attached to the bridge) and guest receive
(vif.transmit from the bridge -> our scratch frames -> grant copy into the
frontend's rx pages). Each batch is one GNTTABOP_copy (xenlab.domain.gnttab:
over the doorbell, else GrantTable.Copy), and each direction keeps up to
PIPELINE_DEPTH batches in flight, each in its own scratch area, completed in
the order they were built. As netback's final check for requests, the ring's
event index is re-armed only once nothing is in flight, so a frontend that
keeps producing while we work does not notify at all.

A frontend that keeps its buffer grants (``feature-persistent=1``) has its
buffer pages mapped as they are first used (one MapBatch call for many), and
the copies through mapped pages run here, without the hypervisor
(xenlab.drivers.grant_cache); the others still go to the hypervisor.

A frontend that breaks the protocol disables only its own vif: the tx task
logs "vifD.N: fatal tx error: ...; disabling", stops, and the device
reports xenbus_dev_fatal.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from xenlab.domain.hypercall import Page, pass_on
from xenlab.domain.xenbus import XenbusDriver
from xenlab.drivers import netback_core as core
from xenlab.drivers.grant_cache import MAP_BATCH, GrantCache
from xenlab.drivers import xenbus_state as xs
from xenlab.drivers.netback_core import GrantCopy, NetbackRx, NetbackTx, Scratch, VifConfig
from xenlab.drivers.xenbus_device import XenbusDevice
from xenlab.net.device import NetDevice
from xenlab.xen import abi
from xenlab.xen.abi import XenbusState
from xenlab.xen.errors import GrantError, XenError
from xenlab.xen.netif import make_rx_ring, make_tx_ring
from xenlab.xen.ring import BackRing, SharedRing

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2      # copy batches in flight per vif and direction
# netback bounds the rx queue in bytes (RX_QUEUE_BYTES), which holds 8192
# minimum-size frames; one batch from the bridge may carry ~900 of them.
RX_QUEUE_FRAMES = 8192
MAP_WAIT = 10.0         # seconds a disconnect waits for a MapBatch in flight
MAX_PERSISTENT_PAGES = 32768    # per driver domain: 64 vifs' worth, half of vm.max_map_count


class HotplugError(Exception):
    """The hotplug script failed; its message goes to hotplug-error."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Hotplug(Protocol):
    async def online(self, vif: NetDevice, bridge: str, backend_path: str) -> None:
        """Attach the vif (raise HotplugError(message) if it cannot be)."""

    async def offline(self, vif: NetDevice) -> None:
        """Detach it."""


class LoopbackHotplug:
    """Hotplug for tests: each bridge name is an in-process hub that floods
    every frame a vif delivers to the other vifs on it."""

    def __init__(self):
        self.bridges: dict[str, list[NetDevice]] = {}

    async def online(self, vif: NetDevice, bridge: str, backend_path: str) -> None:
        self.bridges.setdefault(bridge, []).append(vif)
        vif.receiver = lambda frames, src=vif, name=bridge: self._flood(name, src, frames)

    async def offline(self, vif: NetDevice) -> None:
        for ports in self.bridges.values():
            if vif in ports:
                ports.remove(vif)
        vif.receiver = None

    def _flood(self, bridge: str, src: NetDevice, frames: list[bytes]) -> None:
        for port in list(self.bridges.get(bridge, ())):
            if port is not src:
                port.transmit(list(frames))


class VifDevice(NetDevice):
    """vifD.N in the driver domain: frames the guest sent come out of
    ``deliver`` (to the receiver hotplug attached); ``transmit`` sends
    frames to the guest. ``mac`` is the guest's (the backend's ``mac`` key)."""

    def __init__(self, config: VifConfig):
        super().__init__(config.name, config.mac, config.mtu)
        self.config = config
        self.frontend_id = config.frontend_id
        self.devid = config.devid
        self.disabled: str | None = None
        self._backend: _Connection | None = None

    @property
    def state(self) -> str:
        if self.disabled:
            return "disabled"
        return "connected" if self._backend is not None else "down"

    @property
    def persistent_grants(self) -> int:
        """The frontend's pages netback holds mapped for this vif."""
        conn = self._backend
        return len(conn.persistent.cache) if conn is not None and conn.persistent else 0

    def transmit(self, frames: list[bytes]) -> None:
        frames = list(frames)
        if not frames:
            return
        conn = self._backend
        if conn is None or self.disabled:
            self.drop("disabled" if self.disabled else "not_connected", len(frames))
            return
        for reason, n in conn.rx.enqueue(frames).items():
            self.drop(reason, n)
        conn.rx_wake.set()


@dataclass
class _Mapped:
    page: Page
    sring: SharedRing


@dataclass
class _Held:
    """What a connection attempt has acquired so far, to give back."""

    maps: list[_Mapped] = field(default_factory=list)
    port: int | None = None
    gfns: list[int] = field(default_factory=list)
    scratches: list[Scratch] = field(default_factory=list)


class PageBudget:
    """How many persistent-grant pages the whole driver domain may map: each
    is a mapping (a VMA) of its own, and a process has vm.max_map_count of
    them (65,530 by default) for everything else too."""

    def __init__(self, pages: int = MAX_PERSISTENT_PAGES):
        self.left = pages

    def take(self, n: int) -> int:
        n = max(0, min(n, self.left))
        self.left -= n
        return n

    def give(self, n: int) -> None:
        self.left += n


class _PersistentGrants:
    """The I/O half of a vif's GrantCache: MapBatch, the mmaps, UnmapBatch."""

    def __init__(self, kernel, frontend_id: int, label: str, budget: PageBudget):
        self.cache = GrantCache()
        self._budget = budget
        self._held = 0                    # of the budget: pages being mapped or mapped
        self._gnttab = kernel.gnttab
        self._frontend_id = frontend_id
        self._label = label
        self._pages: list[Page] = []
        self._task: asyncio.Task | None = None
        self._closed = False

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
                    log.info("%s: the driver domain maps %d buffer pages already; copying "
                             "the rest through the hypervisor", self._label, MAX_PERSISTENT_PAGES)
                    self.cache.give_up()
                    return
                self._held += room
                keys = self.cache.take_wanted(room)
                self._budget.give(room - len(keys))
                self._held -= room - len(keys)
                try:
                    results = await self._gnttab.map_batch(
                        [(self._frontend_id, ref, not writable) for ref, writable in keys])
                except XenError as err:
                    log.warning("%s: mapping %d buffer grants failed (%s); copying through "
                                "the hypervisor", self._label, len(keys), err.message)
                    self._release_budget(len(keys))
                    self.cache.give_up()
                    return
                self._take(keys, results)
        finally:
            self._task = None

    def _take(self, keys, results: list[Page | GrantError]) -> None:
        for key, result in zip(keys, results):
            if isinstance(result, GrantError):
                log.debug("%s: buffer ref %d not mapped: %s", self._label, key[0], result.message)
                self.cache.refused(key, result.status)
                self._release_budget(1)
            elif result.view is None:         # the hypervisor gave us no way into it
                self.cache.refused(key, abi.GNTST_general_error)
                self._release_budget(1)
                self._pages.append(result)
            else:
                self._pages.append(result)
                self.cache.mapped(key, result.handle, result.view)

    async def close(self) -> None:
        """Stop mapping, wait for a MapBatch in flight, unmap everything."""
        self._closed = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), MAP_WAIT)
            except asyncio.TimeoutError:
                log.warning("%s: a MapBatch call did not finish; its mappings stay with the "
                            "hypervisor until this domain goes", self._label)
            except Exception:
                log.exception("%s: mapping buffer grants failed", self._label)
        self.cache.drain()
        handles = [page.handle for page in self._pages]
        for i in range(0, len(handles), MAP_BATCH):
            chunk = handles[i:i + MAP_BATCH]
            try:
                await self._gnttab.unmap_batch(chunk)
            except XenError as err:
                log.warning("%s: unmapping %d buffer grants: %s", self._label, len(chunk),
                            err.message)
        self.close_local()

    def _release_budget(self, n: int) -> None:
        n = min(n, self._held)
        self._held -= n
        self._budget.give(n)

    def close_local(self) -> None:
        """Let go of the mmaps, without hypercalls."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self.cache.drain()
        for page in self._pages:
            page.close()
        self._pages = []
        self._release_budget(self._held)


@dataclass
class _Connection:
    """One connected vif: mapped rings, port, scratch, cores and workers."""

    vif: VifDevice
    tx_map: _Mapped
    rx_map: _Mapped
    port: int
    scratch_gfns: list[int]
    tx: NetbackTx
    rx: NetbackRx
    tx_scratches: list[Scratch]
    rx_scratches: list[Scratch]
    tx_wake: asyncio.Event = field(default_factory=asyncio.Event)
    rx_wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    credit_timer: asyncio.TimerHandle | None = None
    persistent: _PersistentGrants | None = None
    scratch_pages: dict[int, memoryview] = field(default_factory=dict)


class Netback(XenbusDevice):
    otherend_kind = "frontend"

    def __init__(self, driver: "NetbackDriver", nodename: str):
        super().__init__(driver.kernel.xenbus, nodename, nodename)
        self.driver = driver
        self.kernel = driver.kernel
        self.config: VifConfig | None = None
        self.vif: VifDevice | None = None
        self._conn: _Connection | None = None

    # -- xenbus ------------------------------------------------------------------------
    async def setup(self) -> None:
        keys = await self.read_keys(self.nodename, (
            "frontend", "frontend-id", "mac", "ip", "rate", "mtu", "bridge", "vifname", "online"))
        try:
            self.config = core.parse_backend_dir(self.nodename, keys)
        except XenError as err:
            await self.dev_fatal(err.errno, err.message)
            return
        self.label = self.config.name
        await self._advertise()
        await self.run_actions(xs.backend_path(self.state, XenbusState.InitWait))
        await self.watch_otherend(self.config.frontend)

    async def _advertise(self) -> None:
        async def body(tx: int) -> None:
            for key, value in core.FEATURES.items():
                await self.xenbus.write(f"{self.nodename}/{key}", value, tx=tx)
        await self.xenbus.transaction(body)

    def on_otherend(self, other: XenbusState) -> list[xs.Action]:
        return xs.backend_on_frontend_changed(self.state, other, self._online())

    def _online(self) -> bool:
        return self.config is not None and self.config.online

    async def _otherend_changed(self) -> bool:
        # xenbus_dev_is_online(): the toolstack sets online=0 to detach.
        online = await self._read(f"{self.nodename}/online")
        if self.config is not None:
            self.config = _replace_online(self.config, (online or "").strip() == "1")
        return await super()._otherend_changed()

    def on_fatal(self) -> list[xs.Action]:
        return xs.backend_on_fatal(self.state)

    # -- connect -------------------------------------------------------------------------
    async def connect(self) -> None:
        keys = await self.read_keys(self.otherend, core.FRONTEND_KEYS)
        rings = core.parse_frontend_keys(keys)
        held = _Held()
        try:
            held.maps.append(await self._map(rings.tx_ring_ref, make_tx_ring))
            held.maps.append(await self._map(rings.rx_ring_ref, make_rx_ring))
            held.port = await self._bind(rings.event_channel)
            held.gfns = self._alloc_scratch()
            conn = self._build(VifDevice(self.config), *held.maps, held.port, held.gfns)
            held.scratches = conn.tx_scratches + conn.rx_scratches
            if rings.persistent:
                conn.persistent = _PersistentGrants(self.kernel, self.config.frontend_id,
                                                    self.config.name, self.driver.page_budget)
                conn.tx.direct = conn.persistent.cache.tx_pages
                conn.rx.direct = conn.persistent.cache.rx_pages
                conn.scratch_pages = {gfn: page for scratch in held.scratches
                                      for gfn, page in scratch.by_gfn().items()}
            await self._hotplug_online(conn.vif)
        except BaseException:
            await self._give_back(held)
            raise
        self._conn = conn
        if conn.persistent is not None:
            # netfront posted its receive buffers before going Connected:
            # map them now, not each on the first frame into it (a copy
            # through the hypervisor and a MapBatch call on the data path).
            # Transmit pages are known only once a request names them.
            conn.persistent.prefetch(conn.rx.posted_grefs(), writable=True)
        self._start(conn)

    async def _map(self, ref: int, make_ring) -> _Mapped:
        fid = self.config.frontend_id
        try:
            page = await self.kernel.gnttab.map(fid, ref)
            if page.view is None:
                await self._unmap(page)
                raise XenError(errno.EINVAL, "the hypervisor gave no mapping of the page")
        except XenError as err:
            raise XenError(errno.EINVAL, f"mapping shared-frame ref {ref} of d{fid}: "
                                         f"{err.message}") from None
        return _Mapped(page, make_ring(page.view))

    async def _bind(self, remote_port: int) -> int:
        fid = self.config.frontend_id
        try:
            return await self.kernel.evtchn.bind_interdomain(fid, remote_port)
        except XenError as err:
            raise XenError(errno.EINVAL, f"binding event-channel {remote_port} of d{fid}: "
                                         f"{err.message}") from None

    def _alloc_scratch(self) -> list[int]:
        try:
            return self.kernel.memory.alloc_frames(2 * PIPELINE_DEPTH * core.SCRATCH_PAGES)
        except MemoryError as err:
            raise XenError(errno.ENOMEM, f"allocating scratch frames: {err}") from None

    def _build(self, vif: VifDevice, tx_map: _Mapped, rx_map: _Mapped, port: int,
               gfns: list[int]) -> _Connection:
        cfg = self.config
        memory = self.kernel.memory
        n = core.SCRATCH_PAGES
        areas = [Scratch(gfns[i:i + n], [memory.frame(g) for g in gfns[i:i + n]])
                 for i in range(0, len(gfns), n)]
        tx_scratches, rx_scratches = areas[:PIPELINE_DEPTH], areas[PIPELINE_DEPTH:]
        antispoof = core.AntiSpoof(cfg.mac, cfg.ips) if cfg.ips else None
        tx = NetbackTx(BackRing(tx_map.sring), tx_scratches[0], antispoof=antispoof,
                       limiter=core.make_limiter(cfg.rate, self.driver.clock))
        rx = NetbackRx(BackRing(rx_map.sring), rx_scratches[0], max_queue=RX_QUEUE_FRAMES,
                       max_bytes=core.RX_QUEUE_BYTES)
        return _Connection(vif, tx_map, rx_map, port, gfns, tx, rx, tx_scratches, rx_scratches)

    async def _hotplug_online(self, vif: VifDevice) -> None:
        try:
            await self.driver.hotplug.online(vif, self.config.bridge, self.nodename)
        except HotplugError as err:
            await self.xenbus.write(f"{self.nodename}/hotplug-error", err.message)
            await self.xenbus.write(f"{self.nodename}/hotplug-status", "error")
            raise XenError(errno.EIO, f"hotplug script failed: {err.message}") from None
        await self.xenbus.write(f"{self.nodename}/hotplug-status", "connected")

    def _start(self, conn: _Connection) -> None:
        self.vif = conn.vif
        conn.vif._backend = conn
        loop = asyncio.get_running_loop()
        conn.tasks = [loop.create_task(self._tx_worker(conn), name=f"{conn.vif.name} tx"),
                      loop.create_task(self._rx_worker(conn), name=f"{conn.vif.name} rx")]
        self.kernel.evtchn.bind_handler(conn.port, lambda _port: self._kick(conn))
        # Requests the frontend queued before we were connected.
        self._kick(conn)
        self.kernel.vifs[conn.vif.name] = conn.vif
        _notify_change(self.kernel, conn.vif.name, conn.vif)
        log.info("%s: connected to d%d (port %d, bridge %s)", conn.vif.name,
                 self.config.frontend_id, conn.port, self.config.bridge)

    @staticmethod
    def _kick(conn: _Connection) -> None:
        """xenvif_interrupt: each half runs only if it has work, as
        xenvif_tx_interrupt and xenvif_rx_interrupt check first."""
        if conn.tx.held or conn.tx.ring.unconsumed_requests():
            conn.tx_wake.set()
        if conn.rx.queue:
            conn.rx_wake.set()

    # -- the data path -----------------------------------------------------------------------
    async def _tx_worker(self, conn: _Connection) -> None:
        while True:
            await conn.tx_wake.wait()
            conn.tx_wake.clear()
            await self._tx_action(conn)
            if conn.tx.disabled:
                return

    async def _tx_action(self, conn: _Connection) -> None:
        """xenvif_tx_action until the ring is drained (or credit runs out)."""
        vif = conn.vif
        tx = conn.tx
        free = list(conn.tx_scratches)
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
            while (free and wait_until is None and not tx.disabled
                   and not _short_of_room(vif, len(in_flight) + 1)):
                batch = tx.build(free[-1])
                wait_until = batch.wait_until
                if not batch.frames and not batch.fatal:
                    break
                free.pop()
                in_flight.append((batch, self._copy(conn, batch.copies)))
            if not in_flight:
                if wait_until is not None:
                    vif.counters["rate_limited"] += 1
                    self._arm_credit_timer(conn, wait_until)
                    return
                if tx.disabled or not tx.more_to_do():
                    return
                continue
            batch, answer = in_flight.popleft()
            statuses = await _settled(answer)
            free.append(batch.scratch)
            result = tx.complete(batch, statuses)
            for reason, n in result.drops.items():
                vif.drop(reason, n)
            # The frames first: they are what someone waits for; the
            # frontend's notification only gives it its slots back, and a
            # send that wakes another process is the dearest step here.
            if result.frames:
                vif.deliver(result.frames)
            if result.notify:
                self.kernel.evtchn.notify(conn.port)
            if batch.fatal:
                self._fatal_tx(conn, batch.fatal)
                return

    def _fatal_tx(self, conn: _Connection, message: str) -> None:
        """xenvif_fatal_tx_err: this vif only."""
        conn.vif.disabled = message
        log.error("%s: fatal tx error: %s; disabling", conn.vif.name, message)
        self.fatal(f"fatal tx error: {message}")

    def _arm_credit_timer(self, conn: _Connection, when: float) -> None:
        if conn.credit_timer is not None:
            return
        delay = max(0.0, when - self.driver.clock())

        def fire() -> None:
            conn.credit_timer = None
            conn.tx.replenish()
            conn.tx_wake.set()

        conn.credit_timer = asyncio.get_running_loop().call_later(delay, fire)

    async def _rx_worker(self, conn: _Connection) -> None:
        while True:
            await conn.rx_wake.wait()
            conn.rx_wake.clear()
            await self._rx_action(conn)

    async def _rx_action(self, conn: _Connection) -> None:
        """xenvif_rx_action: queued frames into posted rx requests."""
        vif = conn.vif
        rx = conn.rx
        free = list(conn.rx_scratches)
        in_flight: collections.deque = collections.deque()
        try:
            await self._rx_batches(conn, vif, rx, free, in_flight)
        except asyncio.CancelledError:
            # Disconnected with copies in flight: their responses will never
            # be written, so those frames never reach the guest.
            vif.drop("not_connected", sum(len(batch.frames) for batch, _ in in_flight))
            raise

    async def _rx_batches(self, conn: _Connection, vif: VifDevice, rx: NetbackRx, free: list,
                          in_flight: collections.deque) -> None:
        while True:
            while free:
                batch = rx.build(free[-1])
                if not batch.frames:
                    break
                free.pop()
                in_flight.append((batch, self._copy(conn, batch.copies)))
            if not in_flight:
                if not rx.more_to_do():
                    return
                continue
            batch, answer = in_flight[0]
            statuses = await _settled(answer)
            in_flight.popleft()
            free.append(batch.scratch)
            result = rx.complete(batch, statuses)
            vif.count_tx(result.sent)
            for reason, n in result.drops.items():
                vif.drop(reason, n)
            if result.notify:
                self.kernel.evtchn.notify(conn.port)

    def _copy(self, conn: _Connection, copies: list[GrantCopy]) -> asyncio.Future:
        """Start one GNTTABOP_copy batch; the future is its statuses. With
        persistent grants the copies through mapped pages are done here and
        now, and only the rest go to the hypervisor."""
        frontend_id = self.config.frontend_id
        pg = conn.persistent
        if pg is None:
            return self.kernel.gnttab.copy(_gnttab_ops(copies, frontend_id))
        statuses, remote = pg.cache.copy_local(copies, conn.scratch_pages.__getitem__)
        answer = asyncio.get_running_loop().create_future()
        if not remote:
            answer.set_result(statuses)
            return answer
        pg.kick()
        sent = self.kernel.gnttab.copy(_gnttab_ops([copies[i] for i in remote], frontend_id))
        pass_on(sent, answer, lambda answers: GrantCache.merge(statuses, remote, answers))
        return answer

    # -- disconnect -------------------------------------------------------------------------
    async def disconnect(self) -> None:
        """backend_disconnect: workers, port, hotplug, mappings, scratch."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        vif = conn.vif
        await self._stop_workers(conn)
        vif._backend = None
        vif.drop("not_connected", conn.rx.release())
        conn.tx.release()
        try:
            await self.driver.hotplug.offline(vif)
        except Exception:
            log.exception("%s: hotplug offline failed", vif.name)
        if self.kernel.vifs.get(vif.name) is vif:
            del self.kernel.vifs[vif.name]
            _notify_change(self.kernel, vif.name, None)
        if conn.persistent is not None:
            await conn.persistent.close()
        conn.scratch_pages.clear()
        await self._give_back(_Held([conn.tx_map, conn.rx_map], conn.port, conn.scratch_gfns,
                                    conn.tx_scratches + conn.rx_scratches))
        log.info("%s: disconnected", vif.name)

    @staticmethod
    async def _stop_workers(conn: _Connection) -> None:
        if conn.credit_timer is not None:
            conn.credit_timer.cancel()
            conn.credit_timer = None
        current = asyncio.current_task()
        tasks = [t for t in conn.tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _give_back(self, held: "_Held") -> None:
        if held.port is not None:
            try:
                await self.kernel.evtchn.close_port(held.port)
            except XenError as err:
                log.debug("%s: closing port %d: %s", self.label, held.port, err.message)
        for scratch in held.scratches:
            scratch.release()
        if held.gfns:
            self.kernel.memory.free_frames(held.gfns)
        for mapped in held.maps:
            await self._unmap_ring(mapped)

    async def _unmap_ring(self, mapped: _Mapped) -> None:
        mapped.sring.release()
        await self._unmap(mapped.page)

    async def _unmap(self, page: Page) -> None:
        try:
            await self.kernel.gnttab.unmap(page)
        except XenError as err:
            log.warning("%s: unmapping handle %d: %s", self.label, page.handle, err.message)

    async def unregister(self) -> None:
        """netback_remove: the device goes; hotplug-status with it."""
        await self.disconnect()
        try:
            await self.xenbus.rm(f"{self.nodename}/hotplug-status")
        except XenError as err:
            log.debug("%s: removing hotplug-status: %s", self.label, err.message)

    async def teardown(self) -> None:
        await self.disconnect()

    def shutdown_local(self) -> None:
        """The driver domain is going away: stop, without hypercalls."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for task in conn.tasks:
            task.cancel()
        if conn.credit_timer is not None:
            conn.credit_timer.cancel()
        self.kernel.evtchn.unbind_handler(conn.port)
        conn.vif._backend = None
        if conn.persistent is not None:
            conn.persistent.close_local()
        conn.scratch_pages.clear()
        for scratch in conn.tx_scratches + conn.rx_scratches:
            scratch.release()
        for mapped in (conn.tx_map, conn.rx_map):
            mapped.sring.release()
            try:
                mapped.page.close()
            except BufferError:
                pass


def _short_of_room(vif: VifDevice, batches: int) -> bool:
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


def _replace_online(cfg: VifConfig, online: bool) -> VifConfig:
    return cfg if cfg.online == online else replace(cfg, online=online)


def _gnttab_ops(copies: list[GrantCopy], frontend_id: int) -> list[tuple]:
    """The core's copy plan as gnttab_copy ops (the layout of GnttabCopy,
    as plain tuples: this runs for every frame): the frontend's side by
    grant reference, ours by gfn of our own (DOMID_SELF)."""
    self_id, src_gref, dst_gref = abi.DOMID_SELF, abi.GNTCOPY_source_gref, abi.GNTCOPY_dest_gref
    return [(gfn, self_id, gfn_offset, gref, frontend_id, gref_offset, length, dst_gref)
            if to_frontend else
            (gref, frontend_id, gref_offset, gfn, self_id, gfn_offset, length, src_gref)
            for gref, gref_offset, gfn, gfn_offset, length, to_frontend in copies]


def _notify_change(kernel, name: str, dev: NetDevice | None) -> None:
    for callback in list(kernel.on_netif_change):
        try:
            callback(name, dev)
        except Exception:
            log.exception("netif change callback for %s failed", name)


class NetbackDriver(XenbusDriver):
    devicetype = "vif"
    side = "backend"

    def __init__(self, kernel, hotplug: Hotplug, clock: Callable[[], float] = time.monotonic):
        self.kernel = kernel
        self.hotplug = hotplug
        self.clock = clock
        self.devices: dict[str, Netback] = {}
        self.page_budget = PageBudget()

    async def probe(self, path: str) -> None:
        # Runs inside the xenbus reader: start the device's task, wait for nothing.
        dev = Netback(self, path)
        self.devices[path] = dev
        dev.start()

    async def remove(self, path: str) -> None:
        dev = self.devices.pop(path, None)
        if dev is not None:
            dev.removed()

    async def close(self) -> None:
        for dev in list(self.devices.values()):
            await dev.stop()
            dev.shutdown_local()
        self.devices.clear()
