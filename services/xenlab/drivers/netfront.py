"""netfront: a domU's paravirtual network interfaces (eth0, eth1...), as a
xenbus driver around the pure netfront core.

The handshake is netfront's (drivers/net/xen-netfront.c): wait for the
backend's InitWait, allocate and grant the two ring pages and the buffer
pages, allocate an unbound event channel for the backend, publish
tx-ring-ref, rx-ring-ref, event-channel and the features in one xenstore
transaction, post the receive buffers, go Connected. The interface is named
eth<devid>. Teardown follows the backend: Closing stops the queues and goes
Closed; once the backend is Closed (it has unmapped) or gone, the grants
are ended, the port closed and the frames freed. A page the backend still
maps (a ring, or a buffer it keeps as a persistent grant) is ended later, as
gnttab_end_foreign_access defers it.
"""
from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import Callable

from xenlab.drivers import xenbus_state as xs
from xenlab.drivers.link import PeerLink
from xenlab.drivers.netfront_core import (Buffer, NetfrontRx, NetfrontTx, TxSend, more_to_do)
from xenlab.drivers.xenbus_device import XenbusDevice, XenbusDeviceDriver
from xenlab.net.device import NetDevice
from xenlab.xen import abi
from xenlab.xen.abi import XenbusState
from xenlab.xen.digits import C_SPACE, parse_decimal, quoted
from xenlab.xen.errors import ConfigError, XenError
from xenlab.xen.netif import FEATURE_XENLAB_PERSISTENT, make_rx_ring, make_tx_ring
from xenlab.xen.ring import FrontRing, SharedRing
from xenlab.xen.netconf import parse_mac

log = logging.getLogger(__name__)

NR_TX_BUFFERS = abi.NET_TX_RING_SIZE
NR_RX_BUFFERS = abi.NET_RX_RING_SIZE
POLL_ROUNDS = 64              # rounds per upcall before yielding to the loop (a NAPI budget)
END_ACCESS_RETRY = 0.25       # seconds between tries to end a grant still mapped
END_ACCESS_TRIES = 240        # then the page is leaked, with a warning, as Linux does


class NetfrontDevice(NetDevice):
    """eth<devid>: what the guest's IP stack sees."""

    def __init__(self, name: str, mac: bytes, mtu: int, devid: int):
        super().__init__(name, mac, mtu)
        self.devid = devid
        self.xenbus_state = XenbusState.Initialising
        self._tx: NetfrontTx | None = None
        self._rx: NetfrontRx | None = None
        self._kick: Callable[[], None] | None = None
        self._winding_down: tuple[NetfrontTx, NetfrontRx] | None = None
        # Suspending (xenbus's freeze): the queues stop, as
        # netif_device_detach stops them; the rings stay as they are.
        self.suspended = False

    @property
    def state(self) -> str:
        if self.suspended:
            return "suspended"
        if self._tx is not None and self.xenbus_state == XenbusState.Connected:
            return "broken" if self._tx.broken or self._rx.broken else "connected"
        return self.xenbus_state.name.lower()

    @property
    def carrier(self) -> bool:
        # xennet: netif_carrier_on once connected to the backend, off when
        # it goes; and off while the backend's link is down (xenlab-link).
        return self._carrier and self._tx is not None and self.xenbus_state == XenbusState.Connected

    @property
    def tx_core(self) -> NetfrontTx | None:
        return self._tx

    @property
    def rx_core(self) -> NetfrontRx | None:
        return self._rx

    def transmit(self, frames: list[bytes]) -> None:
        frames = list(frames)
        if not frames or self.refuse_tx(frames):
            return
        if self.suspended:
            self.drop("suspended", len(frames))
            return
        if self._tx is None:
            self.drop("not_connected", len(frames))
            return
        if self._tx.ring.unconsumed_responses():
            self._poll_tx(self._tx)     # completions that asked for no event (TX_LAZY_EVENT)
        self._account_tx(self._tx.send(frames))

    def _account_tx(self, out: TxSend) -> None:
        self.count_tx(out.sent)
        for reason, n in out.drops.items():
            self.drop(reason, n)
        if out.notify and self._kick is not None:
            self._kick()

    def attach(self, tx: NetfrontTx, rx: NetfrontRx, kick: Callable[[], None]) -> None:
        self._tx, self._rx, self._kick = tx, rx, kick

    def detach(self) -> None:
        if self._tx is not None:
            self.drop("not_connected", self._tx.drop_backlog())
            self._winding_down = (self._tx, self._rx)
        self._tx = self._rx = None
        self._kick = None

    def settle(self) -> None:
        """The backend has let go of the rings (Closed, or gone): count what
        is still on them, as xennet_release_tx_bufs/rx_bufs free it. A
        request never answered was sent but never taken ("tx_unanswered",
        one per slot: exact for frames of one page); a response never polled
        reached our memory after we stopped ("rx_after_close")."""
        cores, self._winding_down = self._winding_down, None
        if cores is None:
            return
        tx, rx = cores
        tx.poll()
        if tx.in_flight:
            self.drop("tx_unanswered", tx.in_flight)
        out = rx.poll()
        if out.frames:
            self.drop("rx_after_close", len(out.frames))
        for reason, n in out.drops.items():
            self.drop(reason, n)

    def on_event(self, port: int) -> None:
        """The event channel fired: responses on either ring (xennet_interrupt)."""
        for _ in range(POLL_ROUNDS):
            tx, rx = self._tx, self._rx
            if tx is None:
                return
            self._poll_tx(tx)
            self._poll_rx(rx)
            if self._tx is None or not more_to_do(tx, rx):
                return
        asyncio.get_running_loop().call_soon(self.on_event, port)

    def _poll_tx(self, tx: NetfrontTx) -> None:
        out = tx.poll()
        self.counters["tx_errors"] += out.errors
        self.counters["tx_bad_responses"] += out.bad
        self._account_tx(out.sent)

    def _poll_rx(self, rx: NetfrontRx) -> None:
        out = rx.poll()
        for reason, n in out.drops.items():
            self.drop(reason, n)
        if out.notify and self._kick is not None:
            self._kick()
        if out.frames:
            self.deliver(out.frames)


