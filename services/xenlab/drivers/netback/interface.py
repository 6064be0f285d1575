"""The vif in the driver domain (Linux's interface.c): the device ``vifD.N``,
what connecting it to its frontend's rings acquires and gives back, and the
contract with hotplug, which joins it to its bridge.

``connect_data`` is xenvif_connect_data: map the frontend's two ring pages,
bind its event channel, set aside scratch frames for the copies, build the
tx and rx cores and their Datapath (not started). Whatever fails on the way
is given back before the error goes up. ``release`` gives back what a
Connection holds (persistent grants, the port, the scratch frames, the ring
mappings); ``release_local`` lets go of it without hypercalls, when the
driver domain itself is going.

Hotplug is Xen's vif-bridge script: ``online`` attaches the vif to the
bridge named by the backend's ``bridge`` key, or raises HotplugError with
the message netback writes to ``hotplug-error`` before ``hotplug-status``
says ``error``; on success ``hotplug-status`` says ``connected``.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

from xenlab.domain.hypercall import Page
from xenlab.drivers.netback.antispoof import AntiSpoof
from xenlab.drivers.netback.datapath import (PIPELINE_DEPTH, RX_QUEUE_FRAMES, Datapath,
                                             PageBudget, PersistentGrants)
from xenlab.drivers.netback.ratelimit import CreditScheduler
from xenlab.drivers.netback.rx import RX_QUEUE_BYTES, NetbackRx
from xenlab.drivers.netback.scratch import SCRATCH_PAGES, Scratch
from xenlab.drivers.netback.tx import NetbackTx
from xenlab.net.device import NetDevice
from xenlab.xen.errors import XenError
from xenlab.xen.netif import make_rx_ring, make_tx_ring
from xenlab.xen.ring import BackRing, SharedRing

log = logging.getLogger(__name__)


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


class VifDevice(NetDevice):
    """vifD.N in the driver domain: frames the guest sent come out of
    ``deliver`` (to the receiver hotplug attached); ``transmit`` sends
    frames to the guest. ``mac`` is the guest's (the backend's ``mac`` key)."""

    def __init__(self, name: str, mac: bytes, mtu: int, frontend_id: int, devid: int):
        super().__init__(name, mac, mtu)
        self.frontend_id = frontend_id
        self.devid = devid
        self.disabled: str | None = None
        self._datapath: Datapath | None = None

    @property
    def state(self) -> str:
        if self.disabled:
            return "disabled"
        return "connected" if self._datapath is not None else "down"

    @property
    def carrier(self) -> bool:
        # A vif has carrier while its frontend is connected (xenvif_carrier_on
        # at connect, off when disabled) and its frontend's link is up.
        return self._carrier and self._datapath is not None and not self.disabled

    @property
    def datapath(self) -> Datapath | None:
        return self._datapath

    @property
    def persistent_grants(self) -> int:
        """The frontend's pages netback holds mapped for this vif."""
        dp = self._datapath
        return len(dp.persistent.cache) if dp is not None and dp.persistent else 0

    def attach(self, datapath: Datapath) -> None:
        self._datapath = datapath

    def detach(self) -> None:
        self._datapath = None

    def transmit(self, frames: list[bytes]) -> None:
        frames = list(frames)
        if not frames or self.refuse_tx(frames):
            return
        dp = self._datapath
        if dp is None or self.disabled:
            self.drop("disabled" if self.disabled else "not_connected", len(frames))
            return
        for reason, n in dp.enqueue(frames).items():
            self.drop(reason, n)


@dataclass
class MappedRing:
    """A ring page of the frontend's, mapped, and the ring over it."""

    page: Page
    sring: SharedRing


@dataclass
class Connection:
    """One connected vif: what connect_data acquired, and its data path."""

    vif: VifDevice
    maps: list[MappedRing] = field(default_factory=list)
    port: int | None = None
    gfns: list[int] = field(default_factory=list)
    scratches: list[Scratch] = field(default_factory=list)
    datapath: Datapath | None = None


