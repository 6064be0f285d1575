"""Hotplug: what Xen's vif-bridge script does when netback brings a vif
online, joining it to the bridge named by the backend's `bridge` key.

Here the bridge is the bridge service, and "brctl addif" is a veth pair:
one end stays in the driver domain next to the vif, the other becomes a
port of the bridge. The bridge service registers its veth address in
xenstore (/tool/xenlab/bridges/NAME/address), which is how hotplug finds it.
"""
from __future__ import annotations

import logging
from typing import Callable

from xenlab.drivers.netback import HotplugError
from xenlab.net.device import NetDevice
from xenlab.net.veth import VethEnd, VethError, connect_veth

log = logging.getLogger(__name__)

BRIDGE_REGISTRY = "/tool/xenlab/bridges"


def veth_name(vif_name: str) -> str:
    """The driver domain's end of a vif's veth pair: vif1.0 -> veth1.0 (the
    bridge's end is the port named vif1.0, as the vif itself is in Linux)."""
    return "veth" + vif_name[3:] if vif_name.startswith("vif") else f"veth-{vif_name}"[:15]


def bridge_address_path(bridge: str) -> str:
    return f"{BRIDGE_REGISTRY}/{bridge}/address"


class BridgeHotplug:
    """vif-bridge online/offline over veth pairs to the bridge service."""

    def __init__(self, xenbus, domid: int = 0,
                 announce: Callable[[str, NetDevice | None], None] | None = None):
        self.xenbus = xenbus
        self.domid = domid
        self.ends: dict[str, VethEnd] = {}
        # Tells the kernel (and so the agent: capture, stats) about veth ends.
        self.announce = announce or (lambda name, device: None)

    async def online(self, vif: NetDevice, bridge: str, backend_path: str) -> None:
        address = await self.xenbus.read(bridge_address_path(bridge))
        if not address:
            raise HotplugError(f"bridge {bridge} does not exist (no bridge service registered "
                               f"at {bridge_address_path(bridge)})")
        hello = {"bridge": bridge, "mac": vif.mac.hex(":"), "backend": backend_path,
                 "driver_domain": self.domid}
        try:
            end = await connect_veth(address, vif.name, hello, mac=vif.mac, mtu=vif.mtu)
        except (OSError, VethError, TimeoutError) as err:
            raise HotplugError(f"cannot attach {vif.name} to {bridge} at {address}: {err}") from None
        end.name = veth_name(vif.name)
        vif.receiver = end.transmit
        end.receiver = vif.transmit
        self.ends[vif.name] = end
        self.announce(end.name, end)
        log.info("%s: attached to bridge %s (veth %s)", vif.name, bridge, address)

    async def offline(self, vif: NetDevice) -> None:
        end = self.ends.pop(vif.name, None)
        vif.receiver = None
        if end is not None:
            end.receiver = None
            end.close()
            self.announce(end.name, None)
            log.info("%s: detached from its bridge", vif.name)