@dataclass
class _Rings:
    """Everything a connection holds, to give back on release."""

    gfns: list[int]
    pages: list[memoryview]
    refs: list[int]
    tx_sring: SharedRing
    rx_sring: SharedRing
    port: int | None = None


class Netfront(XenbusDevice):
    otherend_kind = "backend"

    def __init__(self, kernel, nodename: str):
        self.devid = int(nodename.rsplit("/", 1)[1])
        super().__init__(kernel.xenbus, nodename, f"eth{self.devid}")
        self.kernel = kernel
        self.backend_id: int | None = None
        self.dev: NetfrontDevice | None = None
        self._rings: _Rings | None = None
        self._deferred: set[asyncio.Task] = set()
        self._link: PeerLink | None = None

    # -- xenbus ------------------------------------------------------------------------
    async def setup(self) -> None:
        keys = await self.read_keys(self.nodename, ("backend", "backend-id", "mac", "mtu"))
        try:
            backend, self.backend_id, mac, mtu = _parse_frontend_dir(keys)
        except XenError as err:
            await self.dev_fatal(err.errno, err.message)
            return
        self.dev = NetfrontDevice(self.label, mac, mtu, self.devid)
        await self.watch_otherend(backend)

    def on_otherend(self, other: XenbusState) -> list[xs.Action]:
        return xs.frontend_on_backend_changed(self.state, other)

    def on_fatal(self) -> list[xs.Action]:
        return xs.frontend_on_fatal(self.state)

    def state_changed(self, state: XenbusState) -> None:
        if self.dev is not None:
            self.dev.xenbus_state = state
        if state == XenbusState.Connected and self.dev is not None:
            self.kernel.netifs.up(self.dev)

    # -- connect -------------------------------------------------------------------------
    async def connect(self) -> None:
        # Not the backend's ip node: that is Domain-0's (vif-route, antispoofing);
        # the guest's address comes from its own command line (domain.netstack).
        keys = await self.read_keys(self.otherend, ("feature-rx-copy", "feature-sg"))
        if (keys["feature-rx-copy"] or "").strip() != "1":
            raise XenError(errno.ENODEV, "backend does not support copying receive path")
        dev = self.dev
        if (keys["feature-sg"] or "").strip() != "1" and dev.mtu > abi.ETH_DATA_LEN:
            log.info("%s: reducing MTU to %d: the backend has no feature-sg", dev.name,
                     abi.ETH_DATA_LEN)
            dev.mtu = abi.ETH_DATA_LEN
        rings = await self._setup_rings()
        try:
            await self.xenbus.transaction(lambda tx: self._publish(tx, rings))
        except Exception as err:     # refused, still conflicting after the retries, or a bug
            await self._give_back(rings)
            detail = err.message if isinstance(err, XenError) else str(err)
            raise XenError(errno.EIO, f"writing the ring details: {detail}") from None
        self._rings = rings
        self._start_queues(rings)
        self._link = PeerLink(self.xenbus, dev, self.nodename, self.otherend)
        await self._link.start()

    async def _setup_rings(self) -> _Rings:
        """Two ring pages and the buffer pages, granted; an unbound port."""
        memory = self.kernel.memory
        try:
            gfns = memory.alloc_frames(2 + NR_TX_BUFFERS + NR_RX_BUFFERS)
        except MemoryError as err:
            raise XenError(errno.ENOMEM, f"allocating ring and buffer frames: {err}") from None
        pages = [memory.frame(g) for g in gfns]
        tx_sring, rx_sring = make_tx_ring(pages[0]), make_rx_ring(pages[1])
        tx_sring.init()
        rx_sring.init()
        rings = _Rings(gfns, pages, [], tx_sring, rx_sring)
        readonly = [False, False] + [True] * NR_TX_BUFFERS + [False] * NR_RX_BUFFERS
        try:
            rings.refs = await self.kernel.gnttab.grant_access(
                [(self.backend_id, g, ro) for g, ro in zip(gfns, readonly)])
            rings.port = await self.kernel.evtchn.alloc_unbound(self.backend_id)
        except XenError as err:
            await self._give_back(rings)
            raise XenError(errno.EIO, f"granting the rings to d{self.backend_id}: "
                                      f"{err.message}") from None
        return rings

    async def _publish(self, tx: int, rings: _Rings) -> None:
        values = {
            "tx-ring-ref": rings.refs[0], "rx-ring-ref": rings.refs[1],
            "event-channel": rings.port, "request-rx-copy": 1, "feature-rx-notify": 1,
            "feature-sg": 1, "feature-gso-tcpv4": 0, "feature-gso-tcpv6": 0,
            # Our buffer pages stay granted as long as we are connected: a
            # backend may map them once instead of copying through the hypervisor.
            FEATURE_XENLAB_PERSISTENT: 1,
        }
        for key, value in values.items():
            await self.xenbus.write(f"{self.nodename}/{key}", str(value), tx=tx)

    def _start_queues(self, rings: _Rings) -> None:
        tx_pages = rings.pages[2:2 + NR_TX_BUFFERS]
        rx_pages = rings.pages[2 + NR_TX_BUFFERS:]
        tx_refs = rings.refs[2:2 + NR_TX_BUFFERS]
        rx_refs = rings.refs[2 + NR_TX_BUFFERS:]
        tx = NetfrontTx(FrontRing(rings.tx_sring), [Buffer(r, p) for r, p in zip(tx_refs, tx_pages)],
                        self.dev.mtu)
        rx = NetfrontRx(FrontRing(rings.rx_sring), [Buffer(r, p) for r, p in zip(rx_refs, rx_pages)])
        port = rings.port
        evtchn = self.kernel.evtchn
        self.dev.attach(tx, rx, lambda: evtchn.notify(port))
        evtchn.bind_handler(port, self.dev.on_event)
        if rx.refill():
            evtchn.notify(port)

    # -- disconnect and release --------------------------------------------------------------
    async def disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.stop()
        if self.dev is None:
            return
        self.dev.detach()
        self.kernel.netifs.down(self.dev)

    async def release(self) -> None:
        rings, self._rings = self._rings, None
        if self.dev is not None:
            self.dev.settle()
        if rings is not None:
            await self._give_back(rings)

    async def teardown(self) -> None:
        await self.disconnect()
        await self.release()

    async def _give_back(self, rings: _Rings) -> None:
        """Close the port, end the grants, free the frames (xennet_disconnect_backend)."""
        if rings.port is not None:
            try:
                await self.kernel.evtchn.close_port(rings.port)
            except XenError as err:
                log.debug("%s: closing port %d: %s", self.label, rings.port, err.message)
        rings.tx_sring.release()
        rings.rx_sring.release()
        for page in rings.pages:
            page.release()
        # The ring pages, and the buffer pages of a backend that kept our
        # persistent grants, may still be mapped by a backend that has not
        # caught up; those end when it lets go.
        for refs, gfns in ((rings.refs[2:], rings.gfns[2:]), (rings.refs[:2], rings.gfns[:2])):
            busy = self._end_access(refs)
            if busy is None:
                continue
            done = [g for r, g in zip(refs, gfns) if r not in busy]
            self.kernel.memory.free_frames(done)
            if busy:
                left = [(r, g) for r, g in zip(refs, gfns) if r in busy]
                task = asyncio.get_running_loop().create_task(self._end_access_later(left))
                self._deferred.add(task)
                task.add_done_callback(self._deferred.discard)

    def _end_access(self, refs: list[int]) -> set[int] | None:
        """The refs still mapped by the backend (None: ending failed)."""
        if not refs:
            return set()
        try:
            return set(self.kernel.gnttab.end_access(refs))
        except XenError as err:
            log.warning("%s: ending %d grants (refs %d...): %s", self.label, len(refs), refs[0],
                        err.message)
            return None

    async def _end_access_later(self, left: list[tuple[int, int]]) -> None:
        """gnttab_end_foreign_access's deferred list: retry until unmapped;
        each page is freed as soon as its grant ends."""
        for _ in range(END_ACCESS_TRIES):
            await asyncio.sleep(END_ACCESS_RETRY)
            busy = self._end_access([r for r, _ in left])
            if busy is None:
                return
            self.kernel.memory.free_frames([g for r, g in left if r not in busy])
            left = [(r, g) for r, g in left if r in busy]
            if not left:
                return
        log.warning("%s: grants %s are still in use; leaking their pages", self.label,
                    [r for r, _ in left])

    def shutdown_local(self) -> None:
        """The domain is going away: stop using the rings, without hypercalls."""
        for task in list(self._deferred):
            task.cancel()
        if self.dev is not None:
            self.dev.detach()
            self.kernel.netifs.down(self.dev)
        rings, self._rings = self._rings, None
        if rings is not None:
            if rings.port is not None:
                self.kernel.evtchn.unbind_handler(rings.port)
            rings.tx_sring.release()
            rings.rx_sring.release()
            for page in rings.pages:
                page.release()