async def connect_data(kernel, vif: VifDevice, tx_ring_ref: int, rx_ring_ref: int,
                       event_channel: int, *, persistent: bool, antispoof: AntiSpoof | None,
                       limiter: CreditScheduler | None, budget: PageBudget,
                       clock: Callable[[], float], on_fatal: Callable[[str], None]) -> Connection:
    """xenvif_connect_data for the frontend ``vif.frontend_id``: raises
    XenError, having given back what it got, if the frontend's refs or port
    are not what it says or we are out of frames."""
    conn = Connection(vif)
    try:
        conn.maps.append(await _map(kernel, vif.frontend_id, tx_ring_ref, make_tx_ring))
        conn.maps.append(await _map(kernel, vif.frontend_id, rx_ring_ref, make_rx_ring))
        conn.port = await _bind(kernel, vif.frontend_id, event_channel)
        try:
            conn.gfns = kernel.memory.alloc_frames(2 * PIPELINE_DEPTH * SCRATCH_PAGES)
        except MemoryError as err:
            raise XenError(errno.ENOMEM, f"allocating scratch frames: {err}") from None
        n = SCRATCH_PAGES
        conn.scratches = [Scratch(conn.gfns[i:i + n], [kernel.memory.frame(g)
                                                        for g in conn.gfns[i:i + n]])
                          for i in range(0, len(conn.gfns), n)]
        tx_scratches, rx_scratches = conn.scratches[:PIPELINE_DEPTH], conn.scratches[PIPELINE_DEPTH:]
        tx = NetbackTx(BackRing(conn.maps[0].sring), tx_scratches[0], antispoof=antispoof,
                       limiter=limiter)
        rx = NetbackRx(BackRing(conn.maps[1].sring), rx_scratches[0], max_queue=RX_QUEUE_FRAMES,
                       max_bytes=RX_QUEUE_BYTES)
        grants = PersistentGrants(kernel.gnttab, vif.frontend_id, vif.name, budget) \
            if persistent else None
        conn.datapath = Datapath(vif, tx, rx, tx_scratches, rx_scratches, conn.port,
                                 gnttab=kernel.gnttab, evtchn=kernel.evtchn,
                                 frontend_id=vif.frontend_id, clock=clock, on_fatal=on_fatal,
                                 persistent=grants)
    except BaseException:
        await release(kernel, conn)
        raise
    return conn


async def _map(kernel, frontend_id: int, ref: int, make_ring) -> MappedRing:
    try:
        page = await kernel.gnttab.map(frontend_id, ref)
        if page.view is None:
            await _unmap(kernel, page)
            raise XenError(errno.EINVAL, "the hypervisor gave no mapping of the page")
    except XenError as err:
        raise XenError(errno.EINVAL, f"mapping shared-frame ref {ref} of d{frontend_id}: "
                                     f"{err.message}") from None
    return MappedRing(page, make_ring(page.view))


async def _bind(kernel, frontend_id: int, remote_port: int) -> int:
    try:
        return await kernel.evtchn.bind_interdomain(frontend_id, remote_port)
    except XenError as err:
        raise XenError(errno.EINVAL, f"binding event-channel {remote_port} of d{frontend_id}: "
                                     f"{err.message}") from None


async def _unmap(kernel, page: Page) -> None:
    try:
        await kernel.gnttab.unmap(page)
    except XenError as err:
        log.warning("d%d: unmapping handle %d: %s", page.domid, page.handle, err.message)


async def release(kernel, conn: Connection) -> None:
    """Give back what ``conn`` holds: persistent grants, port, scratch, rings."""
    if conn.datapath is not None:
        await conn.datapath.close_grants()
    if conn.port is not None:
        try:
            await kernel.evtchn.close_port(conn.port)
        except XenError as err:
            log.debug("%s: closing port %d: %s", conn.vif.name, conn.port, err.message)
    for scratch in conn.scratches:
        scratch.release()
    if conn.gfns:
        kernel.memory.free_frames(conn.gfns)
    for mapped in conn.maps:
        mapped.sring.release()
        await _unmap(kernel, mapped.page)


def release_local(conn: Connection) -> None:
    """Let go of the scratch and the ring mappings, without hypercalls."""
    for scratch in conn.scratches:
        scratch.release()
    for mapped in conn.maps:
        mapped.sring.release()
        try:
            mapped.page.close()
        except BufferError:
            pass


async def hotplug_online(xenbus, hotplug: Hotplug, vif: VifDevice, bridge: str,
                         nodename: str) -> None:
    """Run the hotplug script's online; its outcome in hotplug-status."""
    try:
        await hotplug.online(vif, bridge, nodename)
    except HotplugError as err:
        await xenbus.write(f"{nodename}/hotplug-error", err.message)
        await xenbus.write(f"{nodename}/hotplug-status", "error")
        raise XenError(errno.EIO, f"hotplug script failed: {err.message}") from None
    await xenbus.write(f"{nodename}/hotplug-status", "connected")


async def hotplug_offline(hotplug: Hotplug, vif: VifDevice) -> None:
    try:
        await hotplug.offline(vif)
    except Exception:
        log.exception("%s: hotplug offline failed", vif.name)
