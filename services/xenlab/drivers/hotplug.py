"""Hotplug: what Xen's vif-bridge script does when netback brings a vif
online, joining it to the bridge named by the backend's `bridge` key.

Here the bridge is the bridge service, and "brctl addif" is a veth pair:
one end stays in the driver domain next to the vif, the other becomes a
port of the bridge. The bridge service registers its veth address in
xenstore (/tool/xenlab/bridges/NAME/address), which is how hotplug finds it.

A bridge service can die and come back (a crash, a restart) while its vifs
stay up: unlike a Linux bridge, it is a process of its own. Each attached
vif keeps a watcher on its link; when the link drops without hotplug having
taken the vif offline, the watcher re-attaches the vif with exponential
backoff, trying at once whenever the bridge's registration is written again
(a bridge service registers on every start). Until then the vif's frames
are counted on its veth end as ``link_down`` drops, and the new end carries
the old end's counters on, so that ``vethD.N`` counts as one device.

The pair also carries the vif's link state: the bridge's port has carrier
while the vif and the veth end are up and the vif's frontend's link is
(docs: `xenlab ip link`).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from xenlab import eventloop
from xenlab.drivers.netback.interface import HotplugError
from xenlab.net.device import NetDevice
from xenlab.net.qdisc import move_qdisc
from xenlab.net.veth import VethEnd, VethError, connect_veth
from xenlab.xen.names import IFNAMSIZ
from xenlab.xen.xenstore_paths import bridge_registry_path

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.05        # seconds before the first re-attach attempt
BACKOFF_MAX = 2.0           # and at most between two attempts


def veth_name(vif_name: str) -> str:
    """The driver domain's end of a vif's veth pair: vif1.0 -> veth1.0 (the
    bridge's end is the port named vif1.0, as the vif itself is in Linux)."""
    return "veth" + vif_name[3:] if vif_name.startswith("vif") else f"veth-{vif_name}"[:IFNAMSIZ - 1]


def bridge_address_path(bridge: str) -> str:
    return bridge_registry_path(bridge, "address")


def backoff_delays(first: float = BACKOFF_FIRST, longest: float = BACKOFF_MAX):
    """first, 2*first, 4*first, ... capped at longest, forever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, longest)


@dataclass
class _Attachment:
    """One vif joined to its bridge, and the task that keeps it joined."""

    vif: NetDevice
    bridge: str
    backend_path: str
    end: VethEnd
    keeper: asyncio.Task | None = None
    reattached: int = 0
    on_link: Callable | None = None


def _announce(att: _Attachment) -> None:
    """The bridge's port is what Linux's vif is: its carrier is the vif's
    link (down when the vif is set down or its frontend's link is) and
    this veth end's (set down)."""
    att.end.announce(att.vif.link_up and att.end.admin_up)


class BridgeHotplug:
    """vif-bridge online/offline over veth pairs to the bridge service."""

    def __init__(self, xenbus, domid: int = 0,
                 announce: Callable[[str, NetDevice | None], None] | None = None,
                 backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX)):
        self.xenbus = xenbus
        self.domid = domid
        self.ends: dict[str, VethEnd] = {}
        # Tells the kernel (and so the agent: capture, stats) about veth ends.
        self.announce = announce or (lambda name, device: None)
        self.backoff = backoff
        self._attached: dict[str, _Attachment] = {}
        # A bridge's registration written again: wakes the re-attach loops.
        self._registered: dict[str, asyncio.Event] = {}
        self._watches: dict[str, str] = {}

    async def online(self, vif: NetDevice, bridge: str, backend_path: str) -> None:
        end = await self._connect(vif, bridge, backend_path)
        att = _Attachment(vif, bridge, backend_path, end)
        att.on_link = lambda _dev: _announce(att)
        vif.link_watchers.append(att.on_link)
        self._plug(att, end)
        att.keeper = asyncio.get_running_loop().create_task(
            self._keep(att), name=f"hotplug {vif.name}")
        self._attached[vif.name] = att
        log.info("%s: attached to bridge %s (veth %s)", vif.name, bridge, end.name)

    async def offline(self, vif: NetDevice) -> None:
        att = self._attached.pop(vif.name, None)
        end = self.ends.pop(vif.name, None)
        vif.receiver = None
        vif.upstream = None
        vif.master = ""
        if att is not None and att.on_link in vif.link_watchers:
            vif.link_watchers.remove(att.on_link)
        if att is not None and att.keeper is not None:
            att.keeper.cancel()
            await asyncio.gather(att.keeper, return_exceptions=True)
        if end is not None:
            end.receiver = None
            end.close()
            self.announce(end.name, None)
            log.info("%s: detached from its bridge", vif.name)

    async def close(self) -> None:
        """Stop the re-attach loops and the registration watches."""
        for att in list(self._attached.values()):
            if att.keeper is not None:
                att.keeper.cancel()
        await asyncio.gather(*(a.keeper for a in self._attached.values() if a.keeper),
                             return_exceptions=True)
        for token in list(self._watches.values()):
            try:
                await eventloop.wait_for(self.xenbus.unwatch(token), 2.0)
            except Exception as err:      # the xenstore connection may be gone already
                log.debug("unwatching a bridge registration: %s", err)
        self._watches.clear()

    def attachments(self) -> dict[str, int]:
        """vif name -> how many times its link was re-attached."""
        return {name: att.reattached for name, att in self._attached.items()}

    # -- attaching ---------------------------------------------------------------------
    async def _connect(self, vif: NetDevice, bridge: str, backend_path: str) -> VethEnd:
        address = await self.xenbus.read(bridge_address_path(bridge))
        if not address:
            raise HotplugError(f"bridge {bridge} does not exist (no bridge service registered "
                               f"at {bridge_address_path(bridge)})")
        hello = {"bridge": bridge, "mac": vif.mac.hex(":"), "backend": backend_path,
                 "driver_domain": self.domid}
        # vif-bridge reads the backend's vlan key and sets the port's VLANs.
        vlan = await self.xenbus.read(f"{backend_path}/vlan")
        if vlan:
            hello["vlan"] = vlan
        try:
            end = await connect_veth(address, vif.name, hello, mac=vif.mac, mtu=vif.mtu)
        except (OSError, VethError, TimeoutError) as err:
            raise HotplugError(f"cannot attach {vif.name} to {bridge} at {address}: {err}") from None
        end.name = veth_name(vif.name)
        return end

    def _plug(self, att: _Attachment, end: VethEnd) -> None:
        vif = att.vif
        # egress: through the device's root qdisc (tc), if it has one.
        vif.receiver = end.egress
        vif.upstream = end
        vif.master = att.bridge
        end.receiver = vif.egress
        att.end = end
        end.link_watchers.append(lambda _dev: _announce(att) if att.end is end else None)
        _announce(att)
        self.ends[vif.name] = end
        self.announce(end.name, end)

    # -- keeping attached ----------------------------------------------------------------
    async def _keep(self, att: _Attachment) -> None:
        """Re-attach the vif whenever its link drops under it."""
        while True:
            await att.end.closed.wait()
            if self._attached.get(att.vif.name) is not att:
                return
            log.warning("%s: lost its link to bridge %s; re-attaching", att.vif.name, att.bridge)
            # Until the new link is up the vif still transmits into the old
            # end, which counts each frame as a link_down drop.
            old = att.end
            end = await self._reattach(att)
            # One device as far as anyone counting is concerned, or setting it down.
            end.counters.update(old.counters)
            end.drops.update(old.drops)
            end.admin_up, end.ifindex = old.admin_up, old.ifindex
            move_qdisc(old, end)
            self._plug(att, end)
            att.reattached += 1
            log.info("%s: re-attached to bridge %s", att.vif.name, att.bridge)

    async def _reattach(self, att: _Attachment) -> VethEnd:
        registered = await self._registration(att.bridge)
        for delay in backoff_delays(*self.backoff):
            registered.clear()
            try:
                await eventloop.wait_for(registered.wait(), delay)
            except asyncio.TimeoutError:
                pass
            try:
                return await self._connect(att.vif, att.bridge, att.backend_path)
            except HotplugError as err:
                log.debug("%s: %s; next try within %.2fs", att.vif.name, err.message, delay * 2)
            except Exception as err:     # xenstore unreachable for now: keep trying
                log.debug("%s: re-attach attempt failed: %s", att.vif.name, err)
        raise AssertionError("backoff_delays never ends")

    async def _registration(self, bridge: str) -> asyncio.Event:
        """An event set whenever the bridge's address is (re)written."""
        event = self._registered.get(bridge)
        if event is None:
            event = self._registered[bridge] = asyncio.Event()
            try:
                # Runs in the xenbus reader: only set the event.
                self._watches[bridge] = await self.xenbus.watch(
                    bridge_address_path(bridge), lambda _path: event.set())
            except Exception as err:
                log.warning("cannot watch %s (re-attaching on backoff only): %s",
                            bridge_address_path(bridge), err)
        return event