def _parse_frontend_dir(keys: dict[str, str | None]) -> tuple[str, int, bytes, int]:
    backend = (keys.get("backend") or "").strip(C_SPACE)
    if not backend.startswith("/local/domain/"):
        raise XenError(errno.ENOENT, f"reading backend: {quoted(backend)} is not a backend path")
    bid = keys.get("backend-id")
    if bid is None:
        raise XenError(errno.ENOENT, "reading backend-id: missing")
    backend_id = parse_decimal(bid, "reading backend-id", maximum=abi.DOMID_FIRST_RESERVED - 1)
    try:
        mac = parse_mac(keys.get("mac") or "")
    except ConfigError as err:
        raise XenError(errno.EINVAL, f"parsing mac: {err.message}") from None
    mtu_text = keys.get("mtu")
    mtu = abi.ETH_DATA_LEN
    if mtu_text is not None and mtu_text.strip(C_SPACE):
        mtu = parse_decimal(mtu_text, "reading mtu", minimum=abi.ETH_MIN_MTU,
                            maximum=abi.XEN_NETIF_MAX_TX_SIZE)
    return backend, backend_id, mac, mtu


class NetfrontDriver(XenbusDeviceDriver):
    """netfront: a device for every vif directory under our device/vif."""

    devicetype = "vif"
    side = "frontend"

    def new_device(self, path: str) -> Netfront:
        return Netfront(self.kernel, path)

    async def suspend(self) -> None:
        """The kernel is suspending (Linux's xenbus_dev_suspend, then
        netif_device_detach): every interface stops sending. A restored
        kernel reconnects its vifs through the handshake, as netfront_resume
        does; a cancelled suspend (``thaw``) just starts them again."""
        for dev in self.devices.values():
            if dev.dev is not None:
                dev.dev.suspended = True

    async def thaw(self) -> None:
        for dev in self.devices.values():
            if dev.dev is not None:
                dev.dev.suspended = False
